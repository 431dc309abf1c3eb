"""The job queue in Redis: the one contract between the frontend and the scheduler.

    states.py     the statuses and the moves between them
    keys.py       the Redis key layout
    job.py        a job's fields and their encoding in its Redis hash
    scripts.py    every Lua script of both sides
    job_queue.py  the frontend's side: submit, look up, list, cancel, health
    eta.py        positions and ETAs of unfinished jobs

The scheduler's side is `scheduler.worker_queue`, built on the same scripts and keys.
"""
from playground.queue.job import UUID_PATTERN, Job, encode_job_fields
from playground.queue.job_queue import DEFAULT_MAX_QUEUED, JobNotFound, JobQueue, QueueFull
from playground.queue.keys import DEFAULT_FINISHED_TTL_SECS, DEFAULT_PREFIX, PREVIEW_TTL_SECS, Keys
from playground.queue.states import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING

__all__ = [
    "CANCELLED", "DEFAULT_FINISHED_TTL_SECS", "DEFAULT_MAX_QUEUED", "DEFAULT_PREFIX", "DONE",
    "FAILED", "FINISHED", "Job", "JobNotFound", "JobQueue", "Keys", "PREVIEW_TTL_SECS", "QUEUED", "QueueFull",
    "RUNNING", "UUID_PATTERN", "encode_job_fields",
]
