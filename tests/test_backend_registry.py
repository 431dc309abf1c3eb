"""Backends that announce themselves in Redis are served without touching the scheduler:
found within seconds, let go when their announcements stop, served again when they return."""
from __future__ import annotations

import json
import threading
import time

import pytest
import redis
import requests

from backend.healthcheck import check
from playground.backend_registry import Announcer, BackendRegistry
from playground.protocol import loading_report, ready_report
from playground.queue import JobQueue
from playground.redis_server import RedisServer
from testkit.processes import REPO_ROOT, backend_process, scheduler_process
from testkit.standin_backend import StandInBackend
from scheduler.config import Config
from scheduler.service import Scheduler
from scheduler.worker import worker_id_for

pytestmark = pytest.mark.timeout(300)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def finished(queue: JobQueue, job_id: str):
    job = queue.get(job_id)
    return job if job.finished else None


class Announcing:
    """Announces a stand-in backend as a real one does, with a short TTL, until paused."""

    def __init__(self, registry: BackendRegistry, url: str, ttl_secs: int = 2):
        self.registry, self.url, self.ttl_secs = registry, url, ttl_secs
        self.on = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.done.wait(0.5):
            if self.on.is_set():
                self.registry.announce(self.url, ready_report("stand-in"), self.ttl_secs)


def test_an_announced_backend_is_served_let_go_and_served_again(redis_client, redis_url, tmp_path):
    queue = JobQueue(redis_client)
    with StandInBackend() as backend:
        announcing = Announcing(BackendRegistry(redis_client), backend.url)
        service = Scheduler(Config(redis_url=redis_url, backend_urls=(), library_dir=tmp_path / "library")).start()
        try:
            waiting = queue.submit({"text": "before any backend", "num_images": 2, "seed": 1})
            time.sleep(1.5)
            assert queue.get(waiting.id).status == "queued" and queue.health()["workers"] == []

            joined = time.monotonic()
            announcing.on.set()
            assert wait_until(lambda: finished(queue, waiting.id), 10, "the first job").status == "done"
            print(f"announced -> first job done in {time.monotonic() - joined:.2f} s")
            assert [w["backend_url"] for w in queue.health()["workers"]] == [backend.url]

            announcing.on.clear()  # the backend stops announcing (killed, or cut off from Redis)
            wait_until(lambda: queue.health()["workers"] == [], 10, "the worker to let go")
            heartbeat = f"heartbeat {worker_id_for(backend.url)}"
            wait_until(lambda: heartbeat not in {t.name for t in threading.enumerate()}, 5, "its heartbeat to end")
            later = queue.submit({"text": "while it is gone", "num_images": 2, "seed": 1})
            time.sleep(1.5)
            assert queue.get(later.id).status == "queued" and backend.calls == ["before any backend"]

            announcing.on.set()  # it comes back
            assert wait_until(lambda: finished(queue, later.id), 10, "the job after its return").status == "done"
        finally:
            announcing.done.set()
            service.stop()
            assert service.join(timeout=15)


def test_an_announcement_says_only_which_backend_it_is_and_its_status(redis_client):
    """Schedulers read only that an announcement lives and ask the backend's /health for the
    rest: the downloads of a loading backend, its devices and its own errors stay out of Redis."""
    registry = BackendRegistry(redis_client)
    downloading = {"stage": "downloading", "files": [{"name": "a/b", "bytes_done": 1, "bytes_total": 2}]}
    registry.announce("http://loading:8080", {**loading_report("mega", downloading), "announce": {"error": None}})
    registry.announce("http://ready:8080", ready_report("mini", devices=["cuda:0"], busy=True, job_id="x"))
    assert registry.live() == {"http://loading:8080": {"url": "http://loading:8080", "status": "loading", "model": "mega"},
                               "http://ready:8080": {"url": "http://ready:8080", "status": "ready", "model": "mini"}}


def test_a_backend_whose_announcement_expired_leaves_the_set_and_one_announcing_again_returns(redis_client):
    """The set of announced URLs is pruned as it is read: a backend that came and went (a
    machine retired, a URL changed) is not looked up again on every discovery, for ever."""
    registry = BackendRegistry(redis_client)
    members = lambda: {url.decode() for url in redis_client.smembers(registry.keys.backends)}  # noqa: E731
    registry.announce("http://gone:8080", ready_report("mini"), ttl_secs=1)
    registry.announce("http://staying:8080", ready_report("mini"), ttl_secs=30)
    assert set(registry.live()) == members() == {"http://gone:8080", "http://staying:8080"}
    wait_until(lambda: not redis_client.exists(registry.keys.backend("http://gone:8080")), 5, "the key to expire")

    assert set(registry.live()) == {"http://staying:8080"}
    assert members() == {"http://staying:8080"}
    registry.announce("http://gone:8080", ready_report("mini"))  # it comes back
    assert set(registry.live()) == members() == {"http://gone:8080", "http://staying:8080"}
    # Seen expired by a reader, announced again before it prunes: it stays.
    registry.forget_expired(["http://gone:8080"])
    assert members() == {"http://gone:8080", "http://staying:8080"}


