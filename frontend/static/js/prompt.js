// The prompt form of index.html and advanced.html (the latter adds the sampling fields).
import { submitPrompt } from "./api.js";
import { startNotifications } from "./attention.js";
import { startBackendStatus } from "./backends.js";
import { limits } from "./limits.js";
import { rememberJob } from "./myjobs.js";
import { pngText, recalledSettings } from "./pnginfo.js";
import { startQueue } from "./queue.js";
import { startPicture } from "./start.js";
import { el } from "./dom.js";
import { GRID_FIELDS, SAMPLING_FIELDS, topKLimit, validatePrompt } from "./validation.js";

const GRID_INPUTS = ["grid_x_field", "grid_x_values", "grid_y_field", "grid_y_values"];
const FIELDS = ["text", "num_images", "best_of", "seed", "model", ...SAMPLING_FIELDS, ...GRID_INPUTS];
// What the advanced page's "Upscale ×4" asks: POST /prompt's `upscale` (the upscalers' scale).
const UPSCALE_SCALE = 4;

const form = document.getElementById("prompt-form");
const textInput = document.getElementById("text");
const submitButton = document.getElementById("submit");
const formStatus = document.getElementById("form-status");
const start = startPicture(); // the advanced page's start picture; null on the create page
startNotifications(document.getElementById("notify"));

// The server's limits where the form states them. A prompt over the length is not cut (a
// paste would lose its end unseen): the count says so, and the check refuses it.
const textCount = document.getElementById("text-count");
function countText() {
  const length = [...textInput.value.trim()].length;
  textCount.textContent = `${length} / ${limits.text_max_chars}`;
  textCount.classList.toggle("over", length > limits.text_max_chars);
}
textInput.addEventListener("input", countText);
countText();
form.elements.namedItem("seed").max = String(limits.seed_max);
for (const node of document.querySelectorAll("[data-limit]")) node.textContent = String(limits[node.dataset.limit]);
// The top-k hint follows the chosen model's codebook.
const topKHint = document.getElementById("top-k-limit");
const modelChoice = form.elements.namedItem("model");
function showTopKLimit() {
  if (topKHint) topKHint.textContent = String(topKLimit(modelChoice?.value));
}
modelChoice?.addEventListener("change", showTopKLimit);
showTopKLimit();

startBackendStatus(document.getElementById("backends"), document.getElementById("model-field"));

// The grid's field choices (advanced page).
for (const name of ["grid_x_field", "grid_y_field"]) {
  const select = form.elements.namedItem(name);
  select?.append(...GRID_FIELDS.map((field) => el("option", { value: field.name }, field.label)));
}

const queue = startQueue({
  list: document.getElementById("queue"),
  empty: document.getElementById("queue-empty"),
  more: document.getElementById("queue-more"),
  connection: document.getElementById("connection"),
  results: document.getElementById("results"),
  resultsEmpty: document.getElementById("results-empty"),
  resultsStatus: document.getElementById("results-status"),
});

// The raw strings of the fields this page has.
function readForm() {
  const values = {};
  for (const name of FIELDS) {
    const control = form.elements.namedItem(name);
    if (!control) continue;
    // A number input holding something unparsable reports "", which would read
    // as "use the default"; "NaN" makes the validation reject it instead.
    values[name] = control.validity?.badInput ? "NaN" : control.value;
  }
  return values;
}

// "Use these settings again" in the library links here with the settings in the URL.
function prefillFromUrl() {
  const query = new URLSearchParams(window.location.search);
  for (const name of FIELDS) {
    const control = form.elements.namedItem(name);
    if (!control || !query.has(name)) continue;
    control.value = query.get(name); // on a radio group this checks the matching radio
    // The model choice has no options until the servers' health arrives (backends.js).
    if (control instanceof HTMLSelectElement && control.value !== query.get(name)) control.dataset.wanted = query.get(name);
  }
  // "Use as start" in the library: ?init_image=library/<queue_id>/<image>.png&keep_rows=8
  if (start && query.has("init_image")) {
    start.useLibraryImage(query.get("init_image"), query.get("keep_rows"), query.get("extend") === "down");
  }
}

// "Recall": a PNG of ours dropped on the page fills in the prompt and settings it was made
// with. On the advanced page a picture dropped on the start field (or one that is not ours)
// becomes the start picture instead.
let promptTyped = false; // whether the prompt field holds what the user typed
textInput.addEventListener("input", (event) => {
  if (event.isTrusted) promptTyped = textInput.value.trim() !== "";
});

