"""Fencing: every change a worker makes to a job it claimed names that claim, and Redis
refuses it once the job has been taken over, so a worker that was paused or cut off longer
than its heartbeat can never change, finish or duplicate the job, nor reach the library."""
from __future__ import annotations

import json
import threading
import time

import pytest
from filelock import FileLock

from playground import library as library_module
from playground.library import LibraryStore
from playground.queue import JobQueue
from testkit.processes import scheduler_process
from testkit.standin_backend import StandInBackend, solid_png
from scheduler.worker_queue import WorkerQueue

PNG = solid_png()


def params(text: str = "a red circle") -> dict:
    return {"text": text, "num_images": 2, "seed": 1}


def entry(job_id: str) -> dict:
    return {"queue_id": job_id, "text_prompt": "a red circle", "creation_unixtime": 0.0}


def claimed_job(redis_client) -> tuple[JobQueue, WorkerQueue, object, object]:
    """A job submitted and claimed by the worker "stale": (queue, stale, job, its claim)."""
    queue = JobQueue(redis_client)
    stale = WorkerQueue(redis_client, "stale", "http://127.0.0.1:1")
    assert stale.register()
    job = queue.submit(params())
    return queue, stale, job, stale.claim(timeout=1)


def take_over(queue: JobQueue, redis_client, stale: WorkerQueue) -> tuple[WorkerQueue, object]:
    """`stale` misses its heartbeats; another worker sweeps its job back and claims it."""
    redis_client.delete(stale.keys.alive(stale.worker_id))
    other = WorkerQueue(redis_client, "other", "http://127.0.0.1:2")
    assert other.register()
    assert [status for _, status in other.sweep_dead_workers()] == ["queued"]
    return other, other.claim(timeout=1)


def test_a_worker_that_lost_its_job_can_change_nothing(redis_client):
    queue, stale, job, mine = claimed_job(redis_client)
    assert stale.progress(mine, 10, 256) == "ok"
    other, theirs = take_over(queue, redis_client, stale)
    assert theirs.id == job.id and theirs.claim == mine.claim + 1 and theirs.attempts == 2

    assert stale.progress(mine, 200, 256) == "lost"
    assert stale.finish_done(mine, seed=1, model="tiny", images=[], process_time_secs=1.0) is None
    assert stale.finish_failed(mine, "too late") is None
    assert stale.finish_cancelled(mine) is None
    assert stale.put_back(mine, "too late") == ""
    current = queue.get(job.id)
    assert (current.status, current.worker, current.tokens_done, current.claim) == ("running", "other", 0, 2)

    assert other.progress(theirs, 64, 256) == "ok"
    status, finished_at = other.finish_done(theirs, seed=1, model="tiny", images=[], process_time_secs=1.0)
    assert status == "done" and abs(finished_at - time.time()) < 5  # Redis's clock


class Claimed:
    """A worker's claim as the library's Attempt, as the scheduler's worker builds it."""

    def __init__(self, worker: WorkerQueue, job, crash_after_commit: bool = False):
        self.worker, self.job, self.token = worker, job, str(job.claim)
        self.crash_after_commit = crash_after_commit

    def commit(self, urls):
        outcome = self.worker.finish_done(self.job, seed=1, model="tiny", images=urls, process_time_secs=1.0)
        if self.crash_after_commit:
            raise KeyboardInterrupt  # the process dies before it publishes
        return outcome[1] if outcome is not None and outcome[0] == "done" else None


def staged(library_dir):
    return sorted(p.name for p in (library_dir / ".staging").iterdir())


def test_the_late_result_never_reaches_the_library(redis_client, tmp_path):
    queue, stale, job, mine = claimed_job(redis_client)
    library = LibraryStore(tmp_path / "library")
    other, theirs = take_over(queue, redis_client, stale)

    stored = library.add_job(entry(job.id), [PNG], attempt=Claimed(other, theirs))
    assert stored is not None and stored["creation_unixtime"] == queue.get(job.id).finished_at
    assert library.add_job(entry(job.id), [PNG, PNG], attempt=Claimed(stale, mine)) is None
    [listed] = library.entries()
    assert listed["generated_images"] == stored["generated_images"] == queue.get(job.id).images
    assert sorted(p.name for p in (tmp_path / "library" / job.id).glob("*.png")) == \
        sorted(url.rsplit("/", 1)[1] for url in stored["generated_images"])
    assert staged(tmp_path / "library") == []


