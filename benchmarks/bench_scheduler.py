"""Scheduler benchmark: dispatch latency (enqueue -> backend call), overhead per job, and how
soon a backend that announces itself gets its first job.

Runs a real redis-server, the real scheduler (`python -m scheduler`, one worker) and, as its
backend, the stand-in backend (testkit), which answers at once (two 256x256 PNGs
of noise per job), so every second measured is the scheduler's own: claiming,
HTTP, decoding, writing the library (with fsync) and recording the result in Redis.
Also times the JobQueue calls the frontend makes (submit, unfinished). Last, with the
worker busy on a backlog of 3-second jobs, new backends announce themselves in Redis one
after the other (playground/backend_registry.py); measured: announcement -> its first job.

    .venv/bin/python benchmarks/bench_scheduler.py [--jobs 300] [--idle-samples 100]
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from PIL import Image

from playground.backend_registry import Announcer, BackendRegistry
from playground.protocol import BackendStatus, ready_report
from playground.queue import JobQueue
from playground.redis_server import RedisServer
from testkit.standin_backend import StandInBackend

REPO_ROOT = Path(__file__).resolve().parent.parent


def noise_png() -> bytes:
    """A 256x256 PNG of noise: as large as a generated picture, so decoding and writing it cost as much."""
    rng = random.Random(0)
    image = Image.frombytes("RGB", (256, 256), bytes(rng.randrange(256) for _ in range(256 * 256 * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ms(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:.2f} ms, p99 {percentile(values, 0.99) * 1000:.2f} ms, "
            f"max {max(values) * 1000:.2f} ms (n={len(values)})")


def wait_done(queue: JobQueue, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not queue.get(job_id).finished:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not finish")
        time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs queued at once for the throughput run")
    parser.add_argument("--idle-samples", type=int, default=100, help="one-at-a-time jobs for dispatch latency")
    parser.add_argument("--joins", type=int, default=5, help="backends that join by announcing themselves")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        client = redis.Redis.from_url(server.url)
        queue = JobQueue(client, max_queued=max(args.jobs, 1000) + 10)
        # Routed to the backend's model, as the frontend does once a backend has reported it.
        params = {"text": "benchmark", "num_images": 2, "seed": 1, "model": "stand-in"}

        submit_times = []
        for _ in range(1000):
            start = time.perf_counter()
            queue.submit(params)
            submit_times.append(time.perf_counter() - start)
        unfinished_times = []
        client.ltrim(queue.keys.queue_of("stand-in"), 0, 99)  # 100 waiting jobs, a busy evening
        for _ in range(200):
            start = time.perf_counter()
            queue.unfinished()
            unfinished_times.append(time.perf_counter() - start)
        client.flushall()

        backend = StandInBackend(png=noise_png()).start()
        env = {**os.environ, "REDIS_URL": server.url, "BACKEND_URLS": backend.url,
               "LIBRARY_DIR": str(Path(tmp) / "library")}
        with open(Path(tmp) / "scheduler.log", "wb") as log:  # the child keeps its own copy
            scheduler = subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=REPO_ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not any(w["alive"] and w["backend_status"] == BackendStatus.READY for w in queue.health()["workers"]):
                if time.monotonic() > deadline:
                    raise RuntimeError("the scheduler did not start")
                time.sleep(0.05)

            dispatch = []
            for _ in range(args.idle_samples):
                time.sleep(0.05)  # the worker is idle, blocked in BLMOVE
                job = queue.submit(params)
                wait_done(queue, job.id)
                dispatch.append(backend.arrivals[job.id] - job.created_at)

            ids = [queue.submit(params).id for _ in range(args.jobs)]
            start = time.time()
            wait_done(queue, ids[-1], timeout=600)
            drained = time.time() - start
            jobs = [queue.get(job_id) for job_id in ids]
            assert all(job.status == "done" for job in jobs), [j.error for j in jobs if j.status != "done"]
            # From one job being recorded done to the backend receiving the next one.
            gaps = [backend.arrivals[b.id] - a.finished_at for a, b in itertools.pairwise(jobs)]
            # From the backend's call to the job recorded done (the backend itself takes ~0).
            handling = [job.finished_at - backend.arrivals[job.id] for job in jobs]

            joins = measure_joins(queue, client, args.joins)
        finally:
            scheduler.terminate()
            scheduler.wait(20)
            backend.stop()

        print(f"JobQueue.submit (one client, one round trip): {ms(submit_times)}")
        print(f"JobQueue.unfinished with 100 queued jobs: {ms(unfinished_times)}")
        print(f"dispatch latency, idle worker (enqueue -> backend receives POST /generate): {ms(dispatch)}")
        print(f"throughput with an instant backend: {args.jobs} jobs in {drained:.2f} s = "
              f"{args.jobs / drained:.1f} jobs/s, {drained / args.jobs * 1000:.1f} ms per job")
        print(f"  next dispatch after a job is recorded done: {ms(gaps)}")
        print(f"  backend call -> job done (2 PNGs decoded, written with fsync, library.json, Redis): {ms(handling)}")
        print(f"a backend announcing itself -> its first job, with jobs waiting: {ms(joins)}")


def measure_joins(queue: JobQueue, client: redis.Redis, count: int) -> list[float]:
    """Seconds from a new backend's first announcement to its first /generate, each joining
    while the others are busy with 3-second jobs and more wait."""
    registry = BackendRegistry(client)
    steady = {"text": "steady", "num_images": 2, "seed": 1, "model": "stand-in"}
    ids = [queue.submit(steady).id for _ in range(3 * (count + 1))]
    joined, announcers, seconds = [], [], []
    try:
        for _ in range(count):
            backend = StandInBackend(png=noise_png()).start()
            joined.append(backend)
            report = ready_report("stand-in")
            started = time.time()
            announcers.append(Announcer(registry, backend.url, lambda report=report: report).start())
            deadline = time.monotonic() + 30
            while not backend.arrivals:
                if time.monotonic() > deadline:
                    raise RuntimeError("an announced backend got no job within 30 s")
                time.sleep(0.002)
            seconds.append(min(backend.arrivals.values()) - started)
        for job_id in ids:
            queue.cancel(job_id)
    finally:
        for announcer in announcers:
            announcer.stop.set()
        for backend in joined:
            backend.stop()
    return seconds


if __name__ == "__main__":
    main()
