// Getting the attention of someone who looks elsewhere: the tab's title shows how far my
// running job is, and, if they opt in, a notification says when my images are ready.
const STORAGE_KEY = "dalle-playground.notify";
const baseTitle = document.title;

// `mine`: my unfinished jobs from the last poll, running first.
export function showProgressInTitle(mine) {
  const running = mine.find((job) => job.status === "running");
  const { tokens_done: done = 0, total_tokens: total = 0 } = running?.progress ?? {};
  document.title = running && total > 0 ? `${Math.floor((100 * done) / total)}% · ${baseTitle}`
    : mine.length > 0 ? `Queued · ${baseTitle}` : baseTitle;
}

// The opt-in checkbox: kept in this browser; the browser asks for its permission once.
export function startNotifications(checkbox) {
  if (!checkbox) return;
  if (!("Notification" in window)) {
    checkbox.disabled = true;
    return;
  }
  checkbox.checked = localStorage.getItem(STORAGE_KEY) === "1" && Notification.permission === "granted";
  checkbox.addEventListener("change", async () => {
    if (checkbox.checked && Notification.permission !== "granted") {
      checkbox.checked = (await Notification.requestPermission()) === "granted";
    }
    localStorage.setItem(STORAGE_KEY, checkbox.checked ? "1" : "0");
  });
}

export function notifyEnded(job) {
  if (localStorage.getItem(STORAGE_KEY) !== "1" || !("Notification" in window)
      || Notification.permission !== "granted") return;
  const title = job.status === "done" ? "Your images are ready" : `Your job ${job.status === "failed" ? "failed" : "was cancelled"}`;
  new Notification(title, { body: job.text ?? "", tag: job.queue_id });
}
