// Every call the pages make to the playground's HTTP API (see the API document).
import { askForToken, savedToken } from "./token.js";

// A server that does not answer within this long is reported, and the page's controls come
// back (a paused or wedged frontend would otherwise leave Create on "Sending…" for ever).
const REQUEST_TIMEOUT_MS = 20000;

// `field`: the request field a 400 names, when it names one.
class ApiError extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

async function apiError(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") {
      return new ApiError(response.status, body.error, typeof body.field === "string" ? body.field : null);
    }
  } catch {
    // Not JSON (a proxy's error page, say): fall back to the status line.
  }
  return new ApiError(response.status, `${response.status} ${response.statusText || "error"}`);
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = savedToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                   signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (error) {
    throw new ApiError(0, error.name === "TimeoutError"
      ? `The playground server did not answer in ${REQUEST_TIMEOUT_MS / 1000} s.`
      : "The playground server cannot be reached.");
  }
  if (response.status === 401 && method !== "GET") {
    if (await askForToken(Boolean(token))) return request(method, path, body);
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

const jobPath = (queueId) => `jobs/${encodeURIComponent(queueId)}`;

export async function getLimits() {
  return (await request("GET", "limits")).json();
}

export async function submitPrompt(params) {
  return (await request("POST", "prompt", params)).json();
}

// An upscale of a library picture ({path, model}), queued as a job: {queue_id}.
export async function submitUpscale(params) {
  return (await request("POST", "upscale", params)).json();
}

// The state of Redis, the scheduler and every backend. 503 ("not everything is ready")
// carries the same report, so both are answers here.
export async function systemHealth() {
  let response;
  try {
    response = await fetch("health", { headers: { Accept: "application/json" },
                                       signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch {
    throw new ApiError(0, "The playground server cannot be reached.");
  }
  if (response.status !== 200 && response.status !== 503) {
    throw await apiError(response);
  }
  return response.json();
}

export async function queueStatus() {
  return (await request("GET", "queue_status")).json();
}

export async function jobStatus(queueId) {
  return (await request("GET", jobPath(queueId))).json();
}

export async function cancelJob(queueId) {
  return (await request("POST", `${jobPath(queueId)}/cancel`)).json();
}

export async function deleteJob(queueId) {
  await request("DELETE", jobPath(queueId));
}

// `path` is an entry of generated_images: "library/<queue_id>/<uuid>.png".
export async function deleteImage(path) {
  await request("DELETE", path);
}

export async function getLibrary({ offset, limit, q, sort }) {
  const query = new URLSearchParams({ offset, limit });
  if (q) query.set("q", q);
  if (sort && sort !== "newest") query.set("sort", sort);
  const response = await request("GET", `getlibrary?${query}`);
  const entries = await response.json();
  const total = Number.parseInt(response.headers.get("X-Total-Count") ?? "", 10);
  return { entries, total: Number.isFinite(total) ? total : offset + entries.length };
}
