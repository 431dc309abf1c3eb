// The live queue on the prompt pages, and the results of my own jobs.
// One poll at a time (with the status of my jobs that left the queue): every second
// while one of my jobs is waiting or running, every few seconds otherwise, and not at all
// while the tab is hidden.
import { cancelJob, jobStatus, queueStatus } from "./api.js";
import { el } from "./dom.js";
import { notifyEnded, showProgressInTitle } from "./attention.js";
import { formatEta, formatSeconds } from "./format.js";
import { forgetJob, isMine, myJobs } from "./myjobs.js";
import { previewPictures } from "./previews.js";
import { formingCard, resultCard } from "./results.js";

const FAST_POLL_MS = 1000;
const SLOW_POLL_MS = 5000;
const FINISHED = new Set(["done", "failed", "cancelled"]);
// A long queue shows its head and my jobs; the rest is only counted.
const SHOWN_JOBS = 20;

// One row of the queue; built once per job and updated in place on each poll,
// so a focused cancel button keeps its focus.
function queueRow(queueId, onCancel) {
  const badge = el("span", { class: "badge" });
  const prompt = el("p", { class: "prompt" });
  const meta = el("p", { class: "queue-meta" });
  const unservedNote = el("p", { class: "unserved-note" });
  const progress = el("progress", { "aria-label": "Image tokens generated" });
  const tokens = el("span", { class: "tokens" });
  const progressLine = el("div", { class: "progress-line" }, progress, tokens);
  const previews = previewPictures("queue-previews");
  const cancel = el("button", { type: "button", class: "cancel" }, "Cancel");
  const cancelError = el("p", { class: "field-error", role: "status" });
  const mineTag = el("span", { class: "mine-tag" }, "yours");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    cancel.textContent = "Cancelling…";
    cancelError.textContent = "";
    try {
      await onCancel(queueId);
    } catch (error) {
      cancelError.textContent = `Could not cancel: ${error.message}`;
      cancel.disabled = false;
      cancel.textContent = "Cancel";
    }
  });
  const node = el("li", { class: "queue-item", "data-queue-id": queueId },
    el("div", { class: "queue-head" }, badge, mineTag), prompt, meta, unservedNote, progressLine, previews.node,
    cancel, cancelError);

  function update(job, index) {
    const running = job.status === "running";
    // Asked at every poll: a job submitted here may show up in a poll before it is remembered.
    const mine = isMine(queueId);
    node.classList.toggle("mine", mine);
    mineTag.hidden = !mine;
    // A job no backend can run would wait for ever unseen: anyone may cancel it.
    const unserved = !running && Boolean(job.unserved);
    cancel.hidden = !mine && !unserved;
    node.dataset.status = job.status;
    node.classList.toggle("running", running);
    node.classList.toggle("unserved", unserved);
    // Its backend has gone quiet: the page says so rather than count down to "finishing".
    const stalled = running && Number.isFinite(job.stalled_secs);
    node.classList.toggle("stalled", stalled);
    const position = job.position ?? index; // 0 is the running job, 1 the next one
    badge.textContent = stalled ? "Stalled" : running ? "Generating" : unserved ? "No backend"
      : position === 1 ? "Next" : `Position ${position}`;
    unservedNote.hidden = !unserved;
    unservedNote.textContent = !unserved ? ""
      : job.model ? `No running backend serves the model ${job.model}. This prompt waits until one does; cancel it if it should not.`
      : "No backend is running. This prompt waits until one joins; cancel it if it should not.";
    if (prompt.textContent !== job.text) {
      prompt.textContent = job.text;
      prompt.title = job.text;
    }
    // Tokens still to come (a queued job's are all to come): never "finishing" then.
    const drawing = !running || !(job.progress?.tokens_done >= job.progress?.total_tokens);
    meta.textContent = stalled
      ? `${job.num_images} images · no progress for ${formatSeconds(job.stalled_secs)}; the backend may be stuck `
        + "(the scheduler gives up on it and runs the job again after a while)"
      : `${job.num_images} images · ${formatEta(job.eta_secs, drawing)}`;
    progressLine.hidden = !running;
    const done = job.progress?.tokens_done;
    const total = job.progress?.total_tokens;
    if (running && Number.isFinite(done) && total > 0) {
      progress.max = total;
      progress.value = done;
      // After the last token the images are still being decoded (VQGAN).
      tokens.textContent = done < total ? `${done} / ${total} tokens` : "decoding images…";
    } else {
      progress.removeAttribute("value"); // indeterminate until the first tokens
      tokens.textContent = "starting…";
    }
    previews.update(job);
  }
  return { node, update };
}