def test_a_real_backend_announces_itself_to_a_scheduler_without_backend_urls(
        redis_client, redis_url, tmp_path, model_cache_dir):
    queue = JobQueue(redis_client)
    registry = BackendRegistry(redis_client)
    backend = backend_process(tmp_path, model_cache_dir, extra_env={
        "REDIS_URL": redis_url, "BACKEND_WARMUP_BATCH_SIZES": "2"})
    backend.env["BACKEND_ADVERTISE_URL"] = backend.url
    scheduler = scheduler_process(tmp_path, redis_url, ["none"], tmp_path / "library")
    try:
        backend.start()
        # At once, while the model still loads: the UI shows it.
        seen = wait_until(lambda: registry.live().get(backend.url), 30, "the announcement")
        assert seen["model"] == "tiny" and seen["status"] in ("loading", "ready")
        scheduler.start()
        job = queue.submit({"text": "a red circle", "num_images": 2, "seed": 3})
        assert wait_until(lambda: finished(queue, job.id), 240, "the job").status == "done"
        assert registry.live()[backend.url]["status"] == "ready"

        backend.kill()
        wait_until(lambda: backend.url not in registry.live(), 10, "the announcement to expire")
        wait_until(lambda: queue.health()["workers"] == [], 10, "the scheduler to let the backend go")
        assert scheduler.alive()
    finally:
        backend.stop()
        scheduler.stop()


def test_a_backend_that_cannot_announce_itself_says_why_on_health_and_turns_unhealthy(
        tmp_path, model_cache_dir):
    """A wrong password in REDIS_URL: the main machine never hears of the backend, so the
    backend itself must say so, on /health and through its container health check."""
    server = RedisServer(tmp_path / "redis").start()
    backend = backend_process(tmp_path, model_cache_dir, extra_env={
        "REDIS_URL": f"redis://:wrong-secret@127.0.0.1:{server.port}/0"})
    backend.env["BACKEND_ADVERTISE_URL"] = backend.url
    admin = redis.Redis.from_url(server.url)
    try:
        admin.config_set("requirepass", "s3cret")
        backend.start()
        expected = (f"cannot announce {backend.url} in Redis at 127.0.0.1:{server.port}/0: "
                    "AuthenticationError: invalid username-password pair or user is disabled.")
        health = wait_until(lambda: (state := announce_state(backend)).get("error") and state, 30,
                            "/health to report the announce error")
        assert health["error"] == expected and health["url"] == backend.url
        assert "wrong-secret" not in json.dumps(health)
        # Within the grace period the container stays healthy (a Redis restart takes seconds);
        # after it, the same answer is unhealthy, with the reason in the check's one line.
        code, line = check(backend.url + "/health")
        assert code == 0 and line.startswith(f"announce: {expected} (for "), line
        code, line = check(backend.url + "/health", announce_grace_secs=0)
        assert code == 1 and line.startswith(f"announce: {expected} (for "), line
        assert backend.log_tail().count("cannot announce") == 1, "logged once per outage, not every second"

        admin.config_set("requirepass", "wrong-secret")  # the password put right
        wait_until(lambda: (state := announce_state(backend)) and state["error"] is None, 10, "the error to clear")
        listed = BackendRegistry(redis.Redis.from_url(backend.env["REDIS_URL"])).live()
        assert backend.url in listed
        assert not check(backend.url + "/health", announce_grace_secs=0)[1].startswith("announce:")
    finally:
        backend.stop()
        admin.close()
        server.stop()


def announce_state(backend) -> dict:
    """The `announce` part of the backend's /health ({} while it does not answer)."""
    try:
        return requests.get(backend.url + "/health", timeout=2).json().get("announce") or {}
    except (requests.RequestException, ValueError):
        return {}


def test_the_troubleshooting_entry_quotes_the_announce_error():
    registry = BackendRegistry(redis.Redis.from_url("redis://:s3cret@192.168.1.10:6379/0"))
    announcer = Announcer(registry, "http://192.168.1.20:8080", dict)
    message = announcer.describe_failure(redis.AuthenticationError("invalid username-password pair or user is disabled."))
    docs = " ".join((REPO_ROOT / "docs" / "docker.md").read_text(encoding="utf-8").split())
    assert f"`{message}`" in docs, message
