// What the model servers are doing, shown only while one of them is not ready: downloading
// the model (each file with its bytes and a bar), reading or compiling it, failed with the
// reason (which says what to do), or out of reach. Prompts sent meanwhile wait in the queue.
import { systemHealth } from "./api.js";
import { el, setChildren } from "./dom.js";
import { formatBytes } from "./format.js";

const NOT_READY_POLL_MS = 2000;
const READY_POLL_MS = 15000;

const STAGES = {
  starting: "starting",
  downloading: "downloading the model",
  reading: "reading the model",
  compiling: "compiling (the first start takes longest)",
};

function fileRow(file) {
  const total = file.bytes_total;
  const bar = el("progress", { "aria-label": `Downloaded of ${file.name}` });
  let amount = formatBytes(file.bytes_done);
  if (total) {
    bar.max = total;
    bar.value = Math.min(file.bytes_done, total);
    amount = `${amount} of ${formatBytes(total)} (${Math.floor((100 * file.bytes_done) / total)}%)`;
  }
  return el("li", { class: "download" },
    el("span", { class: "download-name" }, file.name),
    bar,
    el("span", { class: "download-amount" }, amount));
}

function backendItem(backend) {
  const model = backend.model ? `Model ${backend.model}` : "Model server";
  const node = el("li", { class: "backend", "data-status": backend.status ?? "unknown" });
  if (backend.status === "loading") {
    const stage = STAGES[backend.stage] ?? "loading";
    node.append(el("p", { class: "backend-state" }, `${model}: ${stage}…`));
    if (backend.stage === "downloading" && backend.files?.length) {
      node.append(el("ul", { class: "downloads" }, backend.files.map(fileRow)));
    }
  } else if (backend.status === "error") {
    node.append(el("p", { class: "backend-state", role: "alert" },
      `${model} failed to load: ${backend.error ?? "no reason given"}`));
  } else if (backend.status === "unreachable") {
    node.append(el("p", { class: "backend-state" },
      `${model} at ${backend.url} cannot be reached; retrying. If this lasts, look at its log (docker compose logs backend).`));
  } else if (backend.status === "ready") {
    node.append(el("p", { class: "backend-state" }, `${model}: ready.`));
  } else {
    node.append(el("p", { class: "backend-state" },
      `${model} at ${backend.url}: no news from its scheduler; it may be restarting.`));
  }
  return node;
}

// The lines to show, or none when all is well.
function describe(report) {
  if (report.redis?.status === "error") {
    return [el("li", { class: "backend", "data-status": "error" },
      el("p", { class: "backend-state", role: "alert" }, `The queue (Redis) cannot be reached: ${report.redis.error}`))];
  }
  const backends = report.backends ?? [];
  if (!backends.length) {
    return [el("li", { class: "backend", "data-status": "unknown" }, el("p", { class: "backend-state" },
      "No scheduler is running yet: prompts wait in the queue until it starts."))];
  }
  if (backends.every((backend) => backend.status === "ready")) return [];
  return backends.map(backendItem);
}

// The model choice of the prompt form: shown when the backends serve more than one model,
// the server's default first. A choice that is no longer served falls back to the default.
// A model asked for before any was known (a library link's ?model=) waits in data-wanted.
function offerModels(field, models) {
  const select = field.querySelector("select");
  const current = [...select.options].map((option) => option.value);
  if (current.join("\n") !== models.join("\n")) {
    const chosen = select.dataset.wanted || select.value;
    setChildren(select, models.map((model) => el("option", { value: model }, model)));
    if (models.includes(chosen)) select.value = chosen;
  }
  if (models.length > 0) delete select.dataset.wanted;
  field.hidden = models.length < 2;
  if (field.hidden) select.value = ""; // one model (or none yet): the server routes it
}

// What a model can draw, where the prompt page should say so: the demo model knows only
// coloured shapes, so its example prompt is one of those (docs/demo-model.md).
const MODEL_NOTES = {
  demo: { about: "a small demonstration model that draws circles, squares and triangles",
          example: "a small blue square in the top left on a black background" },
};

// The model(s) in use, named above the form, and an example prompt that suits them.
function nameModels(node, textInput, models) {
  node.hidden = models.length === 0;
  const note = models.length === 1 ? MODEL_NOTES[models[0]] : undefined;
  node.textContent = models.length === 1 ? `Model: ${models[0]}${note ? ` (${note.about})` : ""}`
    : `Models: ${models.join(", ")}`;
  if (textInput) {
    textInput.dataset.defaultPlaceholder ??= textInput.placeholder;
    textInput.placeholder = note?.example ?? textInput.dataset.defaultPlaceholder;
  }
}

export function startBackendStatus(panel, modelField) {
  const modelInUse = document.getElementById("model-in-use");
  const list = el("ul", { class: "backends-list" });
  setChildren(panel, el("p", { class: "backends-note" }, "Prompts you send now wait in the queue."), list);
  let timer = null;
  let polling = false;

  async function poll() {
    timer = null;
    if (polling) return;
    polling = true;
    let lines;
    try {
      const report = await systemHealth();
      lines = describe(report);
      if (modelField) offerModels(modelField, report.models ?? []);
      if (modelInUse) nameModels(modelInUse, document.getElementById("text"), report.models ?? []);
    } catch {
      lines = []; // the queue panel already says when the server is out of reach
    } finally {
      polling = false;
    }
    panel.hidden = lines.length === 0;
    setChildren(list, lines);
    if (!document.hidden) timer = setTimeout(poll, lines.length ? NOT_READY_POLL_MS : READY_POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(timer); // no polls while the tab is hidden
      timer = null;
    } else if (timer === null) {
      poll();
    }
  });
  poll();
}
