"""The job queue as the frontend sees it: submit, look up, list, cancel, health.

The scheduler's side of the same keys (claiming a job, progress, finishing, recovery) is
`scheduler.worker_queue`. Submitting, listing and cancelling are each one round trip (a Lua
script), so POST /prompt and the once-a-second status polls stay cheap.
"""
from __future__ import annotations

import json
import uuid

import redis

from playground.grid import cells_together
from playground.queue import scripts
from playground.queue.eta import JobCost, estimate, job_times
from playground.queue.job import Job, queued_job
from playground.queue.keys import DEFAULT_FINISHED_TTL_SECS, DEFAULT_PREFIX, Keys

DEFAULT_MAX_QUEUED = 1000


class QueueFull(Exception):
    """The queue already holds `max_queued` jobs."""


class JobNotFound(KeyError):
    """No job with this id (never submitted, or finished long enough ago to be forgotten)."""


class JobQueue:
    """Submit, find, list and cancel jobs; read the scheduler's health. Thread-safe."""

    def __init__(self, redis_client: redis.Redis, max_queued: int = DEFAULT_MAX_QUEUED,
                 prefix: str = DEFAULT_PREFIX, finished_ttl_secs: int = DEFAULT_FINISHED_TTL_SECS):
        self.redis = redis_client
        self.max_queued = max_queued
        self.keys = Keys(prefix)
        self.finished_ttl_secs = finished_ttl_secs
        self._submit = redis_client.register_script(scripts.SUBMIT)
        self._unfinished = redis_client.register_script(scripts.UNFINISHED)
        self._cancel = redis_client.register_script(scripts.CANCEL)

    def submit(self, params: dict) -> Job:
        """Queue a validated request (Job.from_request)."""
        job = Job.from_request(str(uuid.uuid4()), params)
        queued = queued_job(job)
        created = self._submit(keys=[self.keys.models, self.keys.job(job.id)],
                               args=[self.max_queued, job.id, self.keys.prefix, queued["model"], *queued["fields"]])
        if not created:
            raise QueueFull(f"the queue is full ({self.max_queued} prompts waiting); try again later")
        created_at, _, model = created.decode().partition(" ")
        job.created_at = float(created_at)  # Redis's clock, as every time of the queue
        job.model = model or None
        return job

    def upscaling(self):
        """The lock on queueing upscales: held from the check that a picture has none to the
        submit, so that clicks at the same moment (from any frontend process) queue one. One lock
        for every picture: upscales are queued by hand, one click at a time. Held for seconds at
        most (its TTL, should the holder die)."""
        return self.redis.lock(self.keys.upscaling, timeout=30, blocking_timeout=30)

    def record(self, job_id: str) -> Job | None:
        """The job's own record without position and ETA: one read, whatever the queue's length."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        return Job.from_hash(raw) if raw else None

    def preview(self, job_id: str, image: int) -> tuple[int, bytes] | None:
        """The newest live preview of image `image` of a running job: (the tokens it shows,
        its JPEG), or None when there is none (not started, finished, no such image)."""
        tokens, picture = self.redis.hmget(self.keys.preview(job_id), "tokens_done", str(image))
        if tokens is None or picture is None:
            return None
        return int(tokens), picture

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

    def unfinished(self) -> list[Job]:
        """Running jobs first, then queued jobs oldest first, each with position and ETA."""
        picture = json.loads(self._unfinished(
            keys=[self.keys.queue, self.keys.workers, self.keys.speed, self.keys.upscale_speed],
            args=[self.keys.prefix]))
        now = picture["now"]
        running: list[tuple[Job, str]] = []
        costs: dict[str, JobCost] = {}
        upscale_costs: dict[str, JobCost] = {}
        models: dict[str, str] = {}  # live worker -> its backend's model
        together: set[str] = set()  # live workers whose backends decode a grid's cells as one batch
        # cjson writes an empty Lua table as {}, hence the `or []`.
        for worker in picture["workers"] or []:
            cost = JobCost.fit(job_times(worker["speed"]))
            if cost is not None:
                costs[worker["id"]] = cost
            upscale_cost = JobCost.fit(job_times(worker["upscale_speed"]))
            if upscale_cost is not None:
                upscale_costs[worker["id"]] = upscale_cost
            if worker["alive"]:
                models[worker["id"]] = worker["model"]
                if cells_together(int(worker["slots"] or 1)):
                    together.add(worker["id"])
            running.extend((Job.from_hash(h), worker["id"]) for h in worker["running"] or [])
        queued: dict[str, list[Job]] = {}
        for h in picture["queued"] or []:
            job = Job.from_hash(h)
            queued.setdefault(job.model or "", []).append(job)
        running.sort(key=lambda item: item[0].started_at or item[0].created_at)
        estimate(running, queued, models, costs, now, together, upscale_costs)
        waiting = sorted((job for jobs in queued.values() for job in jobs), key=lambda job: job.created_at)
        return [job for job, _ in running] + waiting

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask the worker to stop a running one (within 5 s).

        A finished job is returned unchanged; the caller sees from its status that it was
        too late. Raises JobNotFound for an unknown id.
        """
        outcome = self._cancel(keys=[self.keys.queue, self.keys.job(job_id)],
                               args=[job_id, self.finished_ttl_secs, self.keys.prefix])
        if not outcome:
            raise JobNotFound(job_id)
        # Its own record only: reading every queued job's position would make clearing a
        # long queue quadratic.
        job = self.record(job_id)
        if job is None:  # expired between the two calls
            raise JobNotFound(job_id)
        return job

    def queued_count(self) -> int:
        """Jobs waiting in all the queues together."""
        queues = [self.keys.queue] + [self.keys.queue_of(m.decode()) for m in self.redis.smembers(self.keys.models)]
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        return sum(pipe.execute())

    def health(self) -> dict:
        """The scheduler's workers as their heartbeats describe them, and the queue's length."""
        worker_ids = sorted(w.decode() for w in self.redis.smembers(self.keys.workers))
        pipe = self.redis.pipeline(transaction=False)
        for wid in worker_ids:
            pipe.hgetall(self.keys.worker(wid))
            pipe.exists(self.keys.alive(wid))
            pipe.hget(self.keys.speed, wid)
        pipe.time()
        replies = pipe.execute()
        seconds, micros = replies.pop()
        now = seconds + micros / 1e6  # heartbeats carry Redis's time too
        workers = []
        for i, wid in enumerate(worker_ids):
            info = {k.decode(): v.decode() for k, v in replies[3 * i].items()}
            heartbeat = info.get("heartbeat")
            times = job_times(replies[3 * i + 2])
            workers.append({
                "id": wid,
                "alive": bool(replies[3 * i + 1]),
                "backend_url": info.get("backend_url"),
                "backend_status": info.get("backend_status"),
                "backend_error": info.get("backend_error") or None,
                "model": info.get("model") or None,
                "image_codes": int(info["image_codes"]) if info.get("image_codes") else None,
                "loading": _json_or_none(info.get("backend_loading")),
                "ranks": {"1": True, "0": False}.get(info.get("ranks", "")),
                "upscale_model": info.get("upscale_model") or None,
                "grid_cells_max": int(info["grid_cells_max"]) if info.get("grid_cells_max") else None,
                "job_id": info.get("job_id") or None,
                "heartbeat_age_secs": None if not heartbeat else round(now - float(heartbeat), 2),
                # Of its last job, per picture drawn (for the fitted cost: eta.JobCost).
                "secs_per_image": round(times[-1][1] / times[-1][0], 3) if times else None,
            })
        models = sorted({w["model"] for w in workers if w["alive"] and w["model"]})
        return {"workers": workers, "alive_workers": sum(w["alive"] for w in workers),
                "models": models, "queued": self.queued_count()}


def _json_or_none(text: str | None):
    """A JSON field a worker wrote, or None when absent (or unreadable: written by another version)."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
