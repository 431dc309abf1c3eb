// A finished job of mine on the prompt pages: its images, or why there are none.
import { el } from "./dom.js";
import { formatSeconds } from "./format.js";
import { previewPictures } from "./previews.js";
import { gridSheet, thumbnail } from "./viewer.js";

function doneDetails(entry) {
  const images = entry.generated_images ?? [];
  const perImage = entry.process_time_secs / (entry.num_images || images.length || 1);
  return [
    gridSheet(entry), // a grid sweep: its labelled sheet first, the cells as pictures below
    el("p", { class: "meta" },
      `Seed ${entry.seed ?? "–"} · ${images.length} images · ${formatSeconds(entry.process_time_secs)}`
      + ` (${formatSeconds(perImage)} per image)`),
    el("div", { class: "thumbs" }, images.map((src) => thumbnail({ src, entry }))),
  ];
}

function details(job) {
  if (job.status === "done" && job.result) return doneDetails(job.result);
  if (job.status === "failed") {
    return el("p", { class: "job-error", role: "alert" }, `Failed: ${job.error || "no reason given"}`);
  }
  if (job.status === "cancelled") return el("p", { class: "meta" }, "Cancelled.");
  return el("p", { class: "meta" }, "Finished, but its images are no longer in the library.");
}

export function resultCard(job) {
  return el("article", { class: "card result", "data-queue-id": job.queue_id, "data-status": job.status },
    el("h3", { class: "prompt" }, job.text ?? job.result?.text_prompt ?? ""),
    details(job));
}

// A running job of mine: its pictures as far as they are drawn, until the finished card
// (same data-queue-id) replaces this one.
export function formingCard(job) {
  const meta = el("p", { class: "meta" });
  const previews = previewPictures("forming-previews");
  const node = el("article", { class: "card result forming", "data-queue-id": job.queue_id, "data-status": "running" },
    el("h3", { class: "prompt" }, job.text ?? ""), meta, previews.node);
  return {
    node,
    update(current) {
      // The same count as the job's queue card (the picture shown may be a little behind it).
      meta.textContent = `Drawing… ${current.progress.tokens_done} / ${current.progress.total_tokens} tokens`;
      previews.update(current);
    },
  };
}
