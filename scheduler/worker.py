"""One worker: feeds one slot of a backend, one job at a time, from the shared FIFO queue."""
from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
import uuid

import redis

from playground import grid as grids
from playground import pictures
from playground.backend_registry import BackendRegistry
from playground.library import LibraryStore, job_entry
from playground.limits import IMAGE_TOKENS
from playground.protocol import BackendStatus, Event, event_kind
from playground.protocol.upscale import upscale_body
from playground.queue import DONE, Job
from playground.queue.eta import speed_sample
from playground.queue.job import UPSCALE_KIND, queued_job, upscale_request
from scheduler.backend_client import (
    BackendClient,
    BackendLost,
    BackendRejected,
    BackendUnavailable,
)
from scheduler.config import Config
from scheduler.worker_queue import WorkerQueue

log = logging.getLogger(__name__)

# How long an idle worker blocks in BLMOVE before it looks at its backend and the stop flag
# again; a pushed job wakes it at once, so this bounds only shutdown and health checks.
CLAIM_TIMEOUT_SECS = 1.0
HEALTH_RECHECK_SECS = 2.0
LOADING_POLL_SECS = 1.0
SWEEP_EVERY_HEARTBEATS = 2
# A preview picture is a small JPEG (about 3 kB at 128 pixels); a bigger one is not stored.
MAX_PREVIEW_BYTES = 64 * 1024
# A job that keeps its previews (for its reveal) holds them in memory until it ends: bounded.
MAX_KEPT_PREVIEWS = 64


def worker_id_for(backend_url: str, slot: int = 0) -> str:
    """A stable id per slot of a backend, so a restarted scheduler takes back its own worker's
    job; the first slot's is the backend's address."""
    address = backend_url.split("://", 1)[-1].rstrip("/")
    return f"{address}#{slot + 1}" if slot else address


