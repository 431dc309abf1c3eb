"""The scheduler as a real process, with real Redis and real backends (the tiny model):
FIFO order, parallel backends, idle start latency, progress and ETA, cancel, backend
failures, kill -9 of a worker or a backend, SIGTERM, health."""
from __future__ import annotations

import io
import itertools
import json
import time

import pytest
from PIL import Image

from playground.library import LibraryStore
from playground.queue import JobQueue
from testkit.processes import ServiceProcess, backend_process, scheduler_process
from settled import ended

pytestmark = pytest.mark.timeout(600)

# Most jobs ask for 2 images; a job to be interrupted mid-way asks for 8, to last longer.
BACKEND_ENV = {"BACKEND_WARMUP_BATCH_SIZES": "2,8", "BACKEND_PROGRESS_INTERVAL": "0.1"}
LONG = 8


def prompt(text: str = "a red circle", num_images: int = 2, seed: int = 1, **extra) -> dict:
    return {"text": text, "num_images": num_images, "seed": seed, **extra}


def wait_for(condition, timeout: float, what: str, *processes: ServiceProcess, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log_path.name} ---\n{p.log_tail()}" for p in processes)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def backends(tmp_path_factory, model_cache_dir):
    """Two backends shared by the tests that do not kill them."""
    logs = tmp_path_factory.mktemp("backend-logs")
    started = []
    try:
        # One after the other: the first writes the tiny model into the shared cache.
        for _ in range(2):
            started.append(backend_process(logs, model_cache_dir, extra_env=BACKEND_ENV).start())
            started[-1].wait_healthy(300)
        yield started
    finally:
        for backend in started:
            backend.stop()


@pytest.fixture
def processes():
    """Starts ServiceProcesses and stops whatever is still running at the end of the test."""
    started: list[ServiceProcess] = []

    def start(process: ServiceProcess) -> ServiceProcess:
        started.append(process)
        return process.start()

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def queue(redis_client):
    return JobQueue(redis_client)


def start_scheduler(processes, tmp_path, redis_url, urls, name="scheduler", wait_ready=True, queue=None):
    scheduler = processes(scheduler_process(tmp_path, redis_url, urls, tmp_path / "library", name=name))
    if wait_ready:
        wait_for(lambda: ready_workers(queue) >= len(urls), 60, "the workers to see their backends ready", scheduler)
    return scheduler


def ready_workers(queue: JobQueue) -> int:
    return sum(w["alive"] and w["backend_status"] == "ready" for w in queue.health()["workers"])


def generating_job(queue: JobQueue, job_id: str):
    """The job if the backend is generating it (it has reported progress), else None."""
    job = queue.get(job_id)
    return job if job.status == "running" and job.tokens_done > 0 else None


def finished(queue: JobQueue, job_ids, library_dir) -> bool:
    return all(ended(queue, library_dir, job_id) for job_id in job_ids)


def test_fifo_order_progress_eta_and_library(backends, processes, tmp_path, redis_url, queue):
    scheduler = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], queue=queue)
    ids = [queue.submit(prompt(f"prompt {i}", seed=i + 1)).id for i in range(4)]
    progress_seen, etas_seen = set(), []
    while not finished(queue, ids, tmp_path / "library"):
        for job in queue.unfinished():
            if job.status == "running":
                progress_seen.add(job.tokens_done)
            elif job.eta_secs is not None:
                etas_seen.append(job.eta_secs)
        assert scheduler.alive(), scheduler.log_tail()
        time.sleep(0.05)
    jobs = [queue.get(job_id) for job_id in ids]
    assert [j.status for j in jobs] == ["done"] * 4
    starts = [j.started_at for j in jobs]
    assert starts == sorted(starts)  # first in, first out
    for a, b in itertools.pairwise(jobs):
        assert a.finished_at <= b.started_at  # one at a time on one backend
    assert any(0 < done <= 256 for done in progress_seen), progress_seen
    # ETAs come from the measured speed, which exists once the first job is done.
    assert etas_seen and all(eta > 0 for eta in etas_seen)
    assert queue.health()["workers"][0]["secs_per_image"] > 0
    library = LibraryStore(tmp_path / "library").entries()
    assert [e["queue_id"] for e in library] == list(reversed(ids))  # newest first
    for entry, job in zip(reversed(library), jobs):
        assert entry["text_prompt"] == job.text and entry["seed"] == job.seed
        assert entry["generated_images"] == job.images and len(job.images) == 2
        for url in entry["generated_images"]:
            png = Image.open(io.BytesIO((tmp_path / url).read_bytes()))
            assert png.size == (256, 256)
        assert entry["model"] == "tiny" and entry["process_time_secs"] > 0


