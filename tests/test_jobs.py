"""JobQueue against a real Redis server: submit, order, positions, ETAs, cancel, health."""
from __future__ import annotations

import threading
import time

import pytest
import redis

from playground.protocol import BackendStatus
from playground.queue import Job, JobNotFound, JobQueue, Keys, QueueFull
from frontend.validation import validate_prompt
from playground.queue.eta import (FIXED_SHARE_GUESS, SPEED_SAMPLES, STALLED_AFTER_SECS, JobCost, estimate, job_times,
                                  speed_sample)
from playground.queue.job import upscale_request
from scheduler.worker_queue import WorkerQueue


def params(text="a red squirrel", num_images=2, seed=7, **sampling):
    return {"text": text, "num_images": num_images, "seed": seed, **sampling}


@pytest.fixture
def queue(redis_client):
    return JobQueue(redis_client, max_queued=50)


def test_submit_stores_every_parameter(queue):
    job = queue.submit(params("über ☃", 4, 4294967296, top_k=64, top_p=0.9, temperature=1.5,
                              condition_scale=3.0))
    stored = queue.get(job.id)
    assert stored.status == "queued"
    status = stored.to_status()
    assert status["queue_id"] == job.id and status["text"] == "über ☃"
    assert (status["num_images"], status["seed"]) == (4, 4294967296)
    assert (status["top_k"], status["top_p"], status["temperature"], status["condition_scale"]) == (64, 0.9, 1.5, 3.0)
    assert status["position"] == 1 and status["attempts"] == 0 and status["error"] is None
    assert status["progress"] == {"tokens_done": 0, "total_tokens": 256}
    assert abs(status["created_at"] - time.time()) < 5


def test_sampling_values_default_to_none(queue):
    status = queue.get(queue.submit(params()).id).to_status()
    assert [status[k] for k in ("top_k", "top_p", "temperature", "condition_scale")] == [None] * 4


def test_unfinished_lists_queued_jobs_oldest_first(queue):
    ids = [queue.submit(params(f"prompt {i}")).id for i in range(5)]
    listed = queue.unfinished()
    assert [j.id for j in listed] == ids
    assert [j.position for j in listed] == [1, 2, 3, 4, 5]


def test_queue_full_rejects_without_storing(redis_client):
    queue = JobQueue(redis_client, max_queued=2)
    queue.submit(params())
    queue.submit(params())
    with pytest.raises(QueueFull):
        queue.submit(params())
    assert queue.queued_count() == 2
    assert len(redis_client.keys(Keys().job("*"))) == 2


def test_get_unknown_job_is_none(queue):
    assert queue.get("00000000-0000-4000-8000-000000000000") is None


