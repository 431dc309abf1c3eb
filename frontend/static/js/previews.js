// Live previews of a running job: one small picture per image, as far as it is drawn.
// A new preview (its tokens are in the URL, so it is a new picture) replaces the old one
// only once it is loaded and decoded, so the pictures never blink; one that can no longer
// be had (the job has just finished) leaves the old one in place.
import { el } from "./dom.js";

export function previewPictures(className) {
  const node = el("div", { class: `previews ${className}`, hidden: true });
  let shown = null; // the tokens of the preview on screen (or on its way)

  function update(job) {
    const tokens = job.status === "running" ? job.preview_tokens : null;
    node.hidden = !Number.isFinite(tokens);
    if (node.hidden || tokens === shown) return;
    shown = tokens;
    node.dataset.tokens = tokens;
    // A grey place per image from the start, so the card does not grow as pictures arrive.
    while (node.children.length < job.num_images) node.append(el("span", { class: "preview-slot" }));
    for (let index = 0; index < job.num_images; index += 1) {
      const picture = el("img", {
        src: `jobs/${encodeURIComponent(job.queue_id)}/preview?image=${index}&tokens=${tokens}`,
        alt: `Image ${index + 1} as drawn so far (${tokens} of ${job.progress.total_tokens} tokens)`,
        width: 128, height: 128, "data-tokens": tokens,
      });
      picture.decode().then(() => {
        if (shown !== tokens) return; // overtaken by a newer one
        node.children[index].replaceWith(picture);
      }, () => {});
    }
  }
  return { node, update };
}