def test_two_backends_run_two_jobs_at_once(backends, processes, tmp_path, redis_url, queue):
    scheduler = start_scheduler(processes, tmp_path, redis_url, [b.url for b in backends], queue=queue)
    ids = [queue.submit(prompt(str(i))).id for i in range(4)]
    both_running = wait_for(lambda: [j for j in queue.unfinished() if j.status == "running"][1:] and
                            {j.backend for j in queue.unfinished() if j.status == "running"},
                            30, "two jobs running at once", scheduler)
    assert both_running == {b.url for b in backends}
    wait_for(lambda: finished(queue, ids, tmp_path / "library"), 120, "all jobs done", scheduler)
    assert {queue.get(i).backend for i in ids} == {b.url for b in backends}
    assert all(queue.get(i).status == "done" for i in ids)


def test_idle_worker_starts_a_new_job_within_100_ms(backends, processes, tmp_path, redis_url, queue):
    scheduler = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], queue=queue)
    delays = []
    for i in range(5):
        time.sleep(0.3)  # let the worker go idle in BLMOVE
        job_id = queue.submit(prompt(str(i))).id
        wait_for(lambda job_id=job_id: queue.get(job_id).finished, 60, "the job", scheduler)
        done = queue.get(job_id)
        assert done.status == "done"
        delays.append(done.started_at - done.created_at)
    delays.sort()
    print(f"submit -> running: median {delays[2] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms")
    assert delays[2] < 0.1, delays


def test_cancel_queued_and_running_jobs(backends, processes, tmp_path, redis_url, queue):
    scheduler = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], queue=queue)
    running = queue.submit(prompt("to be stopped", num_images=LONG))
    after = queue.submit(prompt("runs next"))
    never = queue.submit(prompt("cancelled while queued"))
    assert queue.cancel(never.id).status == "cancelled"
    wait_for(lambda: generating_job(queue, running.id), 30, "the first job to be generating", scheduler)
    asked = time.monotonic()
    assert queue.cancel(running.id).cancel_requested
    wait_for(lambda: queue.get(running.id).status == "cancelled", 5, "the running job to stop", scheduler)
    stop_secs = time.monotonic() - asked
    wait_for(lambda: ended(queue, tmp_path / "library", after.id), 60, "the next job", scheduler)
    assert queue.get(after.id).status == "done"  # the backend was free for it
    assert queue.get(never.id).started_at is None
    assert [e["queue_id"] for e in LibraryStore(tmp_path / "library").entries()] == [after.id]
    assert not (tmp_path / "library" / running.id).exists()  # partial output discarded
    print(f"running job cancelled in {stop_secs:.2f} s")


def test_a_job_the_backend_refuses_fails_with_its_reason_and_the_queue_moves_on(
        backends, processes, tmp_path, redis_url, queue):
    scheduler = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], queue=queue)
    # The frontend would refuse this one; here it reaches the backend, which does.
    refused = queue.submit(prompt(num_images=9))
    good = queue.submit(prompt())
    wait_for(lambda: finished(queue, [refused.id, good.id], tmp_path / "library"), 60, "both jobs", scheduler)
    refused, good = queue.get(refused.id), queue.get(good.id)
    assert refused.status == "failed" and "num_images must be between 1 and 8" in refused.error
    assert refused.attempts == 1  # not retried: it would be refused again
    assert good.status == "done"
    # A failure inside the backend (a GPU out of memory) is in test_scheduler_protocol.py.


