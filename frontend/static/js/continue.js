// New work from a library picture: variations (keep its top rows, draw the rest with new
// seeds), extend below, or "use as start" on the advanced page.
import { submitPrompt } from "./api.js";
import { rememberJob } from "./myjobs.js";

const SAMPLING = ["gen_top_k", "gen_top_p", "temperature", "condition_scale"];

function settings(entry) {
  const values = { text: entry.text_prompt, num_images: entry.num_images || (entry.generated_images ?? []).length || 4 };
  for (const name of SAMPLING) {
    if (entry[name] !== null && entry[name] !== undefined) values[name] = entry[name];
  }
  return values;
}

// Queues the job (seed 0: a new random seed each time) and returns its queue_id.
export async function continueFrom(entry, src, { keepRows, extend }) {
  const params = { ...settings(entry), seed: 0, init_image: src, keep_rows: keepRows, extend: extend ? "down" : null };
  const { queue_id: queueId } = await submitPrompt(params);
  rememberJob(queueId, params.text);
  return queueId;
}

// The advanced page with the picture as its start and the job's prompt and settings.
export function startLink(entry, src, keepRows = 8) {
  const query = new URLSearchParams({ ...settings(entry), seed: entry.seed ?? 0, init_image: src, keep_rows: keepRows });
  return `advanced.html?${query}`;
}
