// Image thumbnails and the full-size view: previous/next (buttons and arrow keys), what made
// the picture, its download and, for a library picture, variations, extend below, "use as
// start" and "upscale ×4".
import { submitUpscale } from "./api.js";
import { continueFrom, startLink } from "./continue.js";
import { el, setChildren } from "./dom.js";
import { downloadName, formatSettings } from "./format.js";
import { limits } from "./limits.js";
import { rememberJob } from "./myjobs.js";
import { rowPicker } from "./rows.js";

// A second click within this time makes a double-click (delete), not a view.
const DOUBLE_CLICK_MS = 250;
const VIEW_MAX_PX = 640; // the largest the view draws a picture
const VIEW_ROOM_PX = 330; // the height the view needs besides the picture
let viewer = null;
// Each thumbnail's view, so the viewer can step to the one before or after it on the page.
const views = new WeakMap();

function fileName(src) {
  return src.split("/").pop();
}

// The picture's place in its job: its image, or its taller picture (after the images).
function pictureIndex(entry, src) {
  const images = entry.generated_images ?? [];
  const at = images.indexOf(src);
  return at >= 0 ? at : images.length + (entry.extended_images ?? []).indexOf(src);
}

// A library picture's text for those who cannot see it: its prompt and which picture it is.
function pictureLabel(entry, src) {
  const images = entry.generated_images ?? [];
  const at = pictureIndex(entry, src);
  return at < images.length ? `${entry.text_prompt} (picture ${at + 1} of ${images.length})`
    : `${entry.text_prompt} (taller picture ${at - images.length + 1})`;
}

// A grid sweep's cell: the entry as that picture's own (its values and seed by the entry's
// names); any other picture: the entry.
const ENTRY_NAMES = { top_k: "gen_top_k", top_p: "gen_top_p", text: "text_prompt" };
function ownEntry(entry, src) {
  const cell = entry.cells?.[(entry.generated_images ?? []).indexOf(src)];
  if (!cell) return entry;
  return { ...entry, ...Object.fromEntries(Object.entries(cell).map(([name, value]) => [ENTRY_NAMES[name] ?? name, value])) };
}