def test_kill_9_of_the_scheduler_mid_job_reruns_the_job_first(backends, processes, tmp_path, redis_url, queue):
    first = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], name="first", queue=queue)
    victim = queue.submit(prompt("interrupted", num_images=LONG))
    behind = queue.submit(prompt("behind it"))
    wait_for(lambda: generating_job(queue, victim.id), 30, "the job to run", first)
    first.kill()
    assert queue.get(victim.id).status == "running"  # nobody has noticed yet
    second = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], name="second", wait_ready=False)
    wait_for(lambda: finished(queue, [victim.id, behind.id], tmp_path / "library"), 90, "both jobs", second)
    victim, behind = queue.get(victim.id), queue.get(behind.id)
    assert victim.status == behind.status == "done", (victim.to_status(), behind.to_status(), second.log_tail())
    assert victim.attempts == 2 and behind.attempts == 1
    assert victim.started_at < behind.started_at  # re-run at the front of the queue
    assert "restarted" in (victim.last_error or "")
    assert len(LibraryStore(tmp_path / "library").entries()) == 2


def test_a_dead_workers_job_is_taken_over_by_another_scheduler(backends, processes, tmp_path, redis_url, queue):
    doomed = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], name="doomed", queue=queue)
    victim = queue.submit(prompt("orphan", num_images=LONG))
    wait_for(lambda: generating_job(queue, victim.id), 30, "the job to run", doomed)
    doomed.kill()
    # A scheduler for a different backend notices the silent worker once its heartbeat expires.
    other = start_scheduler(processes, tmp_path, redis_url, [backends[1].url], name="other", queue=queue)
    wait_for(lambda: queue.get(victim.id).finished, 60, "the orphan job", other)
    victim = queue.get(victim.id)
    assert victim.status == "done" and victim.backend == backends[1].url and victim.attempts == 2


def test_sigterm_puts_the_running_job_back_at_the_front(backends, processes, tmp_path, redis_url, queue):
    first = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], name="first", queue=queue)
    job = queue.submit(prompt("interrupted politely", num_images=LONG))
    behind = queue.submit(prompt("behind"))
    wait_for(lambda: generating_job(queue, job.id), 30, "the job to run", first)
    assert first.stop(timeout=20) == 0, first.log_tail()
    requeued = queue.get(job.id)
    assert requeued.status == "queued" and requeued.position == 1 and requeued.attempts == 0
    assert queue.health()["workers"] == []  # a clean stop unregisters
    second = start_scheduler(processes, tmp_path, redis_url, [backends[0].url], name="second", wait_ready=False)
    wait_for(lambda: finished(queue, [job.id, behind.id], tmp_path / "library"), 60, "both jobs", second)
    assert queue.get(job.id).status == queue.get(behind.id).status == "done"


def test_health_shows_each_worker_its_backend_and_heartbeat(backends, processes, tmp_path, redis_url, queue):
    start_scheduler(processes, tmp_path, redis_url, [b.url for b in backends], queue=queue)
    health = queue.health()
    assert {w["backend_url"] for w in health["workers"]} == {b.url for b in backends}
    for worker in health["workers"]:
        assert worker["alive"] and worker["backend_status"] == "ready" and worker["model"] == "tiny"
        assert worker["heartbeat_age_secs"] < 3 and worker["job_id"] is None
        assert worker["image_codes"] == 1024  # the tiny model's codebook: the frontend's top-k limit
        assert worker["ranks"] is True  # the tiny model's backends rank with the demo CLIP by default
        # Its backend's slots, for the ETA of a grid (one slot: the cells one after another).
        assert queue.redis.hget(queue.keys.worker(worker["id"]), "slots") == b"1"