class Worker:
    """Serves one slot of a backend until its own `stop` event is set (by the scheduler on
    SIGTERM, by itself when another scheduler has taken over this backend, or when the backend
    no longer has its slot). The first slot's worker tells the scheduler, through `on_slots`,
    how many slots the backend has."""

    def __init__(self, config: Config, backend_url: str, redis_client: redis.Redis,
                 library: LibraryStore, stop: threading.Event, registry: BackendRegistry | None = None,
                 slot: int = 0, on_slots=None):
        self.config = config
        self.backend_url = backend_url
        self.slot = slot
        self._on_slots = on_slots
        self.queue = WorkerQueue(redis_client, worker_id_for(backend_url, slot), backend_url,
                                 prefix=config.redis_prefix, max_attempts=config.max_attempts,
                                 heartbeat_ttl_secs=config.heartbeat_ttl_secs)
        self.backend = BackendClient(backend_url, stall_timeout_secs=config.stall_timeout_secs)
        self.library = library
        self.stop = stop
        # Set for a backend that announces itself: served only while its announcement lives.
        self.registry = registry
        # What the heartbeat publishes; written by the worker thread only.
        self.backend_status: str = BackendStatus.UNKNOWN
        self.image_codes: int | None = None  # the served model's codebook: the top-k limit
        self.backend_error: str | None = None
        self.backend_loading: dict | None = None  # stage and downloads while the model loads
        self.ranks: bool | None = None  # whether the ready backend ranks Best of N with CLIP
        self.upscale_model: str | None = None  # the ready backend's upscaler (None: none)
        self.grid_cells_max: int | None = None  # the most cells of a grid the ready backend makes
        self.slots: int | None = None  # the ready backend's slots (whether it decodes a grid's cells together)
        self.model: str | None = None
        self._ready_checked_at = 0.0
        self._kept_previews: list[list[bytes]] = []  # the running job's, when it keeps them

    @property
    def worker_id(self) -> str:
        return self.queue.worker_id

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Claim and run jobs until `stop` is set. Survives Redis and backend outages."""
        heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat {self.worker_id}", daemon=True)
        try:
            self._register()
            heartbeat.start()
            interrupted = False
            while not self.stop.is_set():
                try:
                    if interrupted:
                        # A job cut short by the error below is still in our processing list.
                        self.queue.recover(self.worker_id, reason="the worker lost Redis during the job")
                        interrupted = False
                    if not self._wait_for_backend() or self._announcement_expired():
                        break
                    job = self.queue.claim(timeout=CLAIM_TIMEOUT_SECS, model=self.model)
                    if job is not None:
                        self.run_job(job)
                except redis.RedisError as exc:
                    log.warning("worker %s: Redis error, retrying: %s", self.worker_id, exc)
                    interrupted = True
                    self.stop.wait(self.config.backoff_max_secs)
                except Exception:
                    # A bug must not silence a worker whose heartbeat would still say alive.
                    log.exception("worker %s: unexpected error; carrying on", self.worker_id)
                    interrupted = True
                    self.stop.wait(self.config.backoff_max_secs)
        finally:
            # The heartbeat ends with the worker (one let go by its backend ends on its own):
            # else it would keep this identity alive after the unregistering.
            self.stop.set()
            if heartbeat.is_alive():
                heartbeat.join(timeout=self.config.heartbeat_ttl_secs)
            self._unregister()
            self.backend.close()

    def _announcement_expired(self) -> bool:
        if self.registry is None or self.registry.is_live(self.backend_url):
            return False
        log.warning("worker %s: backend %s stopped announcing itself; letting it go", self.worker_id,
                    self.backend_url)
        return True

    def _register(self) -> None:
        """Take our identity; while another live scheduler holds it, wait for it to go away."""
        delay = self.config.backoff_min_secs
        while not self.stop.is_set():
            try:
                if self.queue.register():
                    log.info("worker %s serving %s", self.worker_id, self.backend_url)
                    return
                log.warning("worker %s: another live scheduler serves %s; waiting", self.worker_id, self.backend_url)
            except redis.RedisError as exc:
                log.warning("worker %s: cannot reach Redis: %s", self.worker_id, exc)
            self.stop.wait(delay)
            delay = min(delay * 2, self.config.backoff_max_secs)

    def _unregister(self) -> None:
        try:
            self.queue.unregister()
        except redis.RedisError as exc:
            log.warning("worker %s: could not unregister: %s", self.worker_id, exc)

    def _heartbeat_loop(self) -> None:
        beats = 0
        while not self.stop.wait(self.config.heartbeat_interval_secs if beats else 0):
            try:
                if not self.queue.heartbeat(self.backend_status, self.model, self.backend_error, self.image_codes,
                                            loading=self.backend_loading, ranks=self.ranks,
                                            upscale_model=self.upscale_model,
                                            grid_cells_max=self.grid_cells_max, slots=self.slots):
                    log.error("worker %s: another scheduler took over this backend; stopping", self.worker_id)
                    self.stop.set()
                    return
                if beats % SWEEP_EVERY_HEARTBEATS == 0:
                    for job_id, status in self.queue.sweep_dead_workers():
                        log.warning("recovered job %s from a dead worker: now %s", job_id, status)
                    staged = self.library.recover_staged(self.queue.staged_outcome)
                    if any(staged.values()):
                        log.warning("library results a crash left half-written: %(kept)d kept, "
                                    "%(undone)d undone", staged)
            except (redis.RedisError, OSError) as exc:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
            beats += 1

    def _wait_for_backend(self) -> bool:
        """Block (with back-off) until the backend is ready and idle; False if stopping."""
        if self._ready_checked_at and time.monotonic() - self._ready_checked_at < HEALTH_RECHECK_SECS:
            return True
        self._ready_checked_at = 0.0
        delay = self.config.backoff_min_secs
        while not self.stop.is_set():
            health = self.backend.health()
            # Published as the backend says it: ready, loading, error (or unreachable).
            status = health.status
            self.model = health.model or self.model
            self.image_codes = health.image_codes or self.image_codes
            self.backend_error = health.error
            self.backend_loading = health.loading
            self.ranks = health.ranks
            self.upscale_model = health.upscale_model
            self.grid_cells_max = health.grid_cells_max
            self.slots = health.slots
            if status != self.backend_status:
                log.info("worker %s: backend %s is %s%s", self.worker_id, self.backend_url, status,
                         f" ({self.backend_error})" if self.backend_error else "")
            self.backend_status = status
            if status == BackendStatus.READY:
                if self.slot >= health.slots:
                    log.warning("worker %s: backend %s now has %d slot(s); letting this one go", self.worker_id,
                                self.backend_url, health.slots)
                    return False
                if self._on_slots is not None:
                    self._on_slots(health.slots)
            # A busy backend is still finishing a job we hung up on (or someone else's).
            if health.idle:
                self._ready_checked_at = time.monotonic()
                return True
            if self._announcement_expired():
                return False
            self.stop.wait(delay)
            # A loading backend is asked often, so the UI's download progress stays fresh.
            delay = min(delay * 2, LOADING_POLL_SECS if status == BackendStatus.LOADING
                        else self.config.backoff_max_secs)
        return False

    # -- one job ---------------------------------------------------------------------------

    def run_job(self, job: Job) -> None:
        """Run a claimed job on the backend and record how it ended."""
        started = time.monotonic()
        self._kept_previews = []
        log.info("job %s (attempt %d, claim %d) -> %s", job.id, job.attempts, job.claim, self.backend_url)
        try:
            with self._start(job) as stream:
                self._follow(job, stream, started)
        except BackendUnavailable as exc:
            # It never started, or its backend handed it back on a planned stop: not an attempt.
            self._ready_checked_at = 0.0
            if not self.queue.put_back(job, str(exc), count_attempt=False):
                _lost(job, "put-back")
        except (BackendRejected, pictures.BadStart) as exc:  # retrying cannot help
            self._ended(job, self.queue.finish_failed(job, str(exc)))
        except BackendLost as exc:
            self._ready_checked_at = 0.0
            status = self.queue.put_back(job, f"backend {self.backend_url}: {exc}")
            log.warning("job %s: backend %s lost (%s); job is now %s", job.id, self.backend_url, exc,
                        status or "another worker's")
        except _ClaimLost:
            # Hanging up (leaving the `with`) has stopped the backend's run of this attempt.
            _lost(job, "run")
        except _Stopping:
            if not self.queue.put_back(job, "the scheduler stopped during the job", count_attempt=False):
                _lost(job, "put-back")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            # A broken answer or a library write that failed: count it, retry, fail after the last.
            log.exception("job %s failed in the worker", job.id)
            if not self.queue.put_back(job, f"worker error: {exc!r}"):
                _lost(job, "put-back")

    def _start(self, job: Job):
        """The backend's stream of the job: a generation, or an upscale of its library picture."""
        if job.kind != UPSCALE_KIND:
            return self.backend.generate(job.params())
        picture = self.library.published_picture(job.upscale_of, self.queue.staged_outcome)
        if picture is None:
            raise pictures.BadStart(f"the picture {job.upscale_of} is no longer in the library")
        return self.backend.upscale(upscale_body(job.attempt_id, job.upscale_of, picture, job.upscale_model))

    def _follow(self, job: Job, stream, started: float) -> None:
        cancelling = False
        last_write = 0.0
        for event in stream:
            kind = event_kind(event)
            if kind in (Event.STARTED, Event.PROGRESS):
                if self.stop.is_set() and not cancelling:
                    self.backend.cancel(job.attempt_id)
                    raise _Stopping()
                now = time.monotonic()
                if kind == Event.STARTED or now - last_write >= self.config.progress_interval_secs:
                    last_write = now
                    outcome = self.queue.progress(
                        job, int(event.get("tokens_done", 0)), int(event.get("total_tokens", IMAGE_TOKENS)),
                        seed=event.get("seed") if kind == Event.STARTED else None)
                    if outcome == "lost":
                        raise _ClaimLost()
                    if outcome == "cancel" and not cancelling:
                        # Keep reading until the backend confirms, so it is free for the next job.
                        cancelling = True
                        if not self.backend.cancel(job.attempt_id):
                            stream.close()
                            self._ended(job, self.queue.finish_cancelled(job))
                            return
            elif kind == Event.PREVIEW:
                if not cancelling:
                    self._preview(job, event)
            elif kind == Event.DONE:
                if cancelling:
                    self._ended(job, self.queue.finish_cancelled(job))  # too late to stop: discard the images
                else:
                    self._store(job, event, time.monotonic() - started)
                return
            elif kind == Event.CANCELLED:
                if cancelling or self.queue.cancel_requested(job.id):
                    self._ended(job, self.queue.finish_cancelled(job))
                else:
                    raise BackendLost("the backend cancelled the job on its own")
                return
            elif kind == Event.ERROR:
                self._ended(job, self.queue.finish_failed(job, f"backend error: {event.get('error') or 'unknown'}"))
                return

    def _preview(self, job: Job, event: dict) -> None:
        """Keep the newest preview in Redis (fenced by the claim, as progress). A malformed or
        oversized one is skipped: a preview never fails a job."""
        try:
            tokens = int(event["tokens_done"])
            images = [base64.b64decode(data, validate=True) for data in event["images"]]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            log.warning("job %s: skipped a malformed preview: %r", job.id, exc)
            return
        if not 0 < len(images) <= job.num_images or max(map(len, images)) > MAX_PREVIEW_BYTES:
            log.warning("job %s: skipped a preview of %d pictures, the largest %d bytes", job.id, len(images),
                        max(map(len, images), default=0))
            return
        if self.queue.preview(job, tokens, images) == "lost":
            raise _ClaimLost()
        if job.keep_previews and len(self._kept_previews) < MAX_KEPT_PREVIEWS:
            self._kept_previews.append(images)

    @staticmethod
    def _ended(job: Job, outcome: tuple[str, float] | None) -> None:
        if outcome is None:
            _lost(job, "outcome")

    def _store(self, job: Job, event: dict, process_time_secs: float) -> None:
        images = [base64.b64decode(data, validate=True) for data in event["images"]]
        # Named now, so the staged entry lists the upscale jobs its commit queues.
        upscale_jobs = [str(uuid.uuid4()) for _ in images] if job.upscale else []
        entry = job_entry(job, event, len(images), self.model, self.backend_url, process_time_secs, upscale_jobs)
        codes = [str(c) for c in event.get("codes") or []]
        extended: list[bytes] = []
        if job.extend:
            start = self.library.start_picture(job)
            if start is not None:  # else deleted from the library since: the new tiles are stored alone
                grid = (event.get("start") or {}).get("codes") or []
                extended = pictures.taller_pictures(start, grid, images, codes, job.keep_rows)
        fields = {"seed": entry["seed"], "model": entry["model"] or "", "codes": codes,
                  "process_time_secs": entry["process_time_secs"]}
        if event.get("candidate_indices") is not None:
            fields["best_of"] = {name: event.get(name) for name in ("ranked", "candidate_indices", "clip_scores")}
        reveals = []
        if job.keep_previews:
            try:
                reveals = pictures.reveals(self._kept_previews, images)
            except Exception as exc:  # a preview that was no picture (or a decompression bomb): the images count, not it
                log.warning("job %s: no reveal: %r", job.id, exc)
        sheet = None
        if job.grid is not None:  # the cells' pictures tiled, labelled with the values
            sheet = grids.sheet_png(grids.parse_grid(job.grid), images, job.text)
        if self.library.add_job(entry, images, extended, attempt=_LibraryAttempt(self.queue, job, fields, upscale_jobs),
                                reveals=reveals, sheet=sheet) is None:
            _lost(job, "images (or the job was cancelled at the last moment)")
            return
        # With the pictures it drew: a Best-of job made its candidates, not only the images it kept.
        # An upscale's time says nothing of a generation's: it has its own (the ETAs' fit).
        if job.kind == UPSCALE_KIND:
            self.queue.record_job_time(1, process_time_secs, upscale=True)
        else:
            self.queue.record_job_time(*speed_sample(job, job.candidates or len(images), process_time_secs,
                                                     grids.cells_together(self.slots or 1)))
        log.info("job %s done in %.2f s", job.id, process_time_secs)


