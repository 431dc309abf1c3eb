// The library page: finished jobs newest first, fetched a page at a time as the
// reader scrolls, filtered on the server, so a library of 10,000 jobs stays quick.
import { deleteImage, deleteJob, getLibrary, jobStatus } from "./api.js";
import { settingsLink } from "./continue.js";
import { el, setChildren } from "./dom.js";
import { downloadName, formatDate, formatSeconds, formatSettings } from "./format.js";
import { limits } from "./limits.js";
import { gridSheet, libraryPicture } from "./viewer.js";

const PAGE_SIZE = 20;
const FILTER_DELAY_MS = 300;

const libraryNode = document.getElementById("library");
const countNode = document.getElementById("library-count");
const errorNode = document.getElementById("library-error");
const filterInput = document.getElementById("filter");
const loadMore = document.getElementById("load-more");

// `failed`: the last page did not load; only the button (not scrolling) tries again.
const sortSelect = document.getElementById("sort");
const state = { q: "", sort: "newest", offset: 0, total: 0, loading: false, failed: false, generation: 0 };

const emptyNode = document.getElementById("library-empty");
const emptyText = document.getElementById("library-empty-text");
const emptyAction = document.getElementById("library-empty-action");

function showCount() {
  const jobs = state.total === 1 ? "1 job" : `${state.total.toLocaleString()} jobs`;
  countNode.textContent = state.q ? `${jobs} ${state.total === 1 ? "matches" : "match"} “${state.q}”` : jobs;
  // Nothing to show: say why, and what to do, rather than a blank page.
  emptyNode.hidden = state.total > 0;
  if (state.q) {
    emptyText.textContent = `No prompt in the library contains “${state.q}”.`;
    emptyAction.textContent = "Show the whole library";
    emptyAction.href = `library.html${state.sort === "newest" ? "" : `?sort=${state.sort}`}`;
  } else {
    emptyText.textContent = "The library is empty: the pictures you create appear here.";
    emptyAction.textContent = "Create images";
    emptyAction.href = "index.html";
  }
}

// What a continuation started from: the source picture (a link to it) and the rows kept.
function lineage(entry) {
  if (!entry.keep_rows) return null;
  const how = `${entry.keep_rows} of ${limits.image_rows} rows kept${entry.extend === "down" ? " · extended below" : ""}`;
  if (entry.init_image) {
    return el("p", { class: "lineage" }, "Started from",
      el("a", { href: entry.init_image, title: "The picture this job started from" },
        el("img", { src: entry.init_image, alt: "the source picture", loading: "lazy", width: 40, height: 40 })),
      how);
  }
  const source = entry.init_source === "encoded" ? "an uploaded picture" : "an uploaded picture of ours";
  return el("p", { class: "lineage" }, `Started from ${source} · ${how}`);
}

function removeCard(card) {
  card.remove();
  state.total = Math.max(0, state.total - 1);
  state.offset = Math.max(0, state.offset - 1); // the next page starts one entry earlier now
  showCount();
}

function jobCard(entry) {
  const card = el("article", { class: "card job", "data-queue-id": entry.queue_id });
  const images = entry.generated_images ?? [];
  const perImage = entry.process_time_secs / (entry.num_images || images.length || 1);

  async function removeImage(src, thumb) {
    if (!window.confirm("Delete this image? This cannot be undone.")) return false;
    try {
      await deleteImage(src);
    } catch (error) {
      errorNode.textContent = `Could not delete the image: ${error.message}`;
      return false;
    }
    thumb.remove();
    if (!card.querySelector(".thumb")) removeCard(card);
    return true;
  }

  const picture = (src, tall) => {
    const node = libraryPicture({ src, entry, tall, onDelete: () => removeImage(src, node) });
    // Best of N: the picture's CLIP score (and which candidate it was), on the picture.
    const at = tall ? -1 : images.indexOf(src);
    const score = at >= 0 ? entry.clip_scores?.[at] : undefined;
    if (typeof score === "number") {
      // Said as a place among the job's pictures (CLIP ranked them best first); the raw score,
      // which compares pictures of one prompt only, with what it means on hover.
      const candidate = entry.candidate_indices?.[at];
      const place = !entry.ranked ? "CLIP" : at === 0 ? "Best match" : `Match ${at + 1} of ${images.length}`;
      node.prepend(el("span", {
        class: "clip-score",
        title: `CLIP score ${score.toFixed(1)}: how closely CLIP finds the picture matches its prompt (higher is `
          + `closer; only pictures of one prompt compare). Candidate ${candidate + 1} of ${entry.candidates}.`,
      }, `${place} · ${score.toFixed(1)}`));
    }
    return node; // named first: its own delete handler removes it
  };

  async function removeJob() {
    const left = card.querySelectorAll(".thumbs:not(.taller) .thumb").length; // some may be deleted already
    if (!window.confirm(`Delete all ${left} images of this job? This cannot be undone.`)) return;
    try {
      await deleteJob(entry.queue_id);
      removeCard(card);
    } catch (error) {
      errorNode.textContent = `Could not delete the job: ${error.message}`;
    }
  }

  const thumbs = images.map((src) => picture(src, false));
  const taller = (entry.extended_images ?? []).map((src) => picture(src, true));

  setChildren(card,
    el("h2", { class: "prompt" }, entry.text_prompt),
    el("p", { class: "meta" },
      el("time", { datetime: new Date(entry.creation_unixtime * 1000).toISOString() }, formatDate(entry.creation_unixtime)),
      ` · seed ${entry.seed ?? "–"} · ${formatSeconds(entry.process_time_secs)} total, `
      + `${formatSeconds(perImage)} per image`),
    el("p", { class: "params" }, formatSettings(entry)),
    lineage(entry),
    gridSheet(entry),
    el("div", { class: "thumbs" }, thumbs),
    taller.length > 0 && el("h3", { class: "taller-title" }, "Taller pictures"),
    taller.length > 0 && el("div", { class: "thumbs taller" }, taller),
    el("div", { class: "card-actions" },
      el("a", { class: "button", href: settingsLink(entry) }, "Use these settings again"),
      (entry.reveal_images ?? []).map((src, index) => el("a", {
        class: "button reveal", href: src, download: downloadName(entry, index, "reveal.webp"),
      }, `Reveal ${index + 1}`)),
      el("button", { type: "button", class: "danger", onclick: removeJob }, "Delete job")));
  return card;
}

