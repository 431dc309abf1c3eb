// Image thumbnails and the full-size view with its download link and, for a library
// picture, variations, extend below and "use as start".
import { continueFrom, startLink } from "./continue.js";
import { el, setChildren } from "./dom.js";
import { rowPicker } from "./rows.js";

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

// `entry` (a library entry) adds the continuation actions; `mode` "variations" or
// "extend" opens the view with the row slider over the picture.
function openViewer({ src, alt, onDelete, entry, mode = "view" }) {
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
      setChildren(figure, el("img", { src, alt, width: 256, height: 256 }), el("figcaption", {}, alt));
      setChildren(continuation, entry && [
        el("button", { type: "button", onclick: () => show("variations") }, "Variations"),
        el("button", { type: "button", onclick: () => show("extend") }, "Extend below"),
        el("a", { class: "button", href: startLink(entry, src) }, "Use as start")]);
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

  show(entry ? mode : "view");
  setChildren(viewer, figure, status, continuation,
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
export function thumbnail({ src, alt, onDelete, entry, tall = false }) {
  let pendingOpen = null;
  const open = () => openViewer({ src, alt, onDelete, entry });
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
  return button;
}

// A library picture: its thumbnail and, under it, the continuation actions.
export function libraryPicture({ src, alt, onDelete, entry, tall = false }) {
  return el("div", { class: "picture" },
    thumbnail({ src, alt, onDelete, entry, tall }),
    el("div", { class: "picture-actions" },
      el("button", { type: "button", onclick: () => openViewer({ src, alt, onDelete, entry, mode: "variations" }) },
        "Variations"),
      el("button", { type: "button", onclick: () => openViewer({ src, alt, onDelete, entry, mode: "extend" }) },
        "Extend"),
      el("a", { class: "button", href: startLink(entry, src) }, "Use as start")));
}