async function dropped(event) {
  const file = event.dataTransfer?.files?.[0];
  if (!file) return;
  event.preventDefault();
  if (start && start.element.contains(event.target)) {
    start.useFile(file);
    return;
  }
  const settings = file.type === "image/png" ? recalledSettings(pngText(await file.arrayBuffer())) : null;
  if (settings) {
    // A prompt typed here is not thrown away by a drop (one restored by an earlier drop is).
    const keepTyped = promptTyped && textInput.value.trim() !== settings.text;
    promptTyped = keepTyped;
    for (const [name, value] of Object.entries(settings)) {
      const control = form.elements.namedItem(name);
      if (!control || (name === "text" && keepTyped)) continue;
      control.value = value;
      if (control instanceof HTMLSelectElement && control.value !== value) control.dataset.wanted = value;
    }
    textInput.dispatchEvent(new Event("input")); // the count follows
    setStatus(keepTyped ? `Settings restored from ${file.name}; your prompt was kept (the picture's: “${settings.text}”).`
      : `Settings restored from ${file.name}.`);
  } else if (start) {
    start.useFile(file);
  } else {
    setStatus(`${file.name} is not a picture made here: there are no settings to restore.`, true);
  }
}

function showErrors(errors) {
  for (const name of FIELDS) {
    const message = document.getElementById(`${name}-error`);
    if (!message) continue;
    message.textContent = errors[name] ?? "";
    const control = form.elements.namedItem(name);
    const inputs = control instanceof RadioNodeList ? [...control] : [control];
    for (const input of inputs) input.toggleAttribute("aria-invalid", Boolean(errors[name]));
  }
  const first = FIELDS.find((name) => errors[name]);
  if (first) {
    const control = form.elements.namedItem(first);
    (control instanceof RadioNodeList ? control[0] : control).focus();
  }
}

// The server names the field it refuses: the message goes there, in the form's words.
const START_FIELDS = ["init_image", "init_image_data", "keep_rows", "extend"];
function showServerError(error) {
  const field = { candidates: "best_of", grid: "grid_x_values" }[error.field] ?? error.field;
  const detail = error.message.replace(/^[a-z_]+: /, "");
  if (field && FIELDS.includes(field) && document.getElementById(`${field}-error`)) {
    const label = form.querySelector(`label[for="${field}"]`)?.textContent.trim() ?? field;
    showErrors({ [field]: `${label}: ${detail}` });
    setStatus("Please correct the highlighted field.", true);
  } else if (start && START_FIELDS.includes(field)) {
    start.showError(detail);
    setStatus("Please correct the start picture.", true);
  } else {
    setStatus(error.message, true);
  }
}

function setStatus(message, isError = false) {
  formStatus.textContent = message;
  formStatus.classList.toggle("is-error", isError);
}

// "Queued…" is true only until the job ends; then the results say how it went.
let queuedHere = null;
queue.onSettled((job) => {
  if (job.queue_id !== queuedHere) return;
  queuedHere = null;
  setStatus("");
});

async function submit(event) {
  event.preventDefault();
  if (submitButton.disabled) return;
  const { params, errors } = validatePrompt(readForm());
  showErrors(errors);
  if (Object.keys(errors).length > 0) {
    setStatus("Please correct the highlighted field.", true);
    return;
  }
  Object.assign(params, start?.params());
  const keepPreviews = document.getElementById("keep_previews");
  if (keepPreviews?.checked) params.keep_previews = true;
  const upscale = document.getElementById("upscale");
  if (upscale?.checked) params.upscale = UPSCALE_SCALE;
  submitButton.disabled = true;
  setStatus("Sending…");
  try {
    const { queue_id: queueId } = await submitPrompt(params);
    rememberJob(queueId, params.text);
    queue.track(queueId);
    start?.showError("");
    queuedHere = queueId;
    setStatus("Queued. Your job is highlighted in the queue.");
  } catch (error) {
    showServerError(error);
  } finally {
    submitButton.disabled = false;
  }
}

textInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});
form.addEventListener("submit", submit);
document.addEventListener("dragover", (event) => {
  if (event.dataTransfer?.types?.includes("Files")) event.preventDefault(); // allows the drop
});
document.addEventListener("drop", dropped);
prefillFromUrl();