def test_kill_9_of_the_backend_reruns_the_job_and_fails_it_after_three(
        processes, tmp_path, redis_url, queue, model_cache_dir):
    """The scheduler starts before its backend and waits; then the backend dies mid-job:
    the job goes back to the front, and after its third death it is failed with the reason,
    and the job behind it is run."""
    backend = backend_process(tmp_path, model_cache_dir, extra_env=BACKEND_ENV)
    scheduler = start_scheduler(processes, tmp_path, redis_url, [backend.url], wait_ready=False)
    victim = queue.submit(prompt("unlucky", num_images=LONG))
    behind = queue.submit(prompt("lucky"))
    wait_for(lambda: queue.health()["workers"] and queue.health()["workers"][0]["backend_status"] == "unreachable",
             20, "the worker to report its backend unreachable", scheduler)
    assert queue.get(victim.id).status == "queued" and queue.get(victim.id).attempts == 0
    for attempt in (1, 2, 3):
        processes(backend)
        backend.wait_healthy(300)
        generating = wait_for(lambda: generating_job(queue, victim.id), 30, f"attempt {attempt}", scheduler, backend)
        assert generating.attempts == attempt
        backend.kill()
        if attempt < 3:
            wait_for(lambda: queue.get(victim.id).status == "queued", 10, "the job to be put back", scheduler)
            assert queue.unfinished()[0].id == victim.id  # at the front
    wait_for(lambda: queue.get(victim.id).finished, 10, "the job to fail", scheduler)
    failed = queue.get(victim.id)
    assert failed.status == "failed" and "3 attempts" in failed.error and "backend" in failed.error
    processes(backend)
    backend.wait_healthy(300)
    wait_for(lambda: queue.get(behind.id).finished, 60, "the job behind", scheduler, backend)
    assert queue.get(behind.id).status == "done" and queue.get(behind.id).attempts == 1
    assert scheduler.alive()


def test_queued_jobs_survive_a_redis_crash(tmp_path):
    import redis

    from playground.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        queue = JobQueue(client)
        ids = [queue.submit(prompt(str(i))).id for i in range(5)]
        queue.cancel(ids[1])
        time.sleep(1.5)  # appendfsync everysec, as the compose file sets it
        server.kill()
        server.start()
        client = redis.Redis.from_url(server.url)
        queue = JobQueue(client)
        assert [j.id for j in queue.unfinished()] == [ids[0], *ids[2:]]
        assert queue.get(ids[1]).status == "cancelled"
        client.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_two_hundred_jobs_are_each_done_exactly_once(backends, processes, tmp_path, redis_url, queue):
    """Two scheduler processes (one per backend) drain 200 queued jobs from one Redis."""
    ids = [queue.submit(prompt(f"job {i}", seed=i + 1)).id for i in range(200)]
    schedulers = [start_scheduler(processes, tmp_path, redis_url, [b.url], name=f"scheduler-{i}", wait_ready=False)
                  for i, b in enumerate(backends)]
    started = time.monotonic()
    wait_for(lambda: queue.queued_count() == 0 and not queue.unfinished(), 900, "the queue to drain",
             *schedulers, interval=0.5)
    elapsed = time.monotonic() - started
    jobs = [queue.get(job_id) for job_id in ids]
    assert [j.status for j in jobs] == ["done"] * 200
    assert all(j.attempts == 1 for j in jobs)
    assert {j.backend for j in jobs} == {b.url for b in backends}
    library = LibraryStore(tmp_path / "library")
    entries = library.entries()
    assert sorted(e["queue_id"] for e in entries) == sorted(ids)  # each once, none missing
    assert sum(len(list((tmp_path / "library" / job_id).glob("*.png"))) for job_id in ids) == 400
    print(f"200 jobs in {elapsed:.1f} s on 2 backends ({elapsed / 200:.2f} s per job)")


