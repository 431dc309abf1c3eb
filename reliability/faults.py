"""Faults: kill -9 of each service in turn during a job, then restart it; the backend slow to
become ready; the library's disk full or read-only. After each, every job the scenario
submitted must be done, failed with a reason, cancelled or still queued (none lost), and
library.json valid.
"""
from __future__ import annotations

import errno
import os
import time

import requests

from playground.protocol import BackendStatus
from reliability.cluster import Client, Cluster, Recorder, wait_for
from reliability.scenario import ScenarioResult, Timer, finish

SETTLE_SECS = 60        # every job of a fault scenario ends within this once the service is back
JOBS_PER_FAULT = 4


def submit_many(client: Client, prefix: str, count: int, first_images: int = 2) -> list[str]:
    """`count` prompts; the first with `first_images` images (8 makes it the longest job, the
    one a fault interrupts), the others with 2."""
    ids = []
    for i in range(count):
        queue_id = client.submit(f"{prefix} {i}: a lighthouse in a storm, oil painting", seed=1000 + i,
                                 num_images=first_images if i == 0 else 2)
        if queue_id is None:
            raise AssertionError(f"POST /prompt refused {prefix} {i}")
        ids.append(queue_id)
    return ids


def wait_generating(client: Client, job_id: str, timeout: float = 60) -> None:
    """Until the job is running (claimed by the worker and sent to the backend)."""
    def generating():
        answer = client.job(job_id)
        body = answer[1] if answer else {}
        return body.get("status") == "running"
    wait_for(generating, timeout, f"job {job_id} generating", interval=0.02)


