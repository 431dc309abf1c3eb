"""The job queue in Redis, as the frontend sees it: submit, look up, list, cancel, health.

The scheduler's side of the same keys (claiming a job, progress, finishing, recovery) is in
`scheduler.worker_queue`; both use the key layout of `Keys` (see docs/scheduler.md):

    <prefix>:queue                 list of queued job ids, head = next (FIFO, RPUSH to submit)
    <prefix>:job:<id>              hash: parameters, status, timestamps, attempts, progress
    <prefix>:workers               set of worker ids (one per backend URL)
    <prefix>:worker:<wid>          hash: backend_url, backend_status, model, job_id, heartbeat
    <prefix>:worker:<wid>:alive    string with a TTL, renewed by the worker's heartbeat
    <prefix>:processing:<wid>      list holding the job the worker is running (0 or 1 id)
    <prefix>:speed                 hash: worker id -> measured seconds per image (moving average)

Submitting, listing and cancelling are each one round trip (a Lua script), so POST /prompt
and the once-a-second status polls stay cheap.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import redis

SAMPLING_PARAMS = ("top_k", "top_p", "temperature", "condition_scale")
FINISHED = ("done", "failed", "cancelled")
DEFAULT_PREFIX = "dalle"
DEFAULT_MAX_QUEUED = 1000
DEFAULT_FINISHED_TTL_SECS = 7 * 24 * 3600


class QueueFull(Exception):
    """The queue already holds `max_queued` jobs."""


class JobNotFound(KeyError):
    """No job with this id (never submitted, or finished long enough ago to be forgotten)."""


class Keys:
    """Names of the Redis keys shared by the frontend and the scheduler."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix
        self.queue = f"{prefix}:queue"
        self.workers = f"{prefix}:workers"
        self.speed = f"{prefix}:speed"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def alive(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:alive"

    def processing(self, worker_id: str) -> str:
        return f"{self.prefix}:processing:{worker_id}"


def _float_or_none(raw: str | None) -> float | None:
    return float(raw) if raw not in (None, "") else None


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw not in (None, "") else None


@dataclass
class Job:
    """One prompt and everything known about its run, decoded from its Redis hash."""

    id: str
    text: str
    num_images: int
    seed: int
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    condition_scale: float | None = None
    status: str = "queued"
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
    last_error: str | None = None
    worker: str | None = None
    backend: str | None = None
    model: str | None = None
    tokens_done: int = 0
    total_tokens: int = 256
    cancel_requested: bool = False
    images: list[str] = field(default_factory=list)
    process_time_secs: float | None = None
    # Filled in by JobQueue from the queue as a whole, not stored in the hash.
    position: int | None = None
    eta_secs: float | None = None

    @classmethod
    def from_hash(cls, raw: dict) -> Job:
        h = raw if isinstance(next(iter(raw), ""), str) else {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=h["id"],
            text=h["text"],
            num_images=int(h["num_images"]),
            seed=int(h["seed"]),
            top_k=_int_or_none(h.get("top_k")),
            top_p=_float_or_none(h.get("top_p")),
            temperature=_float_or_none(h.get("temperature")),
            condition_scale=_float_or_none(h.get("condition_scale")),
            status=h.get("status", "queued"),
            created_at=float(h.get("created_at") or 0),
            started_at=_float_or_none(h.get("started_at")),
            finished_at=_float_or_none(h.get("finished_at")),
            attempts=int(h.get("attempts") or 0),
            error=h.get("error") or None,
            last_error=h.get("last_error") or None,
            worker=h.get("worker") or None,
            backend=h.get("backend") or None,
            model=h.get("model") or None,
            tokens_done=int(h.get("tokens_done") or 0),
            total_tokens=int(h.get("total_tokens") or 256),
            cancel_requested=h.get("cancel_requested") == "1",
            images=json.loads(h.get("images") or "[]"),
            process_time_secs=_float_or_none(h.get("process_time_secs")),
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def params(self) -> dict:
        """The generation request as the backend protocol names it."""
        return {"job_id": self.id, "text": self.text, "num_images": self.num_images, "seed": self.seed,
                **{name: getattr(self, name) for name in SAMPLING_PARAMS}}

    def to_status(self) -> dict:
        """The public view: /queue_status elements and the per-job status of the API.

        `position` is 0 for a running job, 1 for the next queued one, and so on; None once
        finished. `eta_secs` is the estimated seconds until the job is done (None when no
        speed has been measured yet or no worker is alive).
        """
        return {
            "queue_id": self.id,
            "text": self.text,
            "num_images": self.num_images,
            "seed": self.seed,
            **{name: getattr(self, name) for name in SAMPLING_PARAMS},
            "status": self.status,
            "position": self.position,
            "progress": {"tokens_done": self.tokens_done, "total_tokens": self.total_tokens},
            "eta_secs": None if self.eta_secs is None else round(self.eta_secs, 1),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "backend": self.backend,
            "model": self.model,
            "images": self.images,
        }


def encode_job_fields(job: Job) -> dict[str, str]:
    """The Redis hash of a new job (only the fields set at submission)."""
    return {
        "id": job.id,
        "text": job.text,
        "num_images": str(job.num_images),
        "seed": str(job.seed),
        **{name: "" if getattr(job, name) is None else repr(getattr(job, name)) for name in SAMPLING_PARAMS},
        "status": job.status,
        "created_at": repr(job.created_at),
        "attempts": "0",
        "tokens_done": "0",
        "total_tokens": "256",
    }


# KEYS: queue, job hash. ARGV: max_queued, job id, then field, value, ...
_SUBMIT = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1
"""

# Everything /queue_status needs in one round trip: the workers (alive or not, their
# running job, their speed) and the queued jobs, each with its hash. Encoded as one JSON
# string, which Python decodes far faster than thousands of nested RESP replies.
# KEYS: queue, workers, speed. ARGV: prefix.
_UNFINISHED = """
local prefix = ARGV[1]
local function job(jid)
  local flat = redis.call('HGETALL', prefix .. ':job:' .. jid)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end
local workers = {}
for _, wid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local running = {}
  for _, jid in ipairs(redis.call('LRANGE', prefix .. ':processing:' .. wid, 0, -1)) do
    local h = job(jid)
    if h then table.insert(running, h) end
  end
  table.insert(workers, {id = wid, alive = redis.call('EXISTS', prefix .. ':worker:' .. wid .. ':alive'),
                         speed = redis.call('HGET', KEYS[3], wid) or '', running = running})
end
local queued = {}
for _, jid in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local h = job(jid)
  if h then table.insert(queued, h) end
end
return cjson.encode({workers = workers, queued = queued})
"""

# KEYS: queue, job hash. ARGV: job id, now, finished ttl.
# Returns the new status: queued jobs are cancelled at once; running ones are flagged for
# their worker; finished ones are left alone. '' when the job does not exist.
_CANCEL = """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return '' end
if status == 'queued' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('HSET', KEYS[2], 'status', 'cancelled', 'finished_at', ARGV[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
  return 'cancelled'
end
if status == 'running' then
  redis.call('HSET', KEYS[2], 'cancel_requested', '1')
end
return status
"""


class JobQueue:
    """Submit, find, list and cancel jobs; read the scheduler's health. Thread-safe."""

    def __init__(self, redis_client: redis.Redis, max_queued: int = DEFAULT_MAX_QUEUED,
                 prefix: str = DEFAULT_PREFIX, finished_ttl_secs: int = DEFAULT_FINISHED_TTL_SECS):
        self.redis = redis_client
        self.max_queued = max_queued
        self.keys = Keys(prefix)
        self.finished_ttl_secs = finished_ttl_secs
        self._submit = redis_client.register_script(_SUBMIT)
        self._unfinished = redis_client.register_script(_UNFINISHED)
        self._cancel = redis_client.register_script(_CANCEL)

    def submit(self, params: dict) -> Job:
        """Queue a validated request (text, num_images, seed, optional sampling values)."""
        job = Job(
            id=str(uuid.uuid4()),
            text=params["text"],
            num_images=int(params["num_images"]),
            seed=int(params["seed"]),
            top_k=None if params.get("top_k") is None else int(params["top_k"]),
            **{name: None if params.get(name) is None else float(params[name])
               for name in ("top_p", "temperature", "condition_scale")},
            created_at=time.time(),
        )
        flat = [item for pair in encode_job_fields(job).items() for item in pair]
        if not self._submit(keys=[self.keys.queue, self.keys.job(job.id)],
                            args=[self.max_queued, job.id, *flat]):
            raise QueueFull(f"the queue is full ({self.max_queued} prompts waiting); try again later")
        return job

    def record(self, job_id: str) -> Job | None:
        """The job's own record without position and ETA: one read, whatever the queue's length."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        return Job.from_hash(raw) if raw else None

    def get(self, job_id: str) -> Job | None:
        """The job with its position and ETA, or None when unknown."""
        job = self.record(job_id)
        if job is None:
            return None
        if job.finished:
            return job
        # Position and ETA depend on the jobs ahead, so take them from the whole picture.
        for listed in self.unfinished():
            if listed.id == job_id:
                return listed
        return self.record(job_id)  # it finished between the two reads

    def unfinished(self, now: float | None = None) -> list[Job]:
        """Running jobs first, then queued jobs oldest first, each with position and ETA."""
        picture = json.loads(self._unfinished(
            keys=[self.keys.queue, self.keys.workers, self.keys.speed], args=[self.keys.prefix]))
        now = time.time() if now is None else now
        running: list[tuple[Job, str]] = []
        speeds: dict[str, float] = {}
        alive_workers: list[str] = []
        # cjson writes an empty Lua table as {}, hence the `or []`.
        for worker in picture["workers"] or []:
            if worker["speed"]:
                speeds[worker["id"]] = float(worker["speed"])
            if worker["alive"]:
                alive_workers.append(worker["id"])
            running.extend((Job.from_hash(h), worker["id"]) for h in worker["running"] or [])
        queued = [Job.from_hash(h) for h in picture["queued"] or []]
        running.sort(key=lambda item: item[0].started_at or item[0].created_at)
        _estimate(running, queued, alive_workers, speeds, now)
        return [job for job, _ in running] + queued

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask the worker to stop a running one (within 5 s).

        A finished job is returned unchanged; the caller sees from its status that it was
        too late. Raises JobNotFound for an unknown id.
        """
        outcome = self._cancel(keys=[self.keys.queue, self.keys.job(job_id)],
                               args=[job_id, repr(time.time()), self.finished_ttl_secs])
        if not outcome:
            raise JobNotFound(job_id)
        # Its own record only: reading every queued job's position would make clearing a
        # long queue quadratic.
        job = self.record(job_id)
        if job is None:  # expired between the two calls
            raise JobNotFound(job_id)
        return job

    def queued_count(self) -> int:
        return self.redis.llen(self.keys.queue)

    def health(self, now: float | None = None) -> dict:
        """The scheduler's workers as their heartbeats describe them, and the queue's length."""
        worker_ids = sorted(w.decode() for w in self.redis.smembers(self.keys.workers))
        pipe = self.redis.pipeline(transaction=False)
        for wid in worker_ids:
            pipe.hgetall(self.keys.worker(wid))
            pipe.exists(self.keys.alive(wid))
            pipe.hget(self.keys.speed, wid)
        pipe.llen(self.keys.queue)
        replies = pipe.execute()
        now = time.time() if now is None else now
        workers = []
        for i, wid in enumerate(worker_ids):
            info = {k.decode(): v.decode() for k, v in replies[3 * i].items()}
            heartbeat = _float_or_none(info.get("heartbeat"))
            speed = replies[3 * i + 2]
            workers.append({
                "id": wid,
                "alive": bool(replies[3 * i + 1]),
                "backend_url": info.get("backend_url"),
                "backend_status": info.get("backend_status"),
                "backend_error": info.get("backend_error") or None,
                "model": info.get("model") or None,
                "job_id": info.get("job_id") or None,
                "heartbeat_age_secs": None if heartbeat is None else round(now - heartbeat, 2),
                "secs_per_image": None if speed is None else round(float(speed), 3),
            })
        return {"workers": workers, "alive_workers": sum(w["alive"] for w in workers),
                "queued": replies[-1]}


def _estimate(running: list[tuple[Job, str]], queued: list[Job], alive_workers: list[str],
              speeds: dict[str, float], now: float) -> None:
    """Set position and ETA: each queued job goes, in order, to the worker free soonest.

    A worker's speed is its measured seconds per image; one not yet measured borrows the
    average of the others. With no measurement at all, ETAs stay None.
    """
    average = sum(speeds.values()) / len(speeds) if speeds else None
    free_at: dict[str, float] = {wid: now for wid in alive_workers}
    for job, wid in running:
        job.position = 0
        speed = speeds.get(wid, average)
        if speed is None:
            continue
        elapsed = now - (job.started_at or now)
        remaining = max(0.0, speed * job.num_images - elapsed)
        job.eta_secs = remaining
        if wid in free_at:
            free_at[wid] = now + remaining
    for position, job in enumerate(queued, start=1):
        job.position = position
        if not free_at or average is None:
            continue
        # The worker free soonest takes it, as the real workers do; a tie goes to the faster.
        wid = min(free_at, key=lambda w: (free_at[w], speeds.get(w, average)))
        free_at[wid] += speeds.get(wid, average) * job.num_images
        job.eta_secs = free_at[wid] - now
