// Image thumbnails and the full-size view with its download link.
import { el, setChildren } from "./dom.js";

// A second click within this time makes a double-click (delete), not a view.
const DOUBLE_CLICK_MS = 250;
let viewer = null;

function fileName(src) {
  return src.split("/").pop();
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

export function openViewer({ src, alt, onDelete }) {
  viewer ??= buildViewer();
  const close = el("button", { type: "button", onclick: () => viewer.close() }, "Close");
  const remove = onDelete && el("button", {
    type: "button",
    class: "danger",
    onclick: async () => {
      if (await onDelete()) viewer.close();
    },
  }, "Delete image");
  setChildren(viewer,
    el("figure", {},
      el("img", { src, alt, width: 256, height: 256 }),
      el("figcaption", {}, alt)),
    el("div", { class: "dialog-actions" },
      el("a", { class: "button", href: src, download: fileName(src) }, "Download"),
      remove,
      close));
  viewer.showModal();
  close.focus();
}

// A thumbnail that opens the full-size view on click (or Enter) and, when
// `onDelete` is given, asks to delete the image on double-click.
// `onDelete` resolves to true once the image is gone.
export function thumbnail({ src, alt, onDelete }) {
  let pendingOpen = null;
  const open = () => openViewer({ src, alt, onDelete });
  const button = el("button", {
    type: "button",
    class: "thumb",
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
  }, el("img", { src, alt, loading: "lazy", decoding: "async", width: 256, height: 256 }));
  return button;
}
