// New work from a library job or picture, by one rule (docs/ui.md, "What carries over"):
// each carries the job's settings (prompt, image count, sampling values, model, Best of);
// the ones that open the advanced page ("Use these settings again", "Use as start") carry its
// seed too, and a start picture (its own, or the one chosen); Variations and Extend, which
// queue at once, draw new seeds (the same seed would draw the same pictures again).
import { submitPrompt } from "./api.js";
import { limits } from "./limits.js";
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

// Best of N as the form offers it (2× or 4× the images), or 1.
export function bestOf(entry) {
  const times = entry.ranked ? entry.candidates / (entry.num_images || 1) : 1;
  return times === 2 || times === 4 ? times : 1;
}

// The advanced page filled in with a library job's settings and seed, and its start picture
// if it had one: "Use these settings again" makes the same job again.
export function settingsLink(entry) {
  const query = new URLSearchParams({ ...jobSettings(entry), seed: entry.seed ?? 0 });
  if (bestOf(entry) > 1) query.set("best_of", bestOf(entry));
  if (entry.grid) setGrid(query, entry.grid);
  if (entry.init_image && entry.keep_rows) {
    query.set("init_image", entry.init_image);
    query.set("keep_rows", entry.keep_rows);
    if (entry.extend === "down") query.set("extend", "down");
  }
  return `advanced.html?${query}`;
}

// A grid sweep's axes as the advanced page's Grid fields take them (prompts apart by "|", numbers
// by commas). A grid draws one picture per cell: its image count is not carried.
function setGrid(query, grid) {
  query.delete("num_images");
  for (const axis of ["x", "y"]) {
    if (!grid[axis]) continue;
    query.set(`grid_${axis}_field`, grid[axis].field);
    query.set(`grid_${axis}_values`, grid[axis].values.join(grid[axis].field === "text" ? " | " : ", "));
  }
}

// Queues the job (seed 0: a new random seed each time) and returns its queue_id.
export async function continueFrom(entry, src, { keepRows, extend }) {
  const params = { ...jobSettings(entry), seed: 0, init_image: src, keep_rows: keepRows, extend: extend ? "down" : null };
  if (bestOf(entry) > 1) Object.assign(params, { candidates: Math.min(limits.candidates_max, params.num_images * bestOf(entry)), rank: true });
  const { queue_id: queueId } = await submitPrompt(params);
  rememberJob(queueId, params.text);
  // The page it was started from may follow it (the library shows it coming, then the job).
  document.dispatchEvent(new CustomEvent("job-queued", { detail: { queueId } }));
  return queueId;
}

// The advanced page with the picture as its start and the job's prompt and settings.
export function startLink(entry, src, keepRows = DEFAULT_KEEP_ROWS) {
  const query = new URLSearchParams({ ...jobSettings(entry), seed: entry.seed ?? 0, init_image: src, keep_rows: keepRows });
  if (bestOf(entry) > 1) query.set("best_of", bestOf(entry));
  return `advanced.html?${query}`;
}
