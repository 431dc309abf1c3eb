// New work from a library picture: variations (keep its top rows, draw the rest with new
// seeds), extend below, or "use as start" on the advanced page.
import { submitPrompt } from "./api.js";
import { rememberJob } from "./myjobs.js";
import { DEFAULT_KEEP_ROWS } from "./rows.js";
import { SAMPLING_FIELDS } from "./validation.js";

// What a library job was made with, as POST /prompt and the prompt form name it: the
// prompt, the number of images, the sampling values and the model.
export function jobSettings(entry) {
  const values = { text: entry.text_prompt, num_images: entry.num_images || (entry.generated_images ?? []).length || 4 };
  for (const name of SAMPLING_FIELDS) {
    if (entry[name] !== null && entry[name] !== undefined) values[name] = entry[name];
  }
  if (entry.model) values.model = entry.model;
  return values;
}

// Queues the job (seed 0: a new random seed each time) and returns its queue_id.
export async function continueFrom(entry, src, { keepRows, extend }) {
  const params = { ...jobSettings(entry), seed: 0, init_image: src, keep_rows: keepRows, extend: extend ? "down" : null };
  const { queue_id: queueId } = await submitPrompt(params);
  rememberJob(queueId, params.text);
  return queueId;
}

// The advanced page with the picture as its start and the job's prompt and settings.
export function startLink(entry, src, keepRows = DEFAULT_KEEP_ROWS) {
  const query = new URLSearchParams({ ...jobSettings(entry), seed: entry.seed ?? 0, init_image: src, keep_rows: keepRows });
  return `advanced.html?${query}`;
}
