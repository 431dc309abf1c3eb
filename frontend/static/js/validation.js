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

// `form` maps field names to the raw strings of the form (sampling fields only on
// the advanced page). Returns { params, errors }: params is the POST /prompt body,
// errors maps a field name to what is wrong with it.
export function validatePrompt(form) {
  const errors = {};
  const params = {};

  const text = (form.text ?? "").trim();
  if (!text) errors.text = "Write a prompt first.";
  else if ([...text].length > limits.text_max_chars) errors.text = `A prompt has at most ${limits.text_max_chars} characters.`;
  params.text = text;

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
  return { params, errors };
}
