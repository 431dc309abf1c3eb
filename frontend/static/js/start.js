// The advanced page's start picture: a library image (from "Use as start") or an upload
// (chosen or dropped), with the row slider over it and "extend below".
import { el, setChildren } from "./dom.js";
import { pngText } from "./pnginfo.js";
import { limits } from "./limits.js";
import { DEFAULT_KEEP_ROWS, rowPicker } from "./rows.js";

const TYPES = ["image/png", "image/jpeg", "image/webp"];

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let at = 0; at < bytes.length; at += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(at, at + 0x8000));
  }
  return btoa(binary);
}

// Returns null on a page without the start fieldset.
export function startPicture() {
  const fieldset = document.getElementById("start");
  if (!fieldset) return null;
  const holder = document.getElementById("start-picker");
  const fileInput = document.getElementById("start-file");
  const extend = document.getElementById("extend");
  const remove = document.getElementById("start-remove");
  const error = document.getElementById("start-error");
  const source = document.getElementById("start-source");
  let start = null; // { init_image } or { init_image_data }, with its picker
  let previewUrl = null; // the object URL of an uploaded start picture

  function releaseUpload() {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
  }

  function show(params, src, description, square) {
    const keepRows = start?.picker.keepRows() ?? DEFAULT_KEEP_ROWS;
    const picker = rowPicker({ src, alt: "The start picture", keepRows, square,
                               mode: extend.checked ? "bottom" : "top" });
    start = { params, picker };
    setChildren(holder, picker.node);
    source.textContent = description;
    error.textContent = "";
    fieldset.classList.add("has-start");
    remove.hidden = false;
  }

  async function useFile(file) {
    if (!TYPES.includes(file.type)) {
      error.textContent = "Choose a PNG, JPEG or WebP picture.";
      return;
    }
    if (file.size > limits.upload_max_bytes) {
      error.textContent = `The picture is ${(file.size / 1048576).toFixed(1)} MB; at most `
        + `${(limits.upload_max_bytes / 1048576).toFixed(1).replace(/\.0$/, "")} MB are accepted.`;
      return;
    }
    // A file named .png that is no picture (or a broken one) is refused here, at its field,
    // not shown as a broken preview to fail only when sent.
    try {
      (await createImageBitmap(file)).close();
    } catch {
      error.textContent = `${file.name} is not a picture this browser can open (a damaged or mislabelled file).`;
      return;
    }
    const buffer = await file.arrayBuffer();
    releaseUpload(); // the picture this one replaces
    previewUrl = URL.createObjectURL(file);
    // Only a PNG of ours keeps its shape (its codes say how tall it is); any other picture
    // is centre-cropped to a square by the server, so the preview shows that square.
    const ours = "dalle_codes" in pngText(buffer);
    show({ init_image_data: base64(buffer) }, previewUrl, `Uploaded: ${file.name}`, !ours);
  }

  function useLibraryImage(path, keepRows, extendDown) {
    extend.checked = Boolean(extendDown);
    releaseUpload();
    show({ init_image: path }, path, "From the library", false);
    if (keepRows) {
      const slider = holder.querySelector(".row-slider");
      slider.value = keepRows;
      slider.dispatchEvent(new Event("input"));
    }
  }

  function clear() {
    start = null;
    releaseUpload();
    setChildren(holder);
    source.textContent = "";
    error.textContent = "";
    fieldset.classList.remove("has-start");
    remove.hidden = true;
    fileInput.value = "";
  }

  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) useFile(fileInput.files[0]);
  });
  extend.addEventListener("change", () => start?.picker.setMode(extend.checked ? "bottom" : "top"));
  remove.addEventListener("click", clear);

  return {
    element: fieldset,
    useFile,
    useLibraryImage,
    // The continuation fields of POST /prompt ({} without a start picture).
    params: () => (start ? { ...start.params, keep_rows: start.picker.keepRows(), extend: extend.checked ? "down" : null }
      : {}),
    showError: (message) => {
      error.textContent = message;
    },
  };
}