def test_recovery_publishes_a_committed_result_and_drops_a_lost_one(redis_client, tmp_path):
    """What crashes leave in .staging: an attempt that committed is published by the sweep;
    one that lost its job is dropped; a running one is left alone. Nothing of them was
    visible before."""
    queue = JobQueue(redis_client)
    library = LibraryStore(tmp_path / "library")
    worker = WorkerQueue(redis_client, "w", "http://127.0.0.1:1")
    assert worker.register()
    committed, lost, running = (queue.submit(params(text)) for text in ("committed", "lost", "running"))

    first = worker.claim(timeout=1)
    with pytest.raises(KeyboardInterrupt):
        library.add_job(entry(committed.id), [PNG, PNG], attempt=Claimed(worker, first, crash_after_commit=True))
    second = worker.claim(timeout=1)

    class CrashBeforeCommit(Claimed):
        def commit(self, urls):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        library.add_job(entry(lost.id), [PNG], attempt=CrashBeforeCommit(worker, second))
    worker.put_back(second, "the worker died")  # its job goes back to the queue
    third = worker.claim(timeout=1)
    assert third.id == lost.id and third.claim == second.claim + 1
    fourth = worker.claim(timeout=1)
    with pytest.raises(KeyboardInterrupt):
        library.add_job(entry(running.id), [PNG], attempt=CrashBeforeCommit(worker, fourth))
    assert library.entries() == [] and len(staged(tmp_path / "library")) == 3
    assert not any((tmp_path / "library" / job.id).exists() for job in (committed, lost, running))

    # Another writer inside the library's lock (a paused process, say): the sweep, which runs
    # in the heartbeat thread, does not wait for it.
    held, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with FileLock(str(tmp_path / "library" / "library.json.lock")):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock, daemon=True)
    holder.start()
    assert held.wait(5)
    try:
        started = time.monotonic()
        assert library.recover_staged(worker.staged_outcome) == {"kept": 0, "undone": 0}
        assert time.monotonic() - started < 1 and len(staged(tmp_path / "library")) == 3
    finally:
        release.set()
        holder.join(5)

    assert library.recover_staged(worker.staged_outcome) == {"kept": 1, "undone": 1}
    assert [e["queue_id"] for e in library.entries()] == [committed.id]
    assert not (tmp_path / "library" / lost.id).exists()
    assert staged(tmp_path / "library") == [f"{running.id}.{fourth.claim}"]
    [kept] = library.entries()
    done = queue.get(committed.id)
    assert kept["generated_images"] == done.images and kept["creation_unixtime"] == done.finished_at
    assert all((tmp_path / url).is_file() for url in kept["generated_images"])
    assert library.recover_staged(worker.staged_outcome) == {"kept": 0, "undone": 0}  # nothing twice


@pytest.mark.timeout(120)
def test_a_scheduler_paused_past_its_heartbeat_cannot_touch_the_job_when_resumed(redis_url, redis_client, tmp_path):
    """Real processes: scheduler A runs a job, is stopped (SIGSTOP) past its heartbeat,
    scheduler B takes the backend and the job over and finishes it; A, resumed (SIGCONT),
    reads its own run to the end and its result is refused: one result, from B."""
    queue = JobQueue(redis_client)
    env = {"SCHEDULER_HEARTBEAT_TTL": "2"}
    with StandInBackend() as backend:
        first = scheduler_process(tmp_path, redis_url, [backend.url], tmp_path / "library", env, name="first")
        second = scheduler_process(tmp_path, redis_url, [backend.url], tmp_path / "library", env, name="second")
        try:
            first.start()
            job = queue.submit(params("steady"))
            first.wait_until(lambda: queue.get(job.id).tokens_done > 0, 30, "the job to start")
            first.pause()
            second.start()
            second.wait_until(lambda: queue.get(job.id).claim == 2, 30, "the second scheduler to claim the job")
            second.wait_until(lambda: queue.get(job.id).status == "done", 30, "the job to be done")
            done = queue.get(job.id)
            first.resume()
            first.wait_until(lambda: "was taken over by another worker" in first.log_tail(), 30,
                             "the first scheduler to drop its late run")
            time.sleep(0.5)
            assert queue.get(job.id).to_status() == done.to_status()
            [stored] = LibraryStore(tmp_path / "library").entries()
            assert stored["generated_images"] == done.images and done.worker == stored["backend"].split("://")[1]
            assert len(list((tmp_path / "library" / job.id).glob("*.png"))) == 2
            assert backend.calls.count("steady") == 2
        finally:
            first.stop()
            second.stop()


