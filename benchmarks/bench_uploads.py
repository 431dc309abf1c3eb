"""Hostile uploads against `python -m frontend` (its own process, a real redis-server):

  multipart  the slowest POST /prompt bodies of the largest size accepted (twice
             FRONTEND_MAX_UPLOAD_BYTES): empty parts to the end, one part of near-boundaries,
             one of line breaks, headers to their cap, a JSON body of base64 in 76-column lines;
             each request's time and the frontend's CPU time for it (from /proc, so a busy
             machine slows the first, not the second), the slowest kept (aim: under 1 s)
  memory     the frontend's peak resident memory (VmHWM, the kernel's own high-water mark, so
             no sampling can miss the peak) while N clients upload at once the costliest
             picture the limits let through: a PNG of 4096×4096 with alpha, in one colour (75 kB)

    python benchmarks/bench_uploads.py [--uploads 16] [--decodes-at-once 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_frontend import wait_until_up  # noqa: E402
from frontend.config import Config  # noqa: E402
from playground.redis_server import RedisServer, free_port  # noqa: E402
from testkit import hostile_uploads  # noqa: E402

def post(port: int, body: bytes, content_type: str) -> tuple[int, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        connection.request("POST", "/prompt", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def cpu_secs(pid: int) -> float:
    """The process's CPU time so far (user and system), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_multipart(port: int, pid: int, size: int, repeats: int = 3) -> dict[str, dict]:
    """Each worst body's status, and its slowest of `repeats` requests in time and in the
    frontend's CPU time."""
    results = {}
    for name, (body, content_type) in hostile_uploads.slowest_bodies(size).items():
        runs = []
        for _ in range(repeats):
            cpu = cpu_secs(pid)
            status, secs = post(port, body, content_type)
            runs.append((status, secs, cpu_secs(pid) - cpu))
        results[name] = {"status": runs[0][0], "bytes": len(body), "secs": round(max(r[1] for r in runs), 3),
                         "cpu_secs": round(max(r[2] for r in runs), 3)}
    return results


def upload_at_once(port: int, uploads: int) -> list[int]:
    """`uploads` clients post the costliest picture at the same moment; their statuses."""
    body = json.dumps({"text": "x", "num_images": 2,
                       "init_image_data": base64.b64encode(hostile_uploads.costliest_png()).decode()}).encode()
    barrier = threading.Barrier(uploads)
    statuses: list[int] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.connect()
        barrier.wait()
        connection.request("POST", "/prompt", body=body, headers={"Content-Type": "application/json"})
        statuses.append(connection.getresponse().status)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def measure(uploads: int, decodes_at_once: int, max_upload_bytes: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        with RedisServer(work / "redis", appendonly=False) as redis_server:
            port = free_port()
            env = {**os.environ, "FRONTEND_PORT": str(port), "REDIS_URL": redis_server.url,
                   "LIBRARY_DIR": str(work / "library"), "FRONTEND_DECODES_AT_ONCE": str(decodes_at_once),
                   "FRONTEND_MAX_UPLOAD_BYTES": str(max_upload_bytes), "LOG_LEVEL": "WARNING"}
            with open(work / "frontend.log", "wb") as log:
                frontend = subprocess.Popen([sys.executable, "-m", "frontend"], env=env, stdout=log, stderr=log)
                try:
                    wait_until_up(f"http://127.0.0.1:{port}", frontend)
                    # Warm: Pillow's plugins imported, a small picture decoded and squared.
                    post(port, json.dumps({"text": "x", "num_images": 2, "init_image_data": base64.b64encode(
                        hostile_uploads.png(64, 64)).decode()}).encode(), "application/json")
                    before = hostile_uploads.peak_memory_mib(frontend.pid)
                    started = time.perf_counter()
                    statuses = upload_at_once(port, uploads)
                    upload_secs = time.perf_counter() - started
                    peak = hostile_uploads.peak_memory_mib(frontend.pid)
                    body_limit = Config(max_upload_bytes=max_upload_bytes).body_limit("POST", "/prompt")
                    multipart = time_multipart(port, frontend.pid, body_limit)
                finally:
                    frontend.terminate()
                    frontend.wait(timeout=10)
    return {"memory": {"uploads": uploads, "decodes_at_once": decodes_at_once, "statuses": sorted(set(statuses)),
                       "peak_before_mib": round(before, 1), "peak_mib": round(peak, 1), "secs": round(upload_secs, 2)},
            "multipart": {"body_bytes": body_limit, **multipart},
            "slowest_body_secs": max(result["secs"] for result in multipart.values()),
            "slowest_body_cpu_secs": max(result["cpu_secs"] for result in multipart.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=hostile_uploads.AT_ONCE)
    parser.add_argument("--decodes-at-once", type=int, default=Config.decodes_at_once)
    parser.add_argument("--max-upload-bytes", type=int, default=Config.max_upload_bytes)
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    report = measure(args.uploads, args.decodes_at_once, args.max_upload_bytes)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    memory = report["memory"]
    print(f"{memory['uploads']} uploads of a 4096² PNG with alpha at once, {memory['decodes_at_once']} decoded at a time: "
          f"statuses {memory['statuses']}, peak memory {memory['peak_before_mib']} -> {memory['peak_mib']} MiB, "
          f"{memory['secs']} s")
    print(f"POST /prompt bodies of {report['multipart']['body_bytes']} bytes:")
    for name, result in report["multipart"].items():
        if isinstance(result, dict):
            print(f"  {name:<36} {result['status']}  {result['secs'] * 1000:8.1f} ms, "
                  f"{result['cpu_secs'] * 1000:6.0f} ms of CPU")


if __name__ == "__main__":
    main()
