"""Load benchmark of the frontend on loopback with wrk (Debian: `apt-get install wrk`).

Starts a real redis-server and `python -m frontend` (its own process, as deployed, access log
on), fills the library with N jobs, then drives:

  GET  /getlibrary                     the whole library (N jobs), 1 and 4 connections, and gzipped
  GET  /getlibrary?offset=0&limit=50   one page
  GET  /getlibrary?q=squirrel&limit=50 filtered page
  POST /prompt                         new jobs (keep-alive), flat out and paced to ~600/s

    python benchmarks/bench_frontend.py [--jobs 10000] [--duration 10] [--connections 8]

Aims on a 2-core machine: /getlibrary with 10,000 jobs ≤ 50 ms median; POST /prompt
≥ 500 requests/s with p99 ≤ 50 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from playground.redis_server import RedisServer, free_port

PROMPT_BODY = {"text": "the red squirrel dances in the moonlight, feet off the ground, backlit, photograph",
               "num_images": "6", "seed": 12345}
PACED_RATE = 600  # requests/s, above the aim of 500
PACED_CONNECTIONS = 16
WORDS = ["squirrel", "lightning", "cliffs", "moonlight", "glass of water", "golden hour", "robot", "castle"]


def fill_library(library_dir: Path, jobs: int) -> int:
    """library.json with `jobs` entries of 4 images each (the index only: the images are not
    read by /getlibrary). Returns the file's size."""
    library_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    entries = []
    for i in range(jobs):
        queue_id = str(uuid.uuid4())
        entries.append({
            "creation_unixtime": now - i, "queue_id": queue_id,
            "text_prompt": f"a {WORDS[i % len(WORDS)]} number {i}, photograph, dramatic lighting",
            "generated_images": [f"library/{queue_id}/{uuid.uuid4()}.png" for _ in range(4)],
            "process_time_secs": 16.3 + i % 7, "seed": 1000 + i, "num_images": 4, "top_k": None,
            "top_p": None, "temperature": None, "condition_scale": 10.0, "model": "mini"})
    data = json.dumps(entries, separators=(",", ":")).encode()
    (library_dir / "library.json").write_bytes(data)
    return len(data)


def parse_wrk(output: str) -> dict:
    def millis(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)$", output, re.M)
    return {
        "requests_per_sec": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": millis(latency["50"]), "p90_ms": millis(latency["90"]), "p99_ms": millis(latency["99"]),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "none",
    }


def run_wrk(url: str, duration: int, connections: int, script: Path | None = None,
            headers: list[str] = ()) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for header in headers:
        command += ["-H", header]
    if script:
        command += ["-s", str(script)]
    output = subprocess.run(command + [url], check=True, capture_output=True, text=True).stdout
    return parse_wrk(output)


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the frontend exited during start-up")
        try:
            requests.get(f"{url}/queue_status", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("the frontend did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")

    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        size = fill_library(work / "library", args.jobs)
        with RedisServer(work / "redis", appendonly=False) as redis_server:
            port = free_port()
            env = {**os.environ, "FRONTEND_PORT": str(port), "REDIS_URL": redis_server.url,
                   "LIBRARY_DIR": str(work / "library"), "FRONTEND_MAX_QUEUED_JOBS": "100000000"}
            with open(work / "frontend.log", "wb") as log:
                frontend = subprocess.Popen([sys.executable, "-m", "frontend"], env=env, stdout=log, stderr=log)
                try:
                    url = f"http://127.0.0.1:{port}"
                    wait_until_up(url, frontend)
                    requests.get(f"{url}/getlibrary")  # first read fills the caches
                    script = work / "prompt.lua"
                    script.write_text('wrk.method = "POST"\n'
                                      'wrk.headers["Content-Type"] = "application/json"\n'
                                      f"wrk.body = {json.dumps(json.dumps(PROMPT_BODY))}\n")
                    # Each connection waits before each request, so the server is measured at a
                    # steady rate rather than saturated (wrk's delay() is in milliseconds).
                    paced_script = work / "prompt_paced.lua"
                    pause_ms = PACED_CONNECTIONS * 1000 // PACED_RATE - 1
                    paced_script.write_text(script.read_text() + f"function delay() return {pause_ms} end\n")
                    whole = f"GET /getlibrary ({args.jobs} jobs, {size / 1e6:.1f} MB)"
                    results = {
                        f"{whole}, 1 conn": run_wrk(f"{url}/getlibrary", args.duration, 1),
                        f"{whole}, 4 conns": run_wrk(f"{url}/getlibrary", args.duration, 4),
                        "GET /getlibrary, gzip, 4 conns":
                            run_wrk(f"{url}/getlibrary", args.duration, 4, headers=["Accept-Encoding: gzip"]),
                        f"GET /getlibrary?offset=0&limit=50, {args.connections} conns":
                            run_wrk(f"{url}/getlibrary?offset=0&limit=50", args.duration, args.connections),
                        f"GET /getlibrary?q=squirrel&limit=50, {args.connections} conns":
                            run_wrk(f"{url}/getlibrary?q=squirrel&limit=50", args.duration, args.connections),
                        f"POST /prompt, {args.connections} conns, flat out":
                            run_wrk(f"{url}/prompt", args.duration, args.connections, script),
                        f"POST /prompt, {PACED_CONNECTIONS} conns, paced to ~{PACED_RATE}/s":
                            run_wrk(f"{url}/prompt", args.duration, PACED_CONNECTIONS, paced_script),
                    }
                finally:
                    frontend.terminate()
                    frontend.wait(timeout=10)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'route':<52} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, figures in results.items():
        print(f"{name:<52} {figures['requests_per_sec']:>8.0f} {figures['p50_ms']:>8.2f} "
              f"{figures['p90_ms']:>8.2f} {figures['p99_ms']:>8.2f} {figures['non_2xx']:>8}")


if __name__ == "__main__":
    main()
