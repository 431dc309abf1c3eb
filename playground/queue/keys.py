"""Where the job queue lives in Redis: the key names shared by the frontend and the scheduler.

    <prefix>:queue:<model>         list of the queued job ids for one model, head = next (FIFO)
    <prefix>:queue                 the same for jobs naming no model (any backend takes them)
    <prefix>:models                set of the models that have a queue
    <prefix>:job:<id>              hash: parameters, status, timestamps, attempts, progress
    <prefix>:workers               set of worker ids (one per slot of each backend)
    <prefix>:worker:<wid>          hash: backend_url, backend_status, model, slots, job_id, heartbeat
    <prefix>:worker:<wid>:alive    string with a TTL, renewed by the worker's heartbeat
    <prefix>:processing:<wid>      list holding the job the worker is running (0 or 1 id)
    <prefix>:preview:<id>          hash, only while the job runs (with a TTL as a safety net):
                                   tokens_done and "0", "1", … the newest preview JPEG of each image
    <prefix>:speed                 hash: worker id -> its last jobs' [pictures, seconds] (JSON; eta.py)
    <prefix>:upscale_speed         the same for its last upscale jobs ([1, seconds]: an upscale's time
                                   says nothing of a generation's)
    <prefix>:backends              set of the URLs of backends that announce themselves
    <prefix>:backend:<url>         string with a TTL: that backend's announcement (JSON: url, status, model)
    <prefix>:upscaling             a lock (redis-py's, with a TTL) held while POST /upscale checks that
                                   its picture has no upscale yet and queues one

A prefix lets several playgrounds share one Redis server.
"""
from __future__ import annotations

DEFAULT_PREFIX = "dalle"
# How long a finished job's hash is kept (the library keeps its result for good).
DEFAULT_FINISHED_TTL_SECS = 7 * 24 * 3600
# A running job's preview is deleted when the job ends; the TTL (renewed by every preview)
# only cleans up after a scheduler that died in the middle.
PREVIEW_TTL_SECS = 300


class Keys:
    """Names of the Redis keys shared by the frontend and the scheduler."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix
        self.queue = f"{prefix}:queue"
        self.workers = f"{prefix}:workers"
        self.speed = f"{prefix}:speed"
        self.upscale_speed = f"{prefix}:upscale_speed"
        self.models = f"{prefix}:models"
        self.backends = f"{prefix}:backends"
        self.upscaling = f"{prefix}:upscaling"

    def queue_of(self, model: str | None) -> str:
        """The queue of a model's jobs; "" or None: of the jobs that name no model."""
        return f"{self.prefix}:queue:{model}" if model else self.queue

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def alive(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:alive"

    def processing(self, worker_id: str) -> str:
        return f"{self.prefix}:processing:{worker_id}"

    def preview(self, job_id: str) -> str:
        return f"{self.prefix}:preview:{job_id}"

    def backend(self, url: str) -> str:
        return f"{self.prefix}:backend:{url}"
