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
