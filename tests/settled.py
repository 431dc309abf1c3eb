"""Waiting for a job's end as the library sees it: a job is done in Redis at its commit, and
its pictures reach the library a moment later (LibraryStore.add_job), so a test that reads the
library after a job ends waits for both."""
from __future__ import annotations

from pathlib import Path

from playground.library import LibraryStore
from playground.queue import DONE, Job, JobQueue


def ended(queue: JobQueue, library_dir: Path, job_id: str) -> Job | None:
    """The job once it has ended and, if done, its result is published; else None."""
    job = queue.get(job_id)
    if job is None or not job.finished:
        return None
    if job.status == DONE and LibraryStore(library_dir).publishing(job.id, str(job.claim)):
        return None
    return job