def test_deletes_racing_job_completions_keep_the_library_valid(backends, processes, tmp_path, redis_url, queue):
    """While the scheduler (another process) adds jobs, this process deletes images and jobs;
    library.json always parses, and ends with exactly the jobs done and not deleted."""
    library_dir = tmp_path / "library"
    store = LibraryStore(library_dir)
    scheduler = start_scheduler(processes, tmp_path, redis_url, [b.url for b in backends], queue=queue)
    ids = [queue.submit(prompt(f"job {i}")).id for i in range(16)]
    deleted_jobs: set[str] = set()
    deleted_images: set[str] = set()
    reads = 0
    while not finished(queue, ids, tmp_path / "library"):
        assert scheduler.alive(), scheduler.log_tail()
        if store.index_path.exists():
            entries = json.loads(store.index_path.read_bytes())  # never half-written
            reads += 1
            for entry in entries:
                if entry["queue_id"] in deleted_jobs:
                    continue
                if len(deleted_jobs) * 3 < len(entries):
                    assert store.delete_job(entry["queue_id"])
                    deleted_jobs.add(entry["queue_id"])
                elif len(entry["generated_images"]) == 2:
                    assert store.delete_image(entry["generated_images"][0])
                    deleted_images.add(entry["generated_images"][0])
        time.sleep(0.01)
    assert all(queue.get(i).status == "done" for i in ids)
    assert deleted_jobs and deleted_images and reads > 10
    final = json.loads(store.index_path.read_bytes())
    assert sorted(e["queue_id"] for e in final) == sorted(set(ids) - deleted_jobs)
    for entry in final:
        assert not deleted_images & set(entry["generated_images"])
        on_disk = {f"library/{entry['queue_id']}/{p.name}" for p in (library_dir / entry["queue_id"]).glob("*.png")}
        assert on_disk == set(entry["generated_images"])
    for job_id in deleted_jobs:
        assert not (library_dir / job_id).exists()


def test_a_backend_stopped_on_purpose_hands_its_job_back_but_a_crash_costs_an_attempt(
        processes, tmp_path, redis_url, queue, model_cache_dir):
    """SIGTERM of the backend mid-job (`docker compose stop`) gives the job back at once, its
    attempt with it: with one attempt allowed, the job still runs to the end afterwards. A
    kill -9 of the backend is a crash: that one attempt is spent and the job fails."""
    from backend.__main__ import GRACEFUL_TIMEOUT_SECS

    # 32 chunks of half a second: a job lasts 16 s, time enough to stop its backend mid-way.
    backend = backend_process(tmp_path, model_cache_dir, extra_env={
        **BACKEND_ENV, "BACKEND_TEST_CHUNK_DELAY_SECS": "0.5"})
    scheduler = processes(scheduler_process(tmp_path, redis_url, [backend.url], tmp_path / "library",
                                            extra_env={"SCHEDULER_MAX_ATTEMPTS": "1"}))
    stopped = queue.submit(prompt("stopped on purpose"))
    processes(backend)
    backend.wait_healthy(300)
    wait_for(lambda: generating_job(queue, stopped.id), 60, "the job to be generating", scheduler, backend)
    asked = time.monotonic()
    backend.process.terminate()  # SIGTERM, as `docker compose stop` sends it
    wait_for(lambda: queue.get(stopped.id).status != "running", GRACEFUL_TIMEOUT_SECS, "the job to be handed back",
             scheduler, backend)
    handed_back = time.monotonic() - asked
    job = queue.get(stopped.id)
    assert (job.status, job.attempts) == ("queued", 0), (job.status, job.error)
    assert job.last_error == "backend stopped during the job: the backend is shutting down"
    backend.process.wait(timeout=60)
    print(f"handed back {handed_back:.2f} s after SIGTERM; the backend exited {time.monotonic() - asked:.2f} s after it")
    assert backend.process.returncode == 0, backend.log_tail()

    # Started again, its chunks shorter (a job now lasts 5 s): the job runs to the end on its one
    # attempt, and the next is still caught mid-way.
    backend.env["BACKEND_TEST_CHUNK_DELAY_SECS"] = "0.15"
    processes(backend)
    backend.wait_healthy(300)
    wait_for(lambda: queue.get(stopped.id).finished, 120, "the job to finish", scheduler, backend)
    assert (queue.get(stopped.id).status, queue.get(stopped.id).attempts) == ("done", 1)

    crashed = queue.submit(prompt("crashed"))
    wait_for(lambda: generating_job(queue, crashed.id), 60, "the next job to be generating", scheduler, backend)
    backend.kill()
    wait_for(lambda: queue.get(crashed.id).finished, 20, "the crashed job to fail", scheduler)
    job = queue.get(crashed.id)
    assert job.status == "failed" and "gave up after 1 attempts" in job.error, job.error
