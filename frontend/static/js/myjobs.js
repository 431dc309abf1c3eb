// The jobs this browser submitted, remembered in localStorage so they stay "mine"
// across reloads. Only the newest few are kept; older results live in the library.
const STORAGE_KEY = "dalle-playground.my-jobs";
const KEEP = 12;

export function myJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "[]");
    return Array.isArray(jobs) ? jobs.filter((job) => typeof job?.queue_id === "string") : [];
  } catch {
    return [];
  }
}

function save(jobs) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(jobs.slice(0, KEEP)));
}

export function rememberJob(queueId, text) {
  save([{ queue_id: queueId, text, submitted_unixtime: Date.now() / 1000 },
        ...myJobs().filter((job) => job.queue_id !== queueId)]);
}

export function forgetJob(queueId) {
  save(myJobs().filter((job) => job.queue_id !== queueId));
}

export function isMine(queueId) {
  return myJobs().some((job) => job.queue_id === queueId);
}