def frontend_alive(cluster: Cluster) -> bool:
    try:
        return requests.get(cluster.frontend.url + "/openapi.json", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _kill_during_job(cluster: Cluster, service: str) -> ScenarioResult:
    what = {"frontend": "the frontend", "scheduler": "the scheduler", "backend": "the backend (gunicorn and its worker)",
            "redis": "redis-server (append-only file on)"}[service]
    result = ScenarioResult(f"kill-{service}", "faults", f"kill -9 of {what} while a job runs, then restart it")
    recorder = Recorder()
    client = cluster.client(recorder)
    with Timer() as timer:
        ids = submit_many(client, f"kill {service}", JOBS_PER_FAULT, first_images=8)
        wait_generating(client, ids[0])
        before = client.job(ids[0])[1]
        if service == "frontend":
            cluster.frontend.kill()
            result.check("frontend down after kill -9", not frontend_alive(cluster))
            time.sleep(1.0)  # the jobs go on without it
            cluster.frontend.start().wait_healthy(timeout=60, path="/openapi.json")
        elif service == "scheduler":
            cluster.scheduler.kill()
            still = client.job(ids[0])[1]
            result.check("the killed worker's job still shows running", still.get("status") == "running",
                         f"status {still.get('status')}")
            cluster.scheduler.start()
        elif service == "backend":
            cluster.backend.kill()
            cluster.backend.start()
            restarted = time.monotonic()
            cluster.backend.wait_healthy(timeout=300)
            result.figures["backend ready again after (s)"] = round(time.monotonic() - restarted, 1)
        elif service == "redis":
            cluster.redis.kill()
            down = client.request("GET", "/queue_status", "GET /queue_status (Redis down)", expect_5xx=True)
            refused = client.request("POST", "/prompt", "POST /prompt (Redis down)", expect_5xx=True,
                                     json={"text": "while Redis is down", "num_images": "2", "seed": 1})
            result.check("frontend answers 503 while Redis is down",
                         down is not None and down.status_code == 503 and refused is not None
                         and refused.status_code == 503,
                         f"GET /queue_status {getattr(down, 'status_code', None)}, "
                         f"POST /prompt {getattr(refused, 'status_code', None)}")
            time.sleep(2.0)
            cluster.restart_redis()
        restarted_at = time.monotonic()
        # Jobs take about a second and the scheduler backs off at most 5 s: 30 s is ample after Redis.
        settle = 30 if service == "redis" else SETTLE_SECS
        settled = cluster.wait_settled(client, ids, settle)
        result.figures["jobs settled after restart (s)"] = round(time.monotonic() - restarted_at, 1)
        result.check(f"every job ends within {settle} s (none stuck running or queued)", settled,
                     _stuck(cluster, client, ids))
        accounting = cluster.account(client, ids)
        victim = client.job(ids[0])[1]
        result.figures["interrupted job"] = (f"{victim.get('status')} after {victim.get('attempts')} attempt(s)"
                                             f"{'; last error: ' + victim['last_error'][:80] if victim.get('last_error') else ''}")
        result.figures["progress when killed (tokens)"] = (before.get("progress") or {}).get("tokens_done")
        result.check("all jobs done", accounting.done == len(ids),
                     f"{accounting.as_dict()} {dict(accounting.failure_reasons)}")
        cluster.wait_healthy(timeout=120)
    result.seconds = round(timer.seconds, 1)
    return finish(result, recorder, accounting, cluster.library_check(), expect_no_500=True)


def _stuck(cluster: Cluster, client: Client, ids: list[str]) -> str:
    try:
        bodies = cluster.statuses(client, ids)
    except ConnectionError as exc:
        return str(exc)
    stuck = [f"{job_id[:8]} {body.get('status')} (attempts {body.get('attempts')}, "
             f"tokens {(body.get('progress') or {}).get('tokens_done')})"
             for job_id, body in bodies.items() if body and body.get("status") in ("running", "queued")]
    return ", ".join(stuck)


def kill_frontend(cluster: Cluster) -> ScenarioResult:
    return _kill_during_job(cluster, "frontend")


def kill_scheduler(cluster: Cluster) -> ScenarioResult:
    return _kill_during_job(cluster, "scheduler")


def kill_backend(cluster: Cluster) -> ScenarioResult:
    return _kill_during_job(cluster, "backend")


def kill_redis(cluster: Cluster) -> ScenarioResult:
    return _kill_during_job(cluster, "redis")


def slow_backend(cluster: Cluster) -> ScenarioResult:
    """The scheduler starts first and the backend only later: jobs wait queued, none fails."""
    result = ScenarioResult("slow-backend", "faults",
                            "scheduler started first, backend started 4 s later (then loads its model)")
    recorder = Recorder()
    client = cluster.client(recorder)
    with Timer() as timer:
        cluster.scheduler.kill()
        cluster.backend.stop()
        ids = submit_many(client, "slow backend", 3)
        cluster.scheduler.start()
        time.sleep(4.0)
        bodies = cluster.statuses(client, ids)
        result.check("jobs wait queued while no backend is up",
                     all(b and b.get("status") == "queued" for b in bodies.values()),
                     str({k[:8]: (b or {}).get("status") for k, b in bodies.items()}))
        health = client.request("GET", "/health", "GET /health (no backend)")
        backends = health.json().get("backends") if health is not None else None
        result.check("/health says 503 and why", health is not None and health.status_code == 503
                     and backends and backends[0]["status"] != BackendStatus.READY,
                     f"{getattr(health, 'status_code', None)} {backends}")
        cluster.backend.start()
        started = time.monotonic()
        cluster.backend.wait_healthy(timeout=300)
        result.figures["backend load time (s)"] = round(time.monotonic() - started, 1)
        settled = cluster.wait_settled(client, ids, SETTLE_SECS)
        result.figures["first jobs done after backend start (s)"] = round(time.monotonic() - started, 1)
        result.check(f"every job ends within {SETTLE_SECS} s", settled, _stuck(cluster, client, ids))
        accounting = cluster.account(client, ids)
        result.check("all jobs done", accounting.done == len(ids), str(accounting.as_dict()))
        cluster.wait_healthy(timeout=60)
    result.seconds = round(timer.seconds, 1)
    return finish(result, recorder, accounting, cluster.library_check())


def _fill(path, chunk: int = 1 << 20) -> int:
    """Write zeros into `path` until the file system is full; the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (chunk, 4096, 1):
            for _ in range(1 << 16):  # bounded; a 256 MB tmpfs fills long before
                try:
                    count = os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += count
                if count < size:
                    break
    finally:
        os.close(fd)
    return written


def _an_image(cluster: Cluster) -> str | None:
    """The URL of some image in the library, for a delete attempt."""
    import json
    try:
        for entry in json.loads((cluster.library_dir / "library.json").read_bytes()):
            if entry.get("generated_images"):
                return entry["generated_images"][0]
    except (OSError, ValueError):
        pass
    return None


def _library_storage_fault(cluster: Cluster, kind: str) -> ScenarioResult:
    title = {"full": "the library's disk full (a tmpfs filled to the last byte)",
             "readonly": "the library's file system remounted read-only"}[kind]
    result = ScenarioResult(f"library-{kind}", "faults", title)
    if not cluster.mounted:
        result.skipped = f"the library is not on its own tmpfs ({cluster.mount_refused})"
        return result
    recorder = Recorder()
    client = cluster.client(recorder)
    filler = cluster.library_dir / ".filler"
    with Timer() as timer:
        before = (cluster.library_dir / "library.json").read_bytes() if (cluster.library_dir / "library.json").exists() else b""
        image = _an_image(cluster)
        try:
            if kind == "full":
                result.figures["filler bytes"] = _fill(filler)
            else:
                cluster.remount("ro")
            ids = submit_many(client, f"library {kind}", 1)
            settled = cluster.wait_settled(client, ids, SETTLE_SECS)
            result.check("the job written to a broken library ends", settled, _stuck(cluster, client, ids))
            body = client.job(ids[0])[1]
            expected = "No space left" if kind == "full" else "Read-only file system"
            result.figures["job while broken"] = f"{body.get('status')}: {(body.get('error') or '')[:160]}"
            result.check("it fails with the reason", body.get("status") == "failed"
                         and expected in (body.get("error") or ""), f"{body.get('status')} {body.get('error')}")
            if image:
                # 503 with Retry-After is the documented answer while the library cannot be written.
                response = client.request("DELETE", "/" + image, "DELETE /library/{id}/{image}.png (broken disk)",
                                          expect_5xx=True)
                status = getattr(response, "status_code", None)
                result.figures["delete while broken"] = f"{status} {response.text[:120] if response is not None else ''}"
                result.check("a delete on the broken library answers an error, not 500",
                             status is not None and status != 500 and status >= 400, f"answered {status}")
                result.check("that error is 503 with Retry-After", status == 503
                             and response.headers.get("Retry-After") is not None, f"answered {status}")
            listed = client.request("GET", "/getlibrary", "GET /getlibrary (broken disk)")
            result.check("the library is still listed", listed is not None and listed.status_code == 200,
                         f"{getattr(listed, 'status_code', None)}")
            result.check("library.json unchanged while broken",
                         not before or (cluster.library_dir / "library.json").read_bytes() == before)
        finally:
            if kind == "full":
                filler.unlink(missing_ok=True)
            else:
                cluster.remount("rw")
        after = submit_many(client, f"library {kind} repaired", 1)
        settled = cluster.wait_settled(client, after, SETTLE_SECS)
        body = client.job(after[0])[1]
        result.check("after the repair a new job is done", settled and body.get("status") == "done",
                     f"{body.get('status')} {body.get('error')}")
        accounting = cluster.account(client, ids + after)
    result.seconds = round(timer.seconds, 1)
    return finish(result, recorder, accounting, cluster.library_check())


def library_full(cluster: Cluster) -> ScenarioResult:
    return _library_storage_fault(cluster, "full")


def library_readonly(cluster: Cluster) -> ScenarioResult:
    return _library_storage_fault(cluster, "readonly")


SCENARIOS = [kill_frontend, kill_scheduler, kill_backend, kill_redis, slow_backend, library_full, library_readonly]
