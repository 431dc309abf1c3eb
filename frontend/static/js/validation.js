// The same input rules as the server's POST /prompt, checked before sending so
// mistakes are shown next to their field at once; the limits are the server's.
import { limits } from "./limits.js";

export const SAMPLING_FIELDS = ["gen_top_k", "gen_top_p", "temperature", "condition_scale"];

const INTEGER = /^\d+$/;

function parseNumber(raw) {
  const text = raw.trim();
  if (text === "") return null;
  const value = Number(text);
  return Number.isFinite(value) ? value : Number.NaN;
}

// Top-k is at most the chosen model's codebook (the largest served one when none is chosen).
export function topKLimit(model) {
  return limits.models[model]?.image_codes ?? limits.image_codes;
}

const samplingRules = {
  gen_top_k: (raw, form) => (INTEGER.test(raw.trim()) && Number(raw) >= 1 && Number(raw) <= topKLimit(form.model)
    ? null : `Top-k must be a whole number from 1 to ${topKLimit(form.model)}.`),
  gen_top_p: (raw) => {
    const value = parseNumber(raw);
    return value > 0 && value <= 1 ? null : "Top-p must be above 0 and at most 1.";
  },
  temperature: (raw) => (parseNumber(raw) > 0 ? null : "Temperature must be above 0."),
  condition_scale: (raw) => (parseNumber(raw) >= 0 ? null : "Condition scale must be 0 or more."),
};

// A grid sweep's fields: what the form calls them, the server's name, and each value's rule
// (the same as the field's own).
export const GRID_FIELDS = [
  { name: "top_k", label: "Top-k", form: "gen_top_k" },
  { name: "top_p", label: "Top-p", form: "gen_top_p" },
  { name: "temperature", label: "Temperature", form: "temperature" },
  { name: "condition_scale", label: "Condition scale", form: "condition_scale" },
  { name: "seed", label: "Seed" },
  { name: "text", label: "Prompt" },
];

function gridValue(field, raw, form) {
  if (field.name === "text") {
    if (!raw) return { problem: "A prompt may not be empty." };
    return [...raw].length > limits.text_max_chars ? { problem: `A prompt has at most ${limits.text_max_chars} characters.` }
      : { value: raw };
  }
  if (field.name === "seed") {
    return INTEGER.test(raw) && Number(raw) <= limits.seed_max ? { value: Number(raw) }
      : { problem: `A seed is a whole number from 0 to ${limits.seed_max}.` };
  }
  const problem = samplingRules[field.form](raw, form);
  return problem ? { problem } : { value: Number(raw) };
}

// One axis of the grid from its two fields: null when not chosen, else { axis } or { error }.
function gridAxis(fieldName, rawValues, form) {
  const field = GRID_FIELDS.find((choice) => choice.name === fieldName);
  if (!field) return null;
  const parts = (rawValues ?? "").split(field.name === "text" ? "|" : ",").map((part) => part.trim());
  const values = [];
  for (const [index, raw] of parts.entries()) {
    const { value, problem } = gridValue(field, raw, form);
    if (problem) return { error: `Value ${index + 1} (“${raw.slice(0, 40)}”): ${problem}` };
    values.push(value);
  }
  if (values.length < 2) return { error: `Give at least 2 values, separated by ${field.name === "text" ? "“|”" : "commas"}.` };
  return { axis: { field: field.name, values } };
}

// The grid of the form (`params.grid`), or errors for its value fields; {} when none is chosen.
export function validateGrid(form) {
  const x = gridAxis(form.grid_x_field, form.grid_x_values, form);
  if (!x) return {};
  const y = gridAxis(form.grid_y_field, form.grid_y_values, form);
  const errors = {};
  if (x.error) errors.grid_x_values = x.error;
  if (y?.error) errors.grid_y_values = y.error;
  else if (y && form.grid_y_field === form.grid_x_field) errors.grid_y_values = "Choose another field than X.";
  if (Object.keys(errors).length > 0) return { errors };
  const cells = x.axis.values.length * (y ? y.axis.values.length : 1);
  if (cells > limits.grid_cells_max) {
    return { errors: { [y ? "grid_y_values" : "grid_x_values"]: `That makes ${cells} pictures; at most ${limits.grid_cells_max}.` } };
  }
  return { grid: y ? { x: x.axis, y: y.axis } : { x: x.axis } };
}

// `form` maps field names to the raw strings of the form (sampling fields only on
// the advanced page). Returns { params, errors }: params is the POST /prompt body,
// errors maps a field name to what is wrong with it.
export function validatePrompt(form) {
  const errors = {};
  const params = {};

  // A grid draws one picture per cell: no image count, no Best of; a grid of prompts needs no prompt.
  const grid = validateGrid(form);
  Object.assign(errors, grid.errors);
  const promptsInGrid = [form.grid_x_field, form.grid_y_field].includes("text") && grid.grid;

  const text = (form.text ?? "").trim();
  if (!text && !promptsInGrid) errors.text = "Write a prompt first.";
  else if ([...text].length > limits.text_max_chars) errors.text = `A prompt has at most ${limits.text_max_chars} characters.`;
  if (text || !promptsInGrid) params.text = text;

  const numImages = Number(form.num_images);
  if (limits.image_counts.includes(numImages)) params.num_images = numImages;
  else errors.num_images = `Choose ${limits.image_counts.slice(0, -1).join(", ")} or ${limits.image_counts.at(-1)} images.`;

  // Best of N: 2× or 4× the images as candidates (at most the server's limit); CLIP keeps the best.
  const bestOf = Number(form.best_of ?? "1");
  if (![1, 2, 4].includes(bestOf)) errors.best_of = "Choose Off, 2× or 4×.";
  else if (bestOf > 1 && params.num_images) {
    params.candidates = Math.min(limits.candidates_max, params.num_images * bestOf);
    params.rank = true;
  }

  const seed = (form.seed ?? "").trim() || "0";
  if (INTEGER.test(seed) && Number(seed) <= limits.seed_max) params.seed = Number(seed);
  else errors.seed = `The seed is a whole number from 0 to ${limits.seed_max}.`;

  // Offered (and sent) only when the backends serve more than one model; the server checks it.
  if (form.model) params.model = form.model;

  for (const field of SAMPLING_FIELDS) {
    const raw = form[field];
    if (raw === undefined || raw.trim() === "") continue; // empty: the model's default
    const problem = samplingRules[field](raw, form);
    if (problem) errors[field] = problem;
    else params[field] = Number(raw);
  }
  if (grid.grid) {
    params.grid = grid.grid;
    delete params.num_images;
    delete params.candidates;
    delete params.rank;
  }
  return { params, errors };
}