async function loadNextPage() {
  if (state.loading) return;
  state.loading = true;
  state.failed = false;
  const generation = state.generation;
  try {
    const { entries, total } = await getLibrary({ offset: state.offset, limit: PAGE_SIZE, q: state.q, sort: state.sort });
    if (generation !== state.generation) return; // the filter changed meanwhile
    loadMore.textContent = "Load more";
    libraryNode.append(...entries.map(jobCard));
    state.offset += entries.length;
    state.total = total;
    errorNode.textContent = "";
    showCount();
    loadMore.hidden = state.offset >= total || entries.length === 0;
  } catch (error) {
    if (generation === state.generation) {
      errorNode.textContent = `Could not load the library: ${error.message}`;
      state.failed = true;
      loadMore.textContent = "Try again";
      loadMore.hidden = false;
    }
  } finally {
    if (generation === state.generation) state.loading = false;
  }
  // Screens taller than one page: keep filling while the button is still in view.
  if (generation === state.generation && !state.failed && !loadMore.hidden && isNearViewport(loadMore)) {
    loadNextPage();
  }
}

function isNearViewport(node) {
  return node.getBoundingClientRect().top < window.innerHeight + 800;
}

function restart(q) {
  state.generation += 1;
  Object.assign(state, { q, sort: sortSelect.value, offset: 0, total: 0, loading: false, failed: false });
  libraryNode.replaceChildren();
  loadMore.hidden = true;
  const url = new URL(window.location.href);
  if (q) url.searchParams.set("q", q);
  else url.searchParams.delete("q");
  if (state.sort === "score") url.searchParams.set("sort", "score");
  else url.searchParams.delete("sort");
  history.replaceState(null, "", url);
  loadNextPage();
}

// Jobs started here (Variations, Extend): the page says how far they are, and each appears at
// the top of the library, counted, once it is done, without a reload.
const FOLLOW_POLL_MS = 1000;
const coming = new Map(); // queue_id -> its last status
const comingNode = document.getElementById("library-coming");

function showComing() {
  comingNode.hidden = coming.size === 0;
  const parts = [...coming.values()].map((job) => (job?.status === "running"
    ? `${job.progress.tokens_done} / ${job.progress.total_tokens} tokens` : "queued"));
  comingNode.textContent = `${coming.size === 1 ? "1 new job" : `${coming.size} new jobs`} on the way: ${parts.join(", ")}`;
}

async function follow() {
  for (const queueId of [...coming.keys()]) {
    let job;
    try {
      job = await jobStatus(queueId);
    } catch (error) {
      if (error.status === 404) coming.delete(queueId);
      continue; // out of reach for now: asked again at the next turn
    }
    coming.set(queueId, job);
    if (job.status === "done" && job.result) {
      coming.delete(queueId);
      // Newest first: it belongs at the top, if the filter lets it through (the score order
      // has no place for it to keep: it shows there on the next load).
      const shown = !state.q || job.result.text_prompt.toLowerCase().includes(state.q.toLowerCase());
      if (shown && state.sort === "newest") {
        libraryNode.prepend(jobCard(job.result));
        state.offset += 1;
        state.total += 1;
        showCount();
      }
    } else if (job.status === "failed" || job.status === "cancelled") {
      coming.delete(queueId);
      errorNode.textContent = job.status === "failed" ? `A new job failed: ${job.error || "no reason given"}` : "";
    }
  }
  showComing();
  if (coming.size > 0) setTimeout(follow, FOLLOW_POLL_MS);
}

document.addEventListener("job-queued", (event) => {
  const first = coming.size === 0;
  coming.set(event.detail.queueId, null);
  showComing();
  if (first) follow();
});

let filterTimer = null;
filterInput.addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => restart(filterInput.value.trim()), FILTER_DELAY_MS);
});
document.getElementById("filter-form").addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(filterTimer);
  restart(filterInput.value.trim());
});
sortSelect.addEventListener("change", () => restart(filterInput.value.trim()));
loadMore.addEventListener("click", loadNextPage);
new IntersectionObserver((observed) => {
  if (!state.failed && observed.some((entry) => entry.isIntersecting)) loadNextPage();
}, { rootMargin: "800px" }).observe(loadMore);

filterInput.value = new URLSearchParams(window.location.search).get("q") ?? "";
sortSelect.value = new URLSearchParams(window.location.search).get("sort") === "score" ? "score" : "newest";
restart(filterInput.value.trim());
