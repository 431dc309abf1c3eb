"""`upscale` on POST /prompt: the commit of the job's result queues one upscale job per picture
(docs/upscaler.md). With real Redis and a real library: the upscales are queued in the same
Redis step that records the job done, so exactly once whatever happens around it — a commit
refused (the claim taken over, a cancel), a commit tried again, a crash between the commit and
the library's publish."""
from __future__ import annotations

import pytest
import redis

from playground.library import LibraryStore, job_entry
from playground.queue import CANCELLED, DONE, JobQueue
from scheduler.worker import _LibraryAttempt
from scheduler.worker_queue import WorkerQueue
from testkit.standin_backend import solid_png

PNG = solid_png()
PROMPT = {"text": "a red circle", "num_images": 2, "seed": 1, "upscale": 4}
FIELDS = {"seed": 1, "model": "tiny", "codes": [], "process_time_secs": 1.0}
UPSCALE_IDS = ["00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"]


@pytest.fixture
def world(redis_client, tmp_path):
    queue = JobQueue(redis_client)
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    assert worker.register()
    return queue, worker, LibraryStore(tmp_path / "library")


def store(library: LibraryStore, worker: WorkerQueue, job, attempt_class=_LibraryAttempt) -> dict | None:
    entry = job_entry(job, {}, 2, "tiny", worker.backend_url, 1.0, UPSCALE_IDS)
    return library.add_job(entry, [PNG, PNG], attempt=attempt_class(worker, job, FIELDS, UPSCALE_IDS))


def upscales(queue: JobQueue) -> list:
    return [job for job in queue.unfinished() if job.kind == "upscale"]


def test_the_commit_queues_an_upscale_of_each_picture_in_order(world):
    queue, worker, library = world
    queue.submit(PROMPT)
    job = worker.claim(timeout=1)
    assert job.upscale == 4
    entry = store(library, worker, job)
    assert entry["upscale_jobs"] == UPSCALE_IDS and entry["upscale"] == 4
    queued = upscales(queue)
    assert [(j.id, j.upscale_of, j.text, j.num_images, j.upscale_model) for j in queued] == \
        [(job_id, path, PROMPT["text"], 1, None) for job_id, path in zip(UPSCALE_IDS, entry["generated_images"])]
    assert [j.position for j in queued] == [1, 2]  # picture order, as two POST /upscale one after the other
    assert queue.get(job.id).status == DONE
    assert [e["upscale_jobs"] for e in library.entries() if e["queue_id"] == job.id] == [UPSCALE_IDS]
    # A commit tried again (its answer lost, say) is refused: nothing is queued twice.
    assert _LibraryAttempt(worker, job, FIELDS, UPSCALE_IDS).commit(entry["generated_images"]) is None
    assert [j.id for j in upscales(queue)] == UPSCALE_IDS


def test_a_refused_commit_queues_nothing(world):
    queue, worker, library = world
    queue.submit(PROMPT)
    job = worker.claim(timeout=1)
    assert worker.put_back(job, "taken over") == "queued"  # the claim is no longer this attempt's
    assert store(library, worker, job) is None
    assert upscales(queue) == []
    again = worker.claim(timeout=1)
    queue.cancel(again.id)  # asked at the last moment: it ends cancelled, its pictures dropped
    assert store(library, worker, again) is None
    assert queue.get(again.id).status == CANCELLED
    assert upscales(queue) == []


def test_a_crash_between_commit_and_publish_leaves_the_upscales_their_pictures(world):
    """The commit went through (its answer lost): the upscale jobs are queued while their pictures
    are still staged; the upscale's worker finishes the publish when it reads its picture."""
    queue, worker, library = world
    queue.submit(PROMPT)
    job = worker.claim(timeout=1)

    class AnswerLost(_LibraryAttempt):
        def commit(self, urls):
            super().commit(urls)
            raise redis.ConnectionError("the answer was lost")

    with pytest.raises(redis.ConnectionError):
        store(library, worker, job, AnswerLost)
    first = upscales(queue)[0]
    assert library.picture(first.upscale_of) is None  # staged, not yet published
    assert library.published_picture(first.upscale_of, worker.staged_outcome) == PNG