// What made the picture (its prompt is the caption): seed, values, model, its CLIP score, and
// its start.
function pictureDetails(entry, src) {
  if (entry.upscale_of) {
    return el("dl", { class: "picture-details" }, el("dt", {}, "Upscaled"),
      el("dd", {}, `×${entry.upscale_scale ?? "?"} by ${entry.upscale_model ?? "the backend's upscaler"}, from a library picture`));
  }
  const at = (entry.generated_images ?? []).indexOf(src);
  const score = at >= 0 ? entry.clip_scores?.[at] : undefined;
  const own = ownEntry(entry, src);
  const cell = at >= 0 ? entry.cells?.[at] : undefined;
  const rows = [
    ["Seed", String(own.seed ?? "–")],
    ["Settings", formatSettings(own)],
    cell && entry.grid && ["Grid cell", [entry.grid.x, entry.grid.y].filter(Boolean)
      .map((axis) => `${axis.field === "text" ? "prompt" : axis.field.replace("_", " ")} ${cell[axis.field]}`).join(" · ")],
    typeof score === "number" && ["CLIP score", `${score.toFixed(1)} (higher: closer to the prompt)`],
    entry.keep_rows && ["Start", `${entry.init_image ? "a library picture" : "an uploaded picture"}, `
      + `${entry.keep_rows} of ${limits.image_rows} rows kept${entry.extend === "down" ? ", extended below" : ""}`],
  ].filter(Boolean);
  return el("dl", { class: "picture-details" }, rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

// Small pictures (the demo model's 128 pixels) are drawn at a whole multiple of their size,
// pixel for pixel, rather than blurred.
function drawExact(image) {
  // Room is left under it for the caption, what made it and the buttons.
  const fit = Math.min(VIEW_MAX_PX, window.innerWidth * 0.8, window.innerHeight - VIEW_ROOM_PX);
  if (image.naturalWidth > fit) return; // a large one (an upscale) is scaled down to fit
  const factor = Math.max(1, Math.floor(fit / image.naturalWidth));
  image.style.width = `${image.naturalWidth * factor}px`;
  image.classList.add("exact");
}

function buildViewer() {
  const dialog = el("dialog", { class: "viewer", "aria-label": "Full-size image" });
  // A click on the backdrop lands on the dialog itself: close, as users expect.
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  document.body.append(dialog);
  return dialog;
}

// The thumbnail before (-1) or after (+1) `thumb` on the page, if any.
function neighbour(thumb, step) {
  const thumbs = [...document.querySelectorAll("button.thumb")].filter((node) => views.has(node));
  const at = thumbs.indexOf(thumb);
  return at < 0 ? null : thumbs[at + step] ?? null;
}

// `entry` (a library entry) adds what made the picture and the continuation actions; `mode`
// "variations" or "extend" opens the view with the row slider over the picture. `thumb`:
// the thumbnail it was opened from, whose neighbours previous/next show.
function openViewer({ src, alt, onDelete, entry, mode = "view", thumb = null }) {
  viewer ??= buildViewer();
  const close = el("button", { type: "button", onclick: () => viewer.close() }, "Close");
  const remove = onDelete && el("button", {
    type: "button",
    class: "danger",
    onclick: async () => {
      if (await onDelete()) viewer.close();
    },
  }, "Delete image");
  const figure = el("figure", {});
  const status = el("p", { class: "viewer-status", role: "status" });
  const continuation = el("div", { class: "dialog-actions continuation" });

  function show(newMode) {
    status.textContent = "";
    if (newMode === "view") {
      const image = el("img", { src, alt, width: 256, height: 256 });
      image.addEventListener("load", () => drawExact(image));
      setChildren(figure, image, el("figcaption", {}, entry ? ownEntry(entry, src).text_prompt : alt), entry && pictureDetails(entry, src));
      // A picture whose previews were kept: its reveal, the picture forming, plays in its place.
      const reveal = entry?.reveal_images?.[(entry.generated_images ?? []).indexOf(src)];
      // An upscale's picture is not drawn from or upscaled again: it is downloaded.
      setChildren(continuation, entry && !entry.upscale_of && [
        reveal && el("button", { type: "button", onclick: () => { image.src = reveal; } }, "Watch it form"),
        el("button", { type: "button", onclick: () => show("variations") }, "Variations"),
        el("button", { type: "button", onclick: () => show("extend") }, "Extend below"),
        el("a", { class: "button", href: startLink(entry, src) }, "Use as start"),
        upscaleButton()]);
      return;
    }
    const extend = newMode === "extend";
    const picker = rowPicker({ src, alt, mode: extend ? "bottom" : "top" });
    const go = el("button", {
      type: "button",
      class: "primary",
      onclick: async () => {
        go.disabled = true;
        status.classList.remove("is-error");
        status.textContent = "Sending…";
        try {
          await continueFrom(entry, src, { keepRows: picker.keepRows(), extend });
          status.textContent = "Queued: the new pictures appear on the Create page and at the top of the library.";
        } catch (error) {
          status.classList.add("is-error");
          status.textContent = error.message;
        } finally {
          go.disabled = false;
        }
      },
    }, extend ? "Extend" : "Make variations");
    setChildren(figure, picker.node, el("figcaption", {}, extend
      ? "The rows below the line start a new picture under this one."
      : "The rows above the line are kept; the rest are drawn anew with new seeds."));
    setChildren(continuation, go, el("button", { type: "button", onclick: () => show("view") }, "Back"));
  }

  // Queues the picture's upscale; the library shows the new, larger picture when it is done.
  function upscaleButton() {
    const button = el("button", {
      type: "button",
      onclick: async () => {
        button.disabled = true;
        status.classList.remove("is-error");
        status.textContent = "Sending…";
        try {
          const { queue_id: queueId } = await submitUpscale({ path: src });
          rememberJob(queueId, entry.text_prompt);
          document.dispatchEvent(new CustomEvent("job-queued", { detail: { queueId } }));
          status.textContent = "Queued: the picture 4× the size appears at the top of the library.";
        } catch (error) {
          status.classList.add("is-error");
          status.textContent = error.message;
          button.disabled = false;
        }
      },
    }, "Upscale ×4");
    return button;
  }

  const stepButton = (step, label) => {
    const target = mode === "view" && thumb ? neighbour(thumb, step) : null;
    return el("button", { type: "button", class: "step", disabled: !target, "data-step": step,
                          onclick: () => openViewer({ ...views.get(target), thumb: target }) }, label);
  };
  show(entry ? mode : "view");
  setChildren(viewer, figure, status, continuation,
    el("div", { class: "dialog-actions" },
      stepButton(-1, "‹ Previous"), stepButton(1, "Next ›"),
      el("a", { class: "button", href: src, download: entry ? downloadName(entry, pictureIndex(entry, src), "png") : fileName(src) },
        "Download"),
      remove,
      close));
  if (!viewer.open) viewer.showModal();
  close.focus();
}

// Arrow keys step through the pictures, except where they move a slider or a caret.
function onKey(event) {
  if (!viewer?.open || !["ArrowLeft", "ArrowRight"].includes(event.key)) return;
  if (event.target.closest?.("input, textarea, select")) return;
  const button = viewer.querySelector(`button.step[data-step="${event.key === "ArrowLeft" ? -1 : 1}"]`);
  if (button && !button.disabled) {
    event.preventDefault();
    button.click();
  }
}
document.addEventListener("keydown", onKey);

// A thumbnail that opens the full-size view on click (or Enter) and, when
// `onDelete` is given, asks to delete the image on double-click.
// `onDelete` resolves to true once the image is gone. A library picture (`entry`) is
// described by its prompt and place.
export function thumbnail({ src, alt, onDelete, entry, tall = false }) {
  alt = entry ? pictureLabel(entry, src) : alt;
  let pendingOpen = null;
  const open = () => openViewer({ src, alt, onDelete, entry, thumb: button });
  const button = el("button", {
    type: "button",
    class: tall ? "thumb tall" : "thumb",
    title: onDelete ? "Click to view, double-click to delete" : "Click to view",
    onclick: (event) => {
      clearTimeout(pendingOpen);
      if (event.detail === 0) open(); // keyboard
      else if (event.detail === 1) pendingOpen = setTimeout(open, onDelete ? DOUBLE_CLICK_MS : 0);
    },
    ondblclick: () => {
      clearTimeout(pendingOpen);
      if (onDelete) onDelete();
    },
  }, el("img", { src, alt, loading: "lazy", decoding: "async", width: 256, height: tall ? undefined : 256 }));
  views.set(button, { src, alt, onDelete, entry });
  return button;
}

// A grid sweep's labelled sheet (none for any other job): a link to it at full size. It is no
// picture of its own: no viewer, no variations or upscale.
export function gridSheet(entry) {
  if (!entry.sheet_image) return null;
  return el("a", { class: "grid-sheet", href: entry.sheet_image, target: "_blank", rel: "noopener" },
    el("img", { src: entry.sheet_image, alt: `Grid sheet of ${entry.text_prompt}`, loading: "lazy", decoding: "async" }));
}

// A library picture: its thumbnail and, under it, the continuation actions.
export function libraryPicture({ src, onDelete, entry, tall = false }) {
  const alt = pictureLabel(entry, src);
  return el("div", { class: "picture" },
    thumbnail({ src, alt, onDelete, entry, tall }),
    el("div", { class: "picture-actions" },
      el("button", { type: "button", onclick: () => openViewer({ src, alt, onDelete, entry, mode: "variations" }) },
        "Variations"),
      el("button", { type: "button", onclick: () => openViewer({ src, alt, onDelete, entry, mode: "extend" }) },
        "Extend"),
      el("a", { class: "button", href: startLink(entry, src) }, "Use as start")));
}
