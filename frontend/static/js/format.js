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

// eta_secs comes from the measured speed; null means the server cannot know yet.
export function formatEta(secs) {
  if (secs === null || secs === undefined || !Number.isFinite(secs)) return "ETA unknown";
  if (secs < 1) return "finishing";
  return `about ${formatSeconds(secs)} left`;
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