export function startQueue({ list, empty, more, connection, results, resultsEmpty, resultsStatus }) {
  const settledListeners = [];
  const rows = new Map();
  const pending = new Set(); // my jobs last seen queued or running
  const forming = new Map(); // my running jobs' cards in the results, while they have previews
  let timer = null;
  let polling = false;
  let pollAgain = false;

  // A card of mine in submission order, newest first, however the jobs finish: before the
  // first card of a job submitted earlier (myJobs() lists the newest first).
  function place(card, queueId) {
    const order = myJobs().map((job) => job.queue_id);
    const rank = (id) => (order.includes(id) ? order.indexOf(id) : order.length);
    const later = [...results.children].find((node) => node.dataset.queueId && rank(node.dataset.queueId) > rank(queueId));
    results.insertBefore(card, later ?? null);
    resultsEmpty.hidden = true;
  }

  function showResult(job) {
    forming.delete(job.queue_id);
    const card = resultCard(job);
    // In the place of its forming card (or an earlier card of it), if there is one.
    const old = results.querySelector(`[data-queue-id="${CSS.escape(job.queue_id)}"]`);
    if (old) old.replaceWith(card);
    else place(card, job.queue_id);
  }

  async function cancel(queueId) {
    try {
      await cancelJob(queueId);
    } finally {
      pollNow();
    }
  }

  function renderQueue(allJobs) {
    const jobs = allJobs.filter((job, index) => index < SHOWN_JOBS || isMine(job.queue_id));
    const seen = new Set();
    jobs.forEach((job, index) => {
      seen.add(job.queue_id);
      let row = rows.get(job.queue_id);
      if (!row) {
        row = queueRow(job.queue_id, cancel);
        rows.set(job.queue_id, row);
      }
      row.update(job, allJobs.indexOf(job));
      if (list.children[index] !== row.node) list.insertBefore(row.node, list.children[index] ?? null);
    });
    for (const [queueId, row] of rows) {
      if (!seen.has(queueId)) {
        row.node.remove();
        rows.delete(queueId);
      }
    }
    empty.hidden = jobs.length > 0;
    more.hidden = allJobs.length === jobs.length;
    more.textContent = `and ${allJobs.length - jobs.length} more waiting`;
  }

  // My running jobs' pictures forming in the results, where the finished ones will be.
  function renderForming(jobs) {
    const running = new Set();
    for (const job of jobs) {
      if (!isMine(job.queue_id) || job.status !== "running" || !Number.isFinite(job.preview_tokens)) continue;
      running.add(job.queue_id);
      let card = forming.get(job.queue_id);
      if (!card) {
        card = formingCard(job);
        forming.set(job.queue_id, card);
        place(card.node, job.queue_id);
        // Below the first screen (a phone, under a long form): brought into view once, as it
        // starts to form, so the pictures need no scrolling to find.
        if (card.node.getBoundingClientRect().top > window.innerHeight - 120) {
          card.node.scrollIntoView({ behavior: "smooth", block: "start" });
        }
      }
      card.update(job);
    }
    // Put back in the queue (its backend was lost): its pictures start again.
    for (const [queueId, card] of forming) {
      if (!running.has(queueId) && jobs.some((job) => job.queue_id === queueId)) {
        card.node.remove();
        forming.delete(queueId);
      }
    }
  }

  // A job of mine that left the queue: find out how it ended.
  async function settle(queueId) {
    try {
      const job = await jobStatus(queueId);
      if (!FINISHED.has(job.status)) return;
      pending.delete(queueId);
      showResult(job);
      for (const listener of settledListeners) listener(job);
      notifyEnded(job);
      resultsStatus.textContent = job.status === "done"
        ? `Your images for “${job.text}” are ready.`
        : `Your job for “${job.text}” ${job.status === "failed" ? "failed" : "was cancelled"}.`;
    } catch (error) {
      if (error.status !== 404) throw error;
      pending.delete(queueId);
      forgetJob(queueId);
      forming.get(queueId)?.node.remove();
      forming.delete(queueId);
    }
  }

  async function poll() {
    clearTimeout(timer);
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = true;
    try {
      const jobs = await queueStatus();
      renderQueue(jobs);
      showProgressInTitle(jobs.filter((job) => isMine(job.queue_id)));
      renderForming(jobs);
      const inQueue = new Set(jobs.map((job) => job.queue_id));
      // Jobs submitted from another tab of this browser are mine too.
      for (const job of jobs) if (isMine(job.queue_id)) pending.add(job.queue_id);
      await Promise.all([...pending].filter((queueId) => !inQueue.has(queueId)).map(settle));
      connection.textContent = "";
    } catch (error) {
      connection.textContent = `${error.message} Trying again…`;
    } finally {
      polling = false;
    }
    if (pollAgain) {
      pollAgain = false;
      poll();
    } else {
      schedule();
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (!document.hidden) timer = setTimeout(poll, pending.size > 0 ? FAST_POLL_MS : SLOW_POLL_MS);
  }

  function pollNow() {
    if (!document.hidden) poll();
  }

  // My earlier jobs: show the finished ones, follow the others.
  async function restore() {
    const jobs = await Promise.all(myJobs().map(async ({ queue_id }) => {
      try {
        return await jobStatus(queue_id);
      } catch (error) {
        if (error.status === 404) forgetJob(queue_id);
        else pending.add(queue_id); // unknown for now; the next poll asks again
        return null;
      }
    }));
    for (const job of jobs) {
      if (!job) continue;
      if (FINISHED.has(job.status)) showResult(job);
      else pending.add(job.queue_id);
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) clearTimeout(timer);
    else pollNow();
  });
  restore().finally(pollNow);

  return {
    // Called with each job of mine once it has ended.
    onSettled(listener) {
      settledListeners.push(listener);
    },
    // Follow a job this browser just submitted.
    track(queueId) {
      pending.add(queueId);
      pollNow();
    },
  };
}
