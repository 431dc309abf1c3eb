// A picture with a line over it and a slider that moves it: which of the rows of codes a
// continuation keeps. "top" keeps the rows above the line (variations); "bottom" keeps the
// rows below it, which become the top of a new picture (extend below).
import { el } from "./dom.js";
import { limits } from "./limits.js";

const ROWS = limits.image_rows; // of a square picture
export const DEFAULT_KEEP_ROWS = limits.keep_rows_default;

export function rowPicker({ src, alt = "", mode = "top", keepRows = DEFAULT_KEEP_ROWS, square = false }) {
  const image = el("img", { src, alt, class: "row-image" });
  const shade = el("div", { class: "row-shade", "aria-hidden": "true" });
  const line = el("div", { class: "row-line", "aria-hidden": "true" });
  const slider = el("input", { type: "range", min: 1, max: limits.keep_rows_max, step: 1, value: keepRows, class: "row-slider",
                               "aria-label": "Rows kept" });
  const label = el("span", { class: "row-label" });
  const frame = el("div", { class: `row-frame${square ? " square" : ""}` }, image, shade, line);
  const picker = { mode, node: el("div", { class: "row-picker" }, frame, el("label", { class: "row-control" }, label, slider)) };

  // The picture's rows of codes: ROWS for a square one, more for a taller one (extended before).
  const totalRows = () => (square || !image.naturalWidth ? ROWS
    : Math.max(ROWS, Math.round((ROWS * image.naturalHeight) / image.naturalWidth)));

  function draw() {
    const kept = Number(slider.value);
    const total = totalRows();
    const cut = picker.mode === "top" ? kept / total : (total - kept) / total;
    line.style.top = `${(cut * 100).toFixed(3)}%`;
    // The part drawn anew (variations) or the part that starts the next picture (extend).
    shade.style.top = picker.mode === "top" ? line.style.top : "0";
    shade.style.height = picker.mode === "top" ? `${((1 - cut) * 100).toFixed(3)}%` : line.style.top;
    label.textContent = picker.mode === "top"
      ? `Keep the top ${kept} of ${ROWS} rows`
      : `Continue from the bottom ${kept} rows`;
    frame.dataset.keepRows = String(kept);
  }

  slider.addEventListener("input", draw);
  image.addEventListener("load", draw);
  picker.keepRows = () => Number(slider.value);
  picker.setMode = (newMode) => {
    picker.mode = newMode;
    draw();
  };
  draw();
  return picker;
}
