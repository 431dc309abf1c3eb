"""Scheduler benchmark: dispatch latency (enqueue -> backend call) and overhead per job.

Runs a real redis-server, the real scheduler (`python -m scheduler`, one worker) and, as its
backend, a minimal HTTP stand-in that speaks the backend protocol and answers at once (two
real 256x256 PNGs per job), so every second measured is the scheduler's own: claiming,
HTTP, decoding, writing the library (with fsync) and recording the result in Redis.
Also times the JobQueue calls the frontend makes (submit, unfinished).

    .venv/bin/python benchmarks/bench_scheduler.py [--jobs 300] [--idle-samples 100]
"""
from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis
from PIL import Image

from playground.queue import JobQueue
from playground.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def noise_png() -> str:
    rng = random.Random(0)
    image = Image.frombytes("RGB", (256, 256), bytes(rng.randrange(256) for _ in range(256 * 256 * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class InstantBackend(ThreadingHTTPServer):
    """The backend protocol with no model: records when each /generate arrives."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.png = noise_png()
        self.arrivals: dict[str, float] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json({"status": "ready", "model": "instant", "devices": [], "busy": False, "job_id": None})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/cancel":
            return self._json({"cancelled": False})
        self.server.arrivals[body["job_id"]] = time.time()
        lines = [
            {"event": "started", "seed": body["seed"] or 1, "total_tokens": 256},
            {"event": "progress", "tokens_done": 256, "total_tokens": 256},
            {"event": "done", "seed": body["seed"] or 1, "model": "instant",
             "params": {"top_k": 50, "top_p": 1.0, "temperature": 1.0, "condition_scale": 10.0},
             "images": [self.server.png] * body["num_images"], "timings": {"total_secs": 0.0}},
        ]
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        client = redis.Redis.from_url(server.url)
        queue = JobQueue(client, max_queued=max(args.jobs, 1000) + 10)
        params = {"text": "benchmark", "num_images": 2, "seed": 1}

        submit_times = []
        for _ in range(1000):
            start = time.perf_counter()
            queue.submit(params)
            submit_times.append(time.perf_counter() - start)
        unfinished_times = []
        client.ltrim(queue.keys.queue, 0, 99)  # 100 waiting jobs, a busy evening
        for _ in range(200):
            start = time.perf_counter()
            queue.unfinished()
            unfinished_times.append(time.perf_counter() - start)
        client.flushall()

        backend = InstantBackend()
        threading.Thread(target=backend.serve_forever, daemon=True).start()
        env = {**os.environ, "REDIS_URL": server.url, "BACKEND_URLS": backend.url,
               "LIBRARY_DIR": str(Path(tmp) / "library")}
        with open(Path(tmp) / "scheduler.log", "wb") as log:  # the child keeps its own copy
            scheduler = subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=REPO_ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not any(w["alive"] and w["backend_status"] == "ready" for w in queue.health()["workers"]):
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
        finally:
            scheduler.terminate()
            scheduler.wait(20)
            backend.shutdown()

        print(f"JobQueue.submit (one client, one round trip): {ms(submit_times)}")
        print(f"JobQueue.unfinished with 100 queued jobs: {ms(unfinished_times)}")
        print(f"dispatch latency, idle worker (enqueue -> backend receives POST /generate): {ms(dispatch)}")
        print(f"throughput with an instant backend: {args.jobs} jobs in {drained:.2f} s = "
              f"{args.jobs / drained:.1f} jobs/s, {drained / args.jobs * 1000:.1f} ms per job")
        print(f"  next dispatch after a job is recorded done: {ms(gaps)}")
        print(f"  backend call -> job done (2 PNGs decoded, written with fsync, library.json, Redis): {ms(handling)}")


if __name__ == "__main__":
    main()
