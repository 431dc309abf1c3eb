"""A worker's side of the Redis job queue: claim the next job, report progress, finish it,
put it back, and recover the job of a worker that died.

A claimed job moves atomically (one script) from the queue into the worker's own processing
list, where it is marked running, so it is always in exactly one list until it finishes. A worker proves it is alive
with a key that expires unless its heartbeat renews it; a worker whose key has expired
gets its job put back at the front of the queue by whoever notices first (its own
successor at start, or any other worker's periodic sweep). Key layout, statuses and the
Lua scripts: `playground.queue`.
"""
from __future__ import annotations

import json
import os
import socket
import uuid

import redis

from playground.library import COMMITTED, LOST, PENDING
from playground.queue import (
    CANCELLED,
    DEFAULT_FINISHED_TTL_SECS,
    DEFAULT_PREFIX,
    DONE,
    FAILED,
    PREVIEW_TTL_SECS,
    RUNNING,
    Job,
    Keys,
    scripts,
)
from playground.queue.eta import SPEED_SAMPLES, job_times

MAX_ATTEMPTS = 3
HEARTBEAT_TTL_SECS = 6


def process_owner() -> str:
    """Who holds a worker identity: host, pid, and a random part that tells restarts apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


def owner_is_dead(holder: str, me: str) -> bool:
    """True when `holder` is provably a dead process on this host (e.g. a scheduler killed
    with -9 that we replace), so its identity can be taken without waiting for its TTL."""
    try:
        host, pid, _ = holder.split(":")
        my_host, my_pid, _ = me.split(":")
        pid = int(pid)
    except ValueError:
        return False
    if host != my_host:
        return False
    if pid == int(my_pid):  # our pid, another owner: a restarted container reusing pid 1
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class WorkerQueue:
    """The queue operations of the worker serving one backend."""

    def __init__(self, redis_client: redis.Redis, worker_id: str, backend_url: str,
                 prefix: str = DEFAULT_PREFIX, max_attempts: int = MAX_ATTEMPTS,
                 heartbeat_ttl_secs: int = HEARTBEAT_TTL_SECS,
                 finished_ttl_secs: int = DEFAULT_FINISHED_TTL_SECS, owner: str | None = None):
        self.redis = redis_client
        self.worker_id = worker_id
        self.backend_url = backend_url
        self.keys = Keys(prefix)
        self.max_attempts = max_attempts
        self.heartbeat_ttl_secs = heartbeat_ttl_secs
        self.finished_ttl_secs = finished_ttl_secs
        self.owner = owner or process_owner()
        self.processing = self.keys.processing(worker_id)
        self.worker_key = self.keys.worker(worker_id)
        self._claim = redis_client.register_script(scripts.CLAIM)
        self._progress = redis_client.register_script(scripts.PROGRESS)
        self._preview = redis_client.register_script(scripts.PREVIEW)
        self._finish = redis_client.register_script(scripts.FINISH)
        self._put_back = redis_client.register_script(scripts.PUT_BACK)
        self._take_identity = redis_client.register_script(scripts.TAKE_IDENTITY)
        self._record_job_time = redis_client.register_script(scripts.RECORD_JOB_TIME)
        self._unregister = redis_client.register_script(scripts.UNREGISTER)

    # -- identity and heartbeat ------------------------------------------------------------

    def register(self) -> bool:
        """Take this worker's identity and put back any job a dead predecessor left running.

        False when another live process holds it (two schedulers configured for one backend).
        """
        holder = self.redis.get(self.keys.alive(self.worker_id))
        predecessor = holder.decode() if holder and owner_is_dead(holder.decode(), self.owner) else ""
        taken_at = self._take_identity(keys=[self.keys.alive(self.worker_id)],
                                       args=[self.owner, self.heartbeat_ttl_secs, predecessor])
        if not taken_at:
            return False
        self.redis.sadd(self.keys.workers, self.worker_id)
        self.redis.hset(self.worker_key, mapping={"backend_url": self.backend_url, "job_id": "",
                                                  "heartbeat": taken_at})
        self.recover(self.worker_id, reason="the scheduler worker was restarted during the job")
        return True

    def heartbeat(self, backend_status: str, model: str | None = None,
                  backend_error: str | None = None, image_codes: int | None = None,
                  loading: dict | None = None, ranks: bool | None = None,
                  upscale_model: str | None = None, grid_cells_max: int | None = None,
                  slots: int | None = None) -> bool:
        """Renew the alive key and publish the backend's state; False if the identity was lost.

        `loading`: while the backend loads, what it is doing ({"stage", "files"}), for the UI.
        `ranks`: whether the backend ranks Best of N candidates with CLIP (None: not known).
        `upscale_model`: the upscaler it runs upscale jobs with (None: none, or not known).
        `grid_cells_max`: the most cells of a grid sweep it makes (None: none, or not known).
        `slots`: the jobs it decodes together (None: not known), for the ETAs of grid sweeps.
        """
        beat_at = self._take_identity(keys=[self.keys.alive(self.worker_id)],
                                      args=[self.owner, self.heartbeat_ttl_secs, ""])
        if not beat_at:
            return False
        self.redis.hset(self.worker_key, mapping={
            "backend_url": self.backend_url, "backend_status": backend_status, "model": model or "",
            "backend_error": backend_error or "", "image_codes": image_codes or "",
            "backend_loading": json.dumps(loading, separators=(",", ":")) if loading else "",
            "ranks": "" if ranks is None else "1" if ranks else "0",
            "upscale_model": upscale_model or "", "grid_cells_max": grid_cells_max or "", "slots": slots or "",
            "heartbeat": beat_at})
        return True

    def unregister(self) -> None:
        """A clean stop: the worker disappears from health (its job must be put back first).
        Nothing is touched if another process has taken over this identity."""
        self._unregister(keys=[self.keys.alive(self.worker_id), self.keys.workers, self.worker_key],
                         args=[self.owner, self.worker_id])

    # -- the job's life --------------------------------------------------------------------

    def claim(self, timeout: float, model: str | None = None) -> Job | None:
        """Wait up to `timeout` seconds for the next job of `model` (or one naming no model,
        taken first: queued before any backend said which it serves) and mark it running.

        An idle worker blocks on its queue with a BLMOVE of the queue onto itself (it moves
        nothing; it returns the moment a job is pushed), then claims in one script. None when
        nothing came, or another worker was quicker.
        """
        queues = [self.keys.queue, self.keys.queue_of(model)] if model else [self.keys.queue]
        job = self._claim_first(queues)
        if job is None and self.redis.blmove(queues[-1], queues[-1], timeout, "LEFT", "LEFT") is not None:
            job = self._claim_first(queues)
        return job

    def _claim_first(self, queues: list[str]) -> Job | None:
        flat = self._claim(keys=[self.processing, self.worker_key],
                           args=[self.worker_id, self.backend_url, self.keys.prefix, *queues])
        return Job.from_hash(dict(zip(flat[0::2], flat[1::2]))) if flat else None

    # Every change below names the claim the job was taken under (`job.claim`); Redis refuses
    # it once the job has been taken over (put back by a sweep, claimed again), so a worker
    # that was paused or cut off can never change, finish or duplicate it.

    def progress(self, job: Job, tokens_done: int, total_tokens: int, seed: int | None = None) -> str:
        """Store progress: "ok", "cancel" when a cancel was asked for, "lost" when the claim
        is no longer the job's (one round trip)."""
        fields = {"tokens_done": tokens_done, "total_tokens": total_tokens}
        if seed is not None:
            fields["seed"] = seed
        flat = [str(item) for pair in fields.items() for item in pair]
        outcome = self._progress(keys=[self.processing, self.keys.job(job.id)], args=[job.claim, *flat])
        return {1: "cancel", 0: "ok"}.get(outcome, "lost")

    def preview(self, job: Job, tokens_done: int, images: list[bytes]) -> str:
        """Replace the job's preview (one picture per image) with this one: "ok", "cancel" or
        "lost", as `progress`."""
        outcome = self._preview(keys=[self.processing, self.keys.job(job.id), self.keys.preview(job.id)],
                                args=[job.claim, PREVIEW_TTL_SECS, tokens_done, *images])
        return {1: "cancel", 0: "ok"}.get(outcome, "lost")

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.keys.job(job_id), "cancel_requested") == b"1"

    def finish_done(self, job: Job, seed: int, model: str, images: list[str],
                    process_time_secs: float, codes: list[str] = (), best_of: dict | None = None,
                    then_queue: list[dict] = ()) -> tuple[str, float] | None:
        """Mark the job done (or cancelled, if that was asked meanwhile); returns the status
        recorded and Redis's time of it, or None when the claim was lost. `best_of`: the
        backend's ranked, candidate_indices and clip_scores. `then_queue`: jobs (job.queued_job)
        queued in the same step when it ends done, and only then."""
        ranking = {}
        if best_of:
            ranking = {"ranked": "1" if best_of.get("ranked") else "0",
                       "candidate_indices": json.dumps(best_of.get("candidate_indices")),
                       "clip_scores": json.dumps(best_of.get("clip_scores")) if best_of.get("clip_scores") else ""}
        return self._finish_as(job, DONE, then_queue, seed=seed, model=model, images=json.dumps(images),
                               codes=json.dumps(list(codes)), process_time_secs=repr(process_time_secs),
                               error="", **ranking)

    def finish_failed(self, job: Job, error: str) -> tuple[str, float] | None:
        return self._finish_as(job, FAILED, error=error)

    def finish_cancelled(self, job: Job) -> tuple[str, float] | None:
        return self._finish_as(job, CANCELLED, error="")

    def _finish_as(self, job: Job, status: str, then_queue: list[dict] = (), **fields) -> tuple[str, float] | None:
        flat = [str(item) for pair in fields.items() for item in pair]
        outcome = self._finish(keys=[self.processing, self.keys.job(job.id), self.worker_key,
                                     self.keys.preview(job.id)],
                               args=[job.id, job.claim, self.finished_ttl_secs, status, self.keys.prefix,
                                     json.dumps(list(then_queue)), *flat])
        if not outcome:
            return None
        recorded, at = outcome.decode().split()
        return recorded, float(at)

    def put_back(self, job: Job, reason: str, count_attempt: bool = True) -> str:
        """Return the job to the front of the queue, in submission order among jobs put back
        (or fail it after its last attempt).

        `count_attempt=False` when the job never really ran or we stopped it ourselves
        (backend busy, scheduler shutting down). Returns the job's new status ('' when the
        claim was lost: the job is someone else's now).
        """
        return self._put_back_from(self.worker_id, job.id, reason, count_attempt, only_if_dead=False,
                                   claim=str(job.claim))

    def _put_back_from(self, worker_id: str, job_id: str, reason: str, count_attempt: bool,
                       only_if_dead: bool, claim: str = "") -> str:
        status = self._put_back(
            keys=[self.keys.processing(worker_id), self.keys.job(job_id), self.keys.preview(job_id),
                  self.keys.worker(worker_id), self.keys.alive(worker_id)],
            args=[job_id, reason, "1" if count_attempt else "0", self.max_attempts,
                  claim, self.finished_ttl_secs, "1" if only_if_dead else "0", self.keys.prefix])
        return status.decode() if isinstance(status, bytes) else status

    # -- recovery --------------------------------------------------------------------------

    def recover(self, worker_id: str, reason: str) -> list[tuple[str, str]]:
        """Put back every job in `worker_id`'s processing list; [(job id, new status)].

        Another worker's jobs are only touched while its alive key is absent.
        """
        recovered = []
        for raw in self.redis.lrange(self.keys.processing(worker_id), 0, -1):
            job_id = raw.decode()
            status = self._put_back_from(worker_id, job_id, reason, count_attempt=True,
                                         only_if_dead=worker_id != self.worker_id)
            if status:
                recovered.append((job_id, status))
        return recovered

    def sweep_dead_workers(self) -> list[tuple[str, str]]:
        """Recover the jobs of other workers whose heartbeat has expired."""
        recovered = []
        for raw in self.redis.smembers(self.keys.workers):
            other = raw.decode()
            if other == self.worker_id or self.redis.exists(self.keys.alive(other)):
                continue
            if self.redis.llen(self.keys.processing(other)):
                recovered += self.recover(other, reason=f"worker {other} stopped responding during the job")
        return recovered

    def staged_outcome(self, job_id: str, token: str) -> tuple[str, float | None]:
        """What became of the library result staged under claim `token` of a job (see
        LibraryStore.recover_staged), with Redis's time of its commit: committed when that
        claim finished it as done, pending while the claim still runs, lost otherwise."""
        status, claim, finished_at = (v.decode() if v else None for v in self.redis.hmget(
            self.keys.job(job_id), "status", "claim", "finished_at"))
        if claim != token:
            return LOST, None
        if status == DONE:
            return COMMITTED, float(finished_at)
        return (PENDING if status == RUNNING else LOST), None

    # -- speed -----------------------------------------------------------------------------

    def record_job_time(self, pictures: int, secs: float, upscale: bool = False) -> list[tuple[int, float]]:
        """Add a finished job to this worker's recent ones (the ETA's cost is fitted to them), an
        upscale to its recent upscales; returns them, oldest first."""
        key = self.keys.upscale_speed if upscale else self.keys.speed
        return job_times(self._record_job_time(keys=[key],
                                               args=[self.worker_id, pictures, repr(secs), SPEED_SAMPLES]))
