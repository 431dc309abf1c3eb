"""A backend that runs several jobs at once (its /health says `slots`) gets a scheduler worker
for each slot: jobs start in FIFO order, never more at once than it has slots, and a stopped
scheduler puts every job of its slots back in the order they were submitted. The backend is
the stand-in (a real HTTP server speaking the protocol); the scheduler runs in this process."""
from __future__ import annotations

import time

import pytest

from frontend.api import backend_reports
from playground.queue import JobQueue
from playground.queue.eta import JobCost, job_times
from playground.queue.keys import Keys
from scheduler.config import Config
from scheduler.service import Scheduler
from scheduler.worker import worker_id_for
from scheduler.worker_queue import WorkerQueue
from testkit.standin_backend import StandInBackend

pytestmark = pytest.mark.timeout(120)

SLOTS = 3


def wait_until(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def serving_workers(queue: JobQueue, backend_url: str) -> list[str]:
    return sorted(w["id"] for w in queue.health()["workers"]
                  if w["alive"] and w["backend_url"] == backend_url and w["backend_status"] == "ready")


@pytest.fixture
def backend():
    with StandInBackend(slots=SLOTS, step_secs=0.3) as server:  # a job takes 4 steps: 1.2 s
        yield server


@pytest.fixture
def scheduler(backend, redis_url, tmp_path):
    config = Config(redis_url=redis_url, backend_urls=(backend.url,), library_dir=tmp_path / "library")
    service = Scheduler(config).start()
    yield service
    service.stop()
    assert service.join(timeout=30)


def test_each_slot_gets_a_worker_and_jobs_start_in_fifo_order(backend, scheduler, redis_client):
    queue = JobQueue(redis_client)
    slot_ids = [worker_id_for(backend.url, slot) for slot in range(SLOTS)]
    wait_until(lambda: serving_workers(queue, backend.url) == sorted(slot_ids), what="a worker per slot")
    # /health names the backend once, with its slots.
    [report] = backend_reports(queue.health()["workers"])
    assert report["slots"] == SLOTS and report["worker"] == slot_ids[0] and report["url"] == backend.url

    jobs = [queue.submit({"text": f"job {i}", "num_images": 2, "seed": i + 1}) for i in range(8)]
    finished = wait_until(lambda: all(j.finished for j in (queue.get(job.id) for job in jobs))
                          and [queue.get(job.id) for job in jobs], what="every job to end")
    assert [job.status for job in finished] == ["done"] * len(jobs)
    assert backend.most_running == SLOTS  # as many at once as it has slots, never more
    starts = [job.started_at for job in finished]
    assert starts == sorted(starts), starts  # no job started before one submitted earlier
    assert {job.worker for job in finished} == set(slot_ids)

    # Positions and ETAs count the slots: each of three jobs queued behind three running ones
    # waits for one job to end, not for one, two and three of them.
    more = [queue.submit({"text": f"more {i}", "num_images": 2, "seed": i + 1}) for i in range(2 * SLOTS)]
    listed = wait_until(lambda: (lambda jobs: sum(j.status == "running" for j in jobs) == SLOTS and jobs)(
        [job for job in queue.unfinished() if job.id in {m.id for m in more}]), what="full slots")
    waiting = [job for job in listed if job.status == "queued"]
    assert [job.position for job in waiting] == [1, 2, 3]
    speeds = redis_client.hgetall(Keys().speed)
    job_secs = max(JobCost.fit(job_times(speeds[wid.encode()])).secs(2) for wid in slot_ids)
    running_left = max(job.eta_secs for job in listed if job.status == "running")
    # One slot would give the third waiting job running_left + 3 × job_secs.
    assert all(job.eta_secs <= running_left + job_secs + 0.01 for job in waiting), (waiting, job_secs)


def test_slots_a_backend_no_longer_has_lose_their_workers(backend, scheduler, redis_client):
    queue = JobQueue(redis_client)
    wait_until(lambda: len(serving_workers(queue, backend.url)) == SLOTS, what="a worker per slot")
    backend.slots = 1
    wait_until(lambda: serving_workers(queue, backend.url) == [worker_id_for(backend.url)],
               what="the extra slots' workers to go")
    job = queue.submit({"text": "after", "num_images": 2, "seed": 1})
    assert wait_until(lambda: queue.get(job.id).finished and queue.get(job.id)).status == "done"
    backend.slots = SLOTS  # and they come back when it has them again
    wait_until(lambda: len(serving_workers(queue, backend.url)) == SLOTS, what="the slots' workers to return")


def test_a_stopped_scheduler_puts_its_slots_jobs_back_in_submission_order(backend, scheduler, redis_client):
    queue = JobQueue(redis_client)
    wait_until(lambda: len(serving_workers(queue, backend.url)) == SLOTS, what="a worker per slot")
    jobs = [queue.submit({"text": "steady", "num_images": 2, "seed": i + 1}) for i in range(SLOTS + 2)]
    wait_until(lambda: sum(queue.get(job.id).status == "running" for job in jobs) == SLOTS, what="full slots")
    scheduler.stop()
    assert scheduler.join(timeout=30)
    assert [queue.get(job.id).status for job in jobs] == ["queued"] * len(jobs)
    waiting = [raw.decode() for raw in redis_client.lrange(Keys().queue_of(queue.get(jobs[0].id).model), 0, -1)]
    assert waiting == [job.id for job in jobs]


def test_jobs_put_back_in_any_order_wait_in_the_order_they_were_submitted(redis_client):
    queue = JobQueue(redis_client)
    jobs = [queue.submit({"text": f"job {i}", "num_images": 2, "seed": 1}) for i in range(5)]
    slots = [WorkerQueue(redis_client, worker_id_for("http://backend", slot), "http://backend") for slot in range(3)]
    claimed = [slot.claim(timeout=1) for slot in slots]
    assert [job.id for job in claimed] == [job.id for job in jobs[:3]]
    for slot, job in zip(slots, claimed):  # the first submitted is put back first
        assert slot.put_back(job, "stopped", count_attempt=False) == "queued"
    waiting = [raw.decode() for raw in redis_client.lrange(Keys().queue_of(claimed[0].model), 0, -1)]
    assert waiting == [job.id for job in jobs]