def test_cancel_queued_job_removes_it_at_once(queue):
    first, second, third = (queue.submit(params(str(i))) for i in range(3))
    cancelled = queue.cancel(second.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert [j.id for j in queue.unfinished()] == [first.id, third.id]
    assert queue.get(third.id).position == 2


def test_cancel_unknown_job_raises(queue):
    with pytest.raises(JobNotFound):
        queue.cancel("00000000-0000-4000-8000-000000000000")


def test_cancel_running_job_flags_it_and_finished_job_is_unchanged(queue, redis_client):
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    worker.register()
    job = queue.submit(params())
    claimed = worker.claim(timeout=1, model="tiny")
    assert claimed.id == job.id
    flagged = queue.cancel(job.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert worker.cancel_requested(job.id)
    worker.finish_cancelled(claimed)
    assert queue.get(job.id).status == "cancelled"
    again = queue.cancel(job.id)
    assert again.status == "cancelled"


def test_running_first_then_queued_with_eta_from_measured_speed(queue, redis_client):
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    worker.register()
    worker.heartbeat(backend_status=BackendStatus.READY, model="tiny")
    ids = [queue.submit(params(str(i), num_images=2)).id for i in range(3)]
    # Without a measured speed there is no ETA rather than a made-up one.
    assert all(j.eta_secs is None for j in queue.unfinished())
    worker.record_job_time(pictures=2, secs=2.0)
    running = worker.claim(timeout=1, model="tiny")
    listed = queue.unfinished()
    assert [j.id for j in listed] == ids
    assert [j.status for j in listed] == ["running", "queued", "queued"]
    assert [j.position for j in listed] == [0, 1, 2]
    assert listed[0].id == running.id and listed[0].attempts == 1
    etas = [j.eta_secs for j in listed]
    assert etas[0] == pytest.approx(2.0, abs=0.2)
    assert etas[1] == pytest.approx(4.0, abs=0.2)
    assert etas[2] == pytest.approx(6.0, abs=0.2)


def test_a_worker_keeps_its_last_job_times_with_their_pictures(redis_client):
    # An older version's moving average (a bare number) is dropped, not misread.
    redis_client.hset(Keys().speed, "w1", "2.5")
    assert job_times(redis_client.hget(Keys().speed, "w1")) == []
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    for pictures in range(1, SPEED_SAMPLES + 3):
        kept = worker.record_job_time(pictures=pictures, secs=pictures + 0.25)
    assert kept == [(n, n + 0.25) for n in range(3, SPEED_SAMPLES + 3)]  # the newest, oldest first
    assert job_times(redis_client.hget(Keys().speed, "w1")) == kept


def test_eta_spreads_queued_jobs_over_two_workers(queue, redis_client):
    fast = WorkerQueue(redis_client, "fast", "http://127.0.0.1:1")
    slow = WorkerQueue(redis_client, "slow", "http://127.0.0.1:2")
    for worker, speed in ((fast, 1.0), (slow, 3.0)):
        worker.register()
        worker.heartbeat(backend_status=BackendStatus.READY, model="tiny")
        worker.record_job_time(pictures=2, secs=2 * speed)
    for i in range(3):
        queue.submit(params(str(i), num_images=2))
    etas = [j.eta_secs for j in queue.unfinished()]
    # As the workers would take them: the first to fast (2 s), the second to slow (6 s),
    # the third to fast again once it is free (2 + 2 s).
    assert etas == pytest.approx([2.0, 6.0, 4.0], abs=0.2)


def test_health_reports_workers_and_heartbeat_age(queue, redis_client):
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:9")
    worker.register()
    worker.heartbeat(backend_status=BackendStatus.LOADING, model="tiny")
    queue.submit(params())
    health = queue.health()
    assert health["queued"] == 1 and health["alive_workers"] == 1
    [entry] = health["workers"]
    assert entry["backend_url"] == "http://127.0.0.1:9" and entry["backend_status"] == "loading"
    assert entry["model"] == "tiny" and entry["alive"] is True
    assert 0 <= entry["heartbeat_age_secs"] < 5


def live_worker(redis_client, name: str, model: str | None) -> WorkerQueue:
    worker = WorkerQueue(redis_client, name, f"http://{name}:8080")
    status = BackendStatus.READY if model else BackendStatus.UNREACHABLE
    assert worker.register() and worker.heartbeat(status, model=model)
    return worker


def test_a_queued_job_that_no_live_backend_can_run_says_why_until_one_can(queue, redis_client):
    anything = queue.submit(params("any model"))
    mega = queue.submit(params("for mega", model="mega"))
    nobody = "no backend is live: the job waits until one joins (or cancel it: POST /jobs/{}/cancel)"
    assert [queue.get(job.id).unserved for job in (anything, mega)] == [nobody.format(anything.id),
                                                                         nobody.format(mega.id)]

    mini = live_worker(redis_client, "mini-backend", "mini")
    assert queue.get(anything.id).unserved is None  # any live backend takes it
    assert queue.get(mega.id).unserved == (f"no live backend serves model mega (they serve mini): the job waits "
                                           f"until one does (or cancel it: POST /jobs/{mega.id}/cancel)")
    assert queue.get(mega.id).to_status()["unserved"] == queue.get(mega.id).unserved
    # /queue_status tells the same from its one read.
    assert {job.id: job.unserved for job in queue.unfinished()} == {anything.id: None,
                                                                    mega.id: queue.get(mega.id).unserved}

    # A backend whose model is not known yet (it has not answered) may serve it: no claim made.
    starting = live_worker(redis_client, "starting-backend", None)
    assert queue.get(mega.id).unserved is None
    starting.unregister()

    served = live_worker(redis_client, "mega-backend", "mega")
    assert queue.get(mega.id).unserved is None
    served.unregister()  # its only backend leaves: the same rule as a model never served
    assert "no live backend serves model mega (they serve mini)" in queue.get(mega.id).unserved

    running = mini.claim(timeout=1, model="mini")
    assert running.id == anything.id and queue.get(anything.id).unserved is None
    mini.unregister()
    assert queue.get(mega.id).unserved == nobody.format(mega.id)
    assert queue.cancel(mega.id).status == "cancelled"  # such a job is cancelled as any other


def test_job_round_trips_through_its_hash():
    job = Job(id="x", text="t", num_images=2, seed=1, top_p=0.5)
    from playground.queue import encode_job_fields
    assert Job.from_hash(encode_job_fields(job)).to_status() == job.to_status()


def test_a_worker_identity_is_held_by_one_live_process(redis_client):
    first = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1", owner="elsewhere:1:a")
    assert first.register()
    rival = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1", owner="elsewhere:2:b")
    assert not rival.register()  # another host: only its heartbeat expiring frees the identity
    rival.unregister()
    assert JobQueue(redis_client).health()["workers"][0]["alive"]  # the rival touched nothing
    assert not rival.heartbeat(backend_status=BackendStatus.READY)


def test_a_restarted_worker_takes_back_its_dead_predecessors_job_at_once(queue, redis_client):
    import subprocess
    import sys

    from scheduler.worker_queue import process_owner
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    host = process_owner().split(":")[0]
    predecessor = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1", owner=f"{host}:{dead.stdout.strip()}:old")
    predecessor.register()
    first, second = queue.submit(params("first")), queue.submit(params("second"))
    assert predecessor.claim(timeout=1, model="tiny").id == first.id
    successor = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    assert successor.register()  # the predecessor's pid is gone: no need to wait for its TTL
    requeued = queue.get(first.id)
    assert requeued.status == "queued" and requeued.attempts == 1 and requeued.position == 1
    assert successor.claim(timeout=1, model="tiny").id == first.id
    assert queue.get(first.id).attempts == 2
    assert queue.get(second.id).position == 1


def test_the_last_attempt_fails_the_job_with_the_reason(queue, redis_client):
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1", max_attempts=3)
    worker.register()
    job = queue.submit(params())
    for attempt in (1, 2, 3):
        claimed = worker.claim(timeout=1, model="tiny")
        assert claimed.attempts == attempt
        status = worker.put_back(claimed, f"backend died ({attempt})")
    assert status == "failed"
    failed = queue.get(job.id)
    assert failed.status == "failed" and "3 attempts" in failed.error and "backend died (3)" in failed.error
    assert queue.unfinished() == []


def test_putting_back_a_job_that_never_started_does_not_count(queue, redis_client):
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    worker.register()
    job = queue.submit(params())
    for _ in range(5):
        assert worker.put_back(worker.claim(timeout=1, model="tiny"), "backend busy", count_attempt=False) == "queued"
    assert queue.get(job.id).attempts == 0


def test_a_job_cancelled_while_its_worker_was_dead_is_not_rerun(queue, redis_client):
    dead = WorkerQueue(redis_client, "dead", "http://127.0.0.1:1", heartbeat_ttl_secs=1)
    dead.register()
    job = queue.submit(params())
    dead.claim(timeout=1, model="tiny")
    queue.cancel(job.id)
    time.sleep(1.1)  # its heartbeat expires
    other = WorkerQueue(redis_client, "other", "http://127.0.0.1:2")
    other.register()
    assert other.sweep_dead_workers() == [(job.id, "cancelled")]
    assert queue.get(job.id).status == "cancelled" and queue.unfinished() == []


def test_workers_claiming_at_once_stamp_their_starts_in_queue_order(redis_url, redis_client):
    """The claim moves the job and stamps `started_at` (Redis's time) in one step, so however
    the workers' claims interleave, the order of the starts is the order of the queue."""
    queue = JobQueue(redis_client, max_queued=200)
    ids = [queue.submit(params(f"job {i}")).id for i in range(120)]
    workers = [WorkerQueue(redis.Redis.from_url(redis_url), f"w{i}", f"http://127.0.0.1:{i + 1}") for i in range(4)]
    for worker in workers:
        assert worker.register()
    go = threading.Barrier(len(workers))

    def drain(worker):
        go.wait()
        while worker.claim(timeout=0.05) is not None:
            worker.redis.delete(worker.processing)  # the next claim, at once: no run in between

    threads = [threading.Thread(target=drain, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    starts = [queue.get(job_id).started_at for job_id in ids]
    assert all(start is not None for start in starts)
    assert starts == sorted(starts), [i for i, (a, b) in enumerate(zip(starts, starts[1:])) if a > b][:5]
    assert {queue.get(job_id).worker for job_id in ids} == {w.worker_id for w in workers}


def test_a_done_job_has_all_its_tokens_even_if_no_progress_was_written(redis_client, queue):
    """Progress writes are throttled, so a fast job may end before its first one: done means
    every token drawn, in /jobs/<id> as in the library."""
    worker = WorkerQueue(redis_client, "w", "http://127.0.0.1:1")
    assert worker.register()
    job = queue.submit(params())
    claimed = worker.claim(timeout=1)
    assert worker.finish_done(claimed, seed=1, model="tiny", images=[], process_time_secs=0.1)[0] == "done"
    assert queue.get(job.id).to_status()["progress"] == {"tokens_done": 256, "total_tokens": 256}
    failed = queue.submit(params())
    worker.finish_failed(worker.claim(timeout=1), "broken")
    assert queue.get(failed.id).tokens_done == 0  # a failed job keeps how far it got


def test_etas_count_the_candidates_and_the_running_job_s_own_pace():
    """A Best-of job generates its candidates; a running job that has gone slower than the
    measured speed so far will not make it up; one whose backend went quiet is stalled."""
    now = 1000.0
    slow = Job(id="slow", text="x", num_images=2, seed=1, status="running", started_at=now - 10,
               progress_at=now - 1, tokens_done=64, total_tokens=256)
    best_of = Job(id="best-of", text="y", num_images=2, seed=1, candidates=8)
    quiet = Job(id="quiet", text="z", num_images=2, seed=1, status="running", started_at=now - 20,
                progress_at=now - STALLED_AFTER_SECS - 1, tokens_done=128, total_tokens=256)
    estimate([(slow, "w1"), (quiet, "w2")], {"": [best_of]}, {"w1": "tiny", "w2": "tiny"},
             {"w1": JobCost(0.0, 1.0), "w2": JobCost(0.0, 1.0)}, now)
    # 64 of 256 tokens by its report 9 s in: 27 s more at that pace, 1 s of which has passed; not 0.
    assert slow.eta_secs == pytest.approx(26.0)
    assert slow.stalled_secs is None and quiet.stalled_secs == pytest.approx(STALLED_AFTER_SECS + 1)
    # w2 is free first (its job, half done 14 s in, 6 s ago, needs 8 s more); 8 candidates at 1 s each follow.
    assert best_of.eta_secs == pytest.approx(8.0 + 8.0)


def test_a_job_s_cost_is_a_fixed_part_and_a_part_per_picture_fitted_to_the_last_jobs():
    """A real model's step costs a part whatever the batch: seconds per picture measured on 2
    pictures would make an 8-picture job twice as long as it is."""
    cost = JobCost.fit([(2, 2.4), (8, 4.8), (16, 8.0)])  # 1.6 s + 0.4 s a picture
    assert (cost.fixed_secs, cost.secs_per_picture) == (pytest.approx(1.6), pytest.approx(0.4))
    assert cost.secs(4) == pytest.approx(3.2)
    # One picture count measured: the split is a guess, and its own count comes out exact.
    guess = JobCost.fit([(2, 2.4), (2, 2.4)])
    assert guess.fixed_secs == pytest.approx(FIXED_SHARE_GUESS * 2.4) and guess.secs(2) == pytest.approx(2.4)
    assert JobCost.fit([]) is None
    # Newer jobs weigh more: a backend that became twice as slow is followed within a few jobs.
    slower = [(2, 2.4), (8, 4.8)] * 4 + [(2, 4.8), (8, 9.6)] * 2
    assert JobCost.fit(slower).secs(8) == pytest.approx(9.6, rel=0.15)
    # Noise never makes a part negative.
    shrinking = JobCost.fit([(2, 5.0), (8, 1.0)])
    assert shrinking.secs_per_picture == 0.0 and 1.0 < shrinking.fixed_secs < 5.0
    assert JobCost.fit([(2, 0.1), (8, 8.0)]).fixed_secs == 0.0


def test_queued_etas_add_up_the_fitted_costs_of_the_jobs_ahead():
    now = 1000.0
    small, large = (Job(id=i, text="x", num_images=n, seed=1) for i, n in (("small", 2), ("large", 8)))
    estimate([], {"": [small, large]}, {"w1": "tiny"}, {"w1": JobCost(1.6, 0.4)}, now)
    assert small.eta_secs == pytest.approx(2.4)
    assert large.eta_secs == pytest.approx(2.4 + 4.8)


def grid_params(cells: int) -> dict:
    return validate_prompt({"text": "a fox", "grid": {"x": {"field": "seed", "values": list(range(1, cells + 1))}}})


@pytest.mark.parametrize("slots", [1, 4])
def test_a_grid_s_eta_follows_how_its_backend_runs_the_cells(queue, redis_client, slots):
    """With several slots a backend decodes a grid's cells as one batch, like an image count;
    with one, one after another: a 4-cell grid there costs four one-picture jobs."""
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    worker.register()
    worker.heartbeat(backend_status=BackendStatus.READY, model="tiny", slots=slots)
    worker.record_job_time(pictures=1, secs=2.0)
    worker.record_job_time(pictures=4, secs=3.5)  # 1.5 s + 0.5 s a picture
    grid = queue.submit(grid_params(4))
    (listed,) = queue.unfinished()
    assert listed.id == grid.id and listed.num_images == 4
    assert listed.eta_secs == pytest.approx(3.5 if slots > 1 else 4 * 2.0, abs=0.2)


def test_a_grid_whose_cells_ran_one_after_another_counts_as_one_of_them():
    grid = Job.from_request("g", grid_params(4))
    plain = Job.from_request("p", params(num_images=4))
    assert speed_sample(grid, 4, 8.0, cells_together=False) == (1, 2.0)
    assert speed_sample(grid, 4, 3.5, cells_together=True) == (4, 3.5)
    assert speed_sample(plain, 4, 3.5, cells_together=False) == (4, 3.5)


def test_an_upscale_s_eta_is_the_recent_upscales_time_not_a_generated_picture_s(queue, redis_client):
    """An upscale is measured apart from the generations: generating a picture takes 11 s here,
    upscaling one 1.5 s, so four upscales queued ahead of a prompt add 6 s to its wait, not 44."""
    worker = WorkerQueue(redis_client, "w1", "http://127.0.0.1:1")
    worker.register()
    worker.heartbeat(backend_status=BackendStatus.READY, model="tiny", slots=1)
    worker.record_job_time(pictures=1, secs=11.0)
    upscales = [queue.submit(upscale_request(f"/{i}/0.png", "a fox")) for i in range(4)]
    prompt = queue.submit(params(num_images=1))
    # Not measured yet: an upscale is taken to cost a generated picture.
    assert [job.eta_secs for job in queue.unfinished()] == pytest.approx([11.0, 22.0, 33.0, 44.0, 55.0], abs=0.2)
    assert worker.record_job_time(pictures=1, secs=1.5, upscale=True) == [(1, 1.5)]
    assert worker.record_job_time(pictures=1, secs=1.5, upscale=True) == [(1, 1.5), (1, 1.5)]
    listed = queue.unfinished()
    assert [job.id for job in listed] == [job.id for job in upscales] + [prompt.id]
    assert [job.eta_secs for job in listed] == pytest.approx([1.5, 3.0, 4.5, 6.0, 17.0], abs=0.2)
    assert JobCost.fit(job_times(redis_client.hget(queue.keys.speed, "w1"))).secs(1) == pytest.approx(11.0)
