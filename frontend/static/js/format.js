// Human-readable numbers for durations, dates and sampling values.

export function formatSeconds(secs) {
  if (secs === null || secs === undefined || !Number.isFinite(secs)) return "–";
  if (secs < 10) return `${secs.toFixed(1)} s`;
  if (secs < 60) return `${Math.round(secs)} s`;
  const minutes = Math.floor(secs / 60);
  const seconds = Math.round(secs % 60);
  if (minutes < 60) return seconds ? `${minutes} min ${seconds} s` : `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

// eta_secs comes from the measured speed; null means the server cannot know yet. "finishing"
// only once the last token is drawn (the pictures are being decoded): before, it would not be true.
export function formatEta(secs, drawing) {
  if (secs === null || secs === undefined || !Number.isFinite(secs)) return "ETA unknown";
  if (secs < 1) return drawing ? "under a second left" : "finishing";
  return `about ${formatSeconds(secs)} left`;
}

// A library entry's sampling values and model, as one line.
export function formatSettings(entry) {
  return `top-k ${formatNumber(entry.gen_top_k)} · top-p ${formatNumber(entry.gen_top_p)} · `
    + `temperature ${formatNumber(entry.temperature)} · condition scale ${formatNumber(entry.condition_scale)}`
    + (entry.model ? ` · model ${entry.model}` : "");
}

// A file name a person can find again: the prompt's first words, the seed and the picture's
// place in its job ("a-red-circle-seed42-2.png").
export function downloadName(entry, index, extension) {
  const words = (entry.text_prompt ?? "").normalize("NFKD").toLowerCase().replace(/[^a-z0-9]+/g, "-")
    .slice(0, 60).replace(/^-+|-+$/g, "");
  return `${words || "picture"}-seed${entry.seed ?? 0}-${index + 1}.${extension}`;
}

export function formatDate(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function formatNumber(value) {
  return value === null || value === undefined ? "default" : String(value);
}

// Sizes as the downloads are published: decimal units (1 GB = 10⁹ bytes).
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "?";
  const units = ["bytes", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${units[unit]}`;
}
