"""The worker against backend behaviour the tiny model cannot produce on demand (a GPU out
of memory, a hung backend, a broken stream), played by the stand-in backend, a real HTTP
server that speaks the backend protocol; the scheduler runs in this process, built from its
Config."""
from __future__ import annotations

import base64
import itertools
import time

import pytest
from PIL import Image

from playground import pictures
from playground.library import LibraryStore
from playground.protocol import Stage
from settled import ended
from playground.queue import JobQueue
from testkit import hostile_uploads
from testkit.standin_backend import PICKED_SEED, PREVIEW_JPEG, StandInBackend
from scheduler.config import Config
from scheduler.service import Scheduler

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def backend():
    with StandInBackend() as server:
        yield server


@pytest.fixture
def scheduler(backend, redis_url, tmp_path):
    config = Config(redis_url=redis_url, backend_urls=(backend.url,), library_dir=tmp_path / "library",
                    stall_timeout_secs=1.0)
    service = Scheduler(config).start()
    yield service
    service.stop()
    assert service.join(timeout=15)


def wait_finished(queue: JobQueue, job_ids, library_dir, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not all(ended(queue, library_dir, job_id) for job_id in job_ids):
        assert time.monotonic() < deadline, [queue.get(job_id).to_status() for job_id in job_ids]
        time.sleep(0.02)
    return [queue.get(job_id) for job_id in job_ids]


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def job(text: str) -> dict:
    return {"text": text, "num_images": 2, "seed": 0}


def test_out_of_memory_in_the_backend_fails_the_job_with_its_message(backend, scheduler, redis_client, tmp_path):
    queue = JobQueue(redis_client)
    oom, after = queue.submit(job("oom")), queue.submit(job("fine"))
    oom, after = wait_finished(queue, [oom.id, after.id], tmp_path / "library")
    assert oom.status == "failed" and "RESOURCE_EXHAUSTED: Out of memory" in oom.error
    assert oom.attempts == 1 and backend.calls.count("oom") == 1  # not retried: it would fail again
    assert after.status == "done" and after.seed == PICKED_SEED  # the backend picked it for seed 0
    assert [e["queue_id"] for e in LibraryStore(tmp_path / "library").entries()] == [after.id]


def test_a_silent_backend_counts_as_lost_and_the_job_fails_after_three_attempts(backend, scheduler, redis_client, tmp_path):
    queue = JobQueue(redis_client)
    hung = queue.submit(job("hang"))
    [hung] = wait_finished(queue, [hung.id], tmp_path / "library")
    assert hung.status == "failed" and hung.attempts == 3
    assert "3 attempts" in hung.error and "connection lost" in hung.error
    assert backend.calls.count("hang") == 3


@pytest.mark.parametrize("text,error", [("garbage", "not JSON"), ("not an event", "not an event object"),
                                        ("server error", "backend answered 500")])
def test_a_garbled_stream_is_retried_then_failed(backend, scheduler, redis_client, text, error, tmp_path):
    queue = JobQueue(redis_client)
    garbled, after = queue.submit(job(text)), queue.submit(job("fine"))
    garbled, after = wait_finished(queue, [garbled.id, after.id], tmp_path / "library")
    assert garbled.status == "failed" and error in garbled.error and garbled.attempts == 3
    assert after.status == "done"


def test_config_from_env_reads_the_documented_variables(tmp_path):
    config = Config.from_env({"REDIS_URL": "redis://example:6380/1", "LIBRARY_DIR": str(tmp_path),
                              "BACKEND_URLS": "http://a:8080/, http://b:8080"})
    assert config.redis_url == "redis://example:6380/1" and config.library_dir == tmp_path
    assert config.backend_urls == ("http://a:8080", "http://b:8080")
    assert Config.from_env({}).backend_urls == ("http://127.0.0.1:8080",)
    for bad in ("http://a:1,http://a:1", "a:8080"):
        with pytest.raises(ValueError):
            Config.from_env({"BACKEND_URLS": bad})


def test_progress_reaches_redis_at_least_every_second_and_cancel_stops_the_job(backend, scheduler, redis_client, tmp_path):
    queue = JobQueue(redis_client)
    slow = queue.submit(job("slow"))
    seen: list[tuple[float, int]] = []
    while len({tokens for _, tokens in seen}) < 4:
        current = queue.get(slow.id)
        assert not current.finished, current.to_status()
        if current.status == "running" and (not seen or seen[-1][1] != current.tokens_done):
            seen.append((time.monotonic(), current.tokens_done))
        time.sleep(0.02)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert max(gaps) <= 1.0, seen  # written every progress_interval_secs (0.25 s)
    asked = time.monotonic()
    assert queue.cancel(slow.id).cancel_requested
    [slow] = wait_finished(queue, [slow.id], tmp_path / "library", timeout=5)
    assert slow.status == "cancelled" and time.monotonic() - asked < 5
    assert backend.cancelled.is_set()  # the backend was told, so it is free for the next job


def test_a_loading_backend_s_downloads_reach_the_health_report(backend, tmp_path, redis_url, redis_client):
    """What a loading backend says it is doing (stage, bytes of each file) is published with
    the worker's heartbeat, kept fresh, bounded, and dropped once the backend is ready."""
    def download(done):
        return {"name": "dalle-mini/dalle-mini/flax_model.msgpack", "bytes_done": done, "bytes_total": 1000}

    def loading():
        workers = JobQueue(redis_client).health()["workers"]
        return workers[0]["loading"] if workers else "no worker yet"

    backend.loading_details = {"stage": Stage.DOWNLOADING, "files": [download(10)]}
    backend.loading.set()
    service = Scheduler(Config(redis_url=redis_url, backend_urls=(backend.url,),
                               library_dir=tmp_path / "library", backoff_max_secs=30)).start()
    try:
        wait_until(lambda: loading() == {"stage": "downloading", "files": [download(10)]}, 10)
        # The worker keeps asking while it loads: no back-off (by now 6.4 s between questions).
        time.sleep(7)
        backend.loading_details = {"stage": Stage.DOWNLOADING, "files": [download(600)]}
        wait_until(lambda: loading()["files"] == [download(600)], 3)
        # Whatever a backend sends, the report stays small and well-formed.
        backend.loading_details = {"stage": "x" * 1000, "files": [download(5)] * 100 + ["junk", {"name": 3}]}
        wait_until(lambda: loading()["stage"] == "x" * 40, 3)
        assert loading()["files"] == [download(5)] * 16
        backend.loading.clear()
        wait_until(lambda: loading() is None, 10)
    finally:
        backend.loading.clear()
        backend.loading_details = {}
        service.stop()
        assert service.join(timeout=15)


def test_the_scheduler_rides_out_a_redis_crash(backend, tmp_path):
    """kill -9 of Redis (AOF on) under a running scheduler: it backs off, reconnects, and the
    job queued before the crash (while the backend was loading) is done after it."""
    import redis

    from playground.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    config = Config(redis_url=server.url, backend_urls=(backend.url,), library_dir=tmp_path / "library",
                    backoff_max_secs=0.5)
    service = Scheduler(config).start()
    client = redis.Redis.from_url(server.url)
    try:
        queue = JobQueue(client)
        wait_finished(queue, [queue.submit(job("before")).id], tmp_path / "library")
        backend.loading.set()
        deadline = time.monotonic() + 10
        while queue.health()["workers"][0]["backend_status"] != "loading":
            assert time.monotonic() < deadline, queue.health()
            time.sleep(0.05)
        queued = queue.submit(job("queued across the crash"))
        time.sleep(1.5)  # appendfsync everysec
        assert queue.get(queued.id).status == "queued"
        server.kill()
        time.sleep(1.0)
        server.start()
        backend.loading.clear()
        [queued] = wait_finished(queue, [queued.id], tmp_path / "library", timeout=30)
        assert queued.status == "done"
        after = queue.submit(job("after"))
        [after] = wait_finished(queue, [after.id], tmp_path / "library", timeout=30)
        assert after.status == "done"
    finally:
        service.stop()
        assert service.join(timeout=15)
        client.close()
        server.stop()


def test_previews_are_kept_while_the_job_runs_and_bad_ones_skipped(backend, scheduler, redis_client, tmp_path):
    queue = JobQueue(redis_client)
    submitted = queue.submit({**job("previews"), "keep_previews": True})
    wait_until(lambda: queue.preview(submitted.id, 0) is not None, timeout=10)
    # Only the good one got through (each bad one would have been stored, or failed the job).
    assert queue.preview(submitted.id, 1) == (128, PREVIEW_JPEG)
    assert queue.preview(submitted.id, 2) is None
    running = queue.get(submitted.id)
    assert running.status == "running" and running.preview_tokens == 128
    backend.release.set()
    (done,) = wait_finished(queue, [submitted.id], tmp_path / "library")
    assert done.status == "done" and done.preview_tokens is None
    assert queue.preview(submitted.id, 0) is None and redis_client.keys("*preview*") == []
    (entry,) = LibraryStore(tmp_path / "library").entries()
    reveal = Image.open(tmp_path / "library" / entry["reveal_images"][0].removeprefix("library/"))
    assert reveal.format == "WEBP" and reveal.n_frames == 2  # the one good preview, then the picture


@pytest.mark.parametrize("start,reason", [
    (hostile_uploads.png(4096, 1, rows=16), "4096×1 pixels"),
    (hostile_uploads.png(1, 64, rows=16), "1×64 pixels"),
    (hostile_uploads.png(1, 65536, rows=16), "more pixels than allowed"),
    (hostile_uploads.png_header(1, 16_777_216, rows=16), "more pixels than allowed"),
    (b"not a picture", "is not a PNG"),
])
def test_a_bad_start_picture_fails_its_job_at_once_with_its_reason(backend, scheduler, redis_client, tmp_path,
                                                                    start, reason, caplog):
    """A start the frontend would refuse, queued anyway (by an older frontend, or written into
    Redis): the taller picture is never stitched, the job fails on its first attempt saying
    why, no traceback is logged, and the next job runs."""
    queue = JobQueue(redis_client)
    bad = queue.submit({**job("extend me"), "init_source": "codes", "keep_rows": 8, "extend": "down",
                        "init_codes": pictures.pack_codes(range(pictures.SQUARE)),
                        "init_picture": base64.b64encode(start).decode()})
    after = queue.submit(job("fine"))
    bad, after = wait_finished(queue, [bad.id, after.id], tmp_path / "library")
    assert bad.status == "failed" and bad.attempts == 1 and reason in bad.error, bad.error
    assert bad.error.startswith("the start picture")
    assert after.status == "done"
    assert [e["queue_id"] for e in LibraryStore(tmp_path / "library").entries()] == [after.id]
    assert not [record for record in caplog.records if record.exc_info]


def test_a_start_that_fits_its_grid_is_extended(backend, scheduler, redis_client, tmp_path):
    queue = JobQueue(redis_client)
    start = hostile_uploads.png(64, 64, rows=16)
    done = queue.submit({**job("extend me"), "init_source": "codes", "keep_rows": 8, "extend": "down",
                         "init_codes": pictures.pack_codes(range(pictures.SQUARE)),
                         "init_picture": base64.b64encode(start).decode()})
    [done] = wait_finished(queue, [done.id], tmp_path / "library")
    assert done.status == "done", done.error
    [entry] = LibraryStore(tmp_path / "library").entries()
    taller = Image.open(tmp_path / "library" / entry["extended_images"][0].removeprefix("library/"))
    assert taller.size == (256, 256 + 128)  # the start scaled to the tiles' width, then 8 new rows