def test_a_job_cancelled_between_its_move_and_its_start_stays_cancelled(redis_client):
    queue = JobQueue(redis_client)
    worker = WorkerQueue(redis_client, "w", "http://127.0.0.1:1")
    assert worker.register()
    job = queue.submit(params())
    # The first half of a claim (the move into the worker's list); the cancel comes before
    # the start, then the worker dies and its list is recovered.
    assert redis_client.lmove(worker.keys.queue, worker.processing, "LEFT", "LEFT").decode() == job.id
    assert queue.cancel(job.id).status == "cancelled"
    assert worker.recover(worker.worker_id, "the worker died") == []
    assert queue.get(job.id).status == "cancelled"
    assert redis_client.llen(worker.keys.queue) == 0 and redis_client.llen(worker.processing) == 0


def test_a_publish_cut_short_after_the_commit_is_finished_by_the_sweep(redis_client, tmp_path):
    queue, stale, job, mine = claimed_job(redis_client)
    library = LibraryStore(tmp_path / "library")
    earlier = library.add_job(entry("00000000-0000-4000-8000-000000000001"), [PNG])  # an index exists
    write_index = library._write_index_locked

    def disk_full(entries):
        library._write_index_locked = write_index  # once
        raise OSError(28, "No space left on device")

    library._write_index_locked = disk_full  # job.json and the PNGs are in place by then
    stored = library.add_job(entry(job.id), [PNG], attempt=Claimed(stale, mine))
    assert queue.get(job.id).status == "done" and library.entries() == [earlier]
    assert len(staged(tmp_path / "library")) == 1

    assert library.recover_staged(stale.staged_outcome) == {"kept": 1, "undone": 0}
    assert [e["queue_id"] for e in library.entries()] == [job.id, earlier["queue_id"]]
    assert library.entries()[0]["generated_images"] == stored["generated_images"] == queue.get(job.id).images
    assert staged(tmp_path / "library") == []
    library.rebuild(force=True)
    assert {e["queue_id"] for e in library.entries()} == {job.id, earlier["queue_id"]}


def test_an_unfenced_write_is_safe_from_a_running_sweep(redis_client, tmp_path):
    """Writes without a claim (tools, tests) are staged inside the lock, so a scheduler's
    sweep never takes one half-written for a crash's; one a crash did leave is finished."""
    library = LibraryStore(tmp_path / "library")
    scheduler = LibraryStore(tmp_path / "library")  # another process's view, with its own lock
    worker = WorkerQueue(redis_client, "w", "http://127.0.0.1:1")
    job_id = "00000000-0000-4000-8000-000000000002"
    write = library_module._write_atomically
    swept = []

    def sweep_while_writing(path, data):
        swept.append(scheduler.recover_staged(worker.staged_outcome))
        write(path, data)

    library_module._write_atomically = sweep_while_writing
    try:
        stored = library.add_job(entry(job_id), [PNG, PNG])
    finally:
        library_module._write_atomically = write
    assert swept and all(counts == {"kept": 0, "undone": 0} for counts in swept)
    assert library.entries() == [stored] and staged(tmp_path / "library") == []

    crashed = tmp_path / "library" / ".staging" / f"{job_id}.0"  # staged whole, then the writer died
    crashed.mkdir()
    (crashed / "job.json").write_text(json.dumps({**stored, "text_prompt": "again"}))
    for url in stored["generated_images"]:
        (crashed / url.rsplit("/", 1)[1]).write_bytes(PNG)
    assert library.recover_staged(worker.staged_outcome) == {"kept": 1, "undone": 0}
    assert library.entries()[0]["text_prompt"] == "again" and staged(tmp_path / "library") == []


def test_a_sweep_never_takes_a_live_writer_for_a_crash(redis_client, tmp_path):
    """A writer removes its staging folder before it lets the library's lock go, whatever the
    outcome: a sweep from another process, coming at that very moment, finds nothing to
    recover and warns of no crash."""
    queue, stale, job, mine = claimed_job(redis_client)
    library = LibraryStore(tmp_path / "library")
    scheduler = LibraryStore(tmp_path / "library")  # another process's view, with its own lock
    remove = library_module.shutil.rmtree
    swept, sweeping = [], threading.Lock()

    def sweep_then_remove(path, *args, **kwargs):
        if not sweeping.locked():  # the sweep's own removals go straight through
            with sweeping:
                swept.append(scheduler.recover_staged(stale.staged_outcome))
        remove(path, *args, **kwargs)

    library_module.shutil.rmtree = sweep_then_remove
    try:
        other, theirs = take_over(queue, redis_client, stale)
        assert library.add_job(entry(job.id), [PNG], attempt=Claimed(stale, mine)) is None  # refused
        assert library.add_job(entry(job.id), [PNG], attempt=Claimed(other, theirs)) is not None  # committed
    finally:
        library_module.shutil.rmtree = remove
    assert len(swept) == 2 and all(counts == {"kept": 0, "undone": 0} for counts in swept), swept
    assert staged(tmp_path / "library") == []