class _LibraryAttempt:
    """This worker's claim of a job, which fences the library's write of its result; its commit
    also queues the upscales of its pictures (`upscale_jobs`, their ids, in picture order), each
    as POST /upscale queues one, so they are queued exactly when the result is."""

    def __init__(self, queue: WorkerQueue, job: Job, fields: dict, upscale_jobs: list[str] = ()):
        self.queue, self.job, self.fields, self.upscale_jobs = queue, job, fields, upscale_jobs
        self.token = str(job.claim)

    def commit(self, urls: list[str]) -> float | None:
        upscales = [queued_job(Job.from_request(job_id, upscale_request(url, self.job.text)))
                    for job_id, url in zip(self.upscale_jobs, urls)]
        outcome = self.queue.finish_done(self.job, images=urls, then_queue=upscales, **self.fields)
        # Else lost, or cancelled at the last moment.
        return outcome[1] if outcome is not None and outcome[0] == DONE else None


def _lost(job: Job, what: str) -> None:
    log.warning("job %s: claim %d was taken over by another worker meanwhile; dropped this worker's late %s",
                job.id, job.claim, what)


class _Stopping(Exception):
    """The scheduler is stopping: the running job goes back to the queue."""


class _ClaimLost(Exception):
    """Redis refused a change: another worker has taken the job over."""
