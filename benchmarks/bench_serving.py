"""Batched serving through the whole stack: a backend with one slot against one with several
(BACKEND_SLOTS), each behind its own scheduler and frontend, on one redis-server (issue 30).

Both stacks run at once but only one works at a time: the other's backend sits idle. Each
round submits `--jobs` jobs of `--images` images (different prompts, seeds and sampling
values) to POST /prompt of one stack, waits for all of them, then does the same on the other;
the rounds alternate, so load on this shared machine falls on both alike. Then a lone job on
an empty queue, alternately. Reported: jobs per minute (jobs / the time from the first submit
to the last done), each job's latency from its submit to done (`finished_at - created_at` of
GET /jobs/<id>: Redis's clock), and the lone job's latency. The backends are the real ones
(`python -m backend`); the model is mini at its real size with random weights (written once
into --cache-dir, as bench_engine.py does), or the shipped demo model (`--model demo`).

    .venv/bin/python benchmarks/bench_serving.py                         # mini, 8 jobs of 2 images, slots 1 vs 8
    .venv/bin/python benchmarks/bench_serving.py --model demo --rounds 1 --lone-rounds 1   # quick

Targets (issue 30, a 2-core CPU, mini): at least 2x the jobs per minute; the lone job no more
than 5 % slower. Prints a JSON report at the end (also written with --json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import SIZES, write_random_model  # noqa: E402

from playground.redis_server import RedisServer  # noqa: E402
from testkit.processes import backend_process, frontend_process, scheduler_process  # noqa: E402

PROMPTS = ["a lighthouse on a cliff at sunset", "a red circle", "two cats on a sofa", "a blue square",
           "an oil painting of a harbour", "a green triangle above a yellow star", "a city at night",
           "a bowl of fruit"]
SAMPLING = [{"gen_top_k": 50, "gen_top_p": 1.0, "temperature": 1.0, "condition_scale": 10.0},
            {"gen_top_k": 20, "gen_top_p": 0.9, "temperature": 0.8, "condition_scale": 3.0},
            {"gen_top_k": 100, "gen_top_p": 0.95, "temperature": 1.2, "condition_scale": 7.5},
            {"gen_top_k": 8, "gen_top_p": 1.0, "temperature": 0.9, "condition_scale": 12.0}]
POLL_SECS = 0.1


class Stack:
    """A backend with `slots` slots, its scheduler and frontend, under their own Redis prefix."""

    def __init__(self, workdir: Path, redis_url: str, model: str, cache_dir: Path, slots: int, images: int):
        self.slots = slots
        prefix = {"REDIS_PREFIX": f"bench{slots}"}
        logs, library = workdir / f"slots-{slots}" / "logs", workdir / f"slots-{slots}" / "library"
        self.backend = backend_process(logs, cache_dir, model=model, extra_env={
            "BACKEND_SLOTS": str(slots), "BACKEND_WARMUP_BATCH_SIZES": str(images)})
        self.scheduler = scheduler_process(logs, redis_url, [self.backend.url], library, extra_env=prefix)
        self.frontend = frontend_process(logs, redis_url, library, extra_env=prefix)
        self.url = self.frontend.url
        self.session = requests.Session()

    def start(self) -> Stack:
        for process in (self.backend, self.scheduler, self.frontend):
            process.start()
        return self

    def wait_ready(self, timeout: float) -> None:
        self.frontend.wait_until(lambda: _ok(self.url + "/health"), timeout, "200 from /health", interval=0.5)

    def stop(self) -> None:
        for process in (self.frontend, self.scheduler, self.backend):
            process.stop()

    def run(self, bodies: list[dict], timeout: float) -> dict:
        """Submit every body at once; wait for all: the round's time and each job's latency."""
        started = time.time()
        ids = []
        for body in bodies:
            response = self.session.post(self.url + "/prompt", json=body, timeout=30)
            response.raise_for_status()
            ids.append(response.json()["queue_id"])
        ended: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while len(ended) < len(ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"slots {self.slots}: {len(ids) - len(ended)} jobs not done in {timeout} s")
            for queue_id in ids:
                if queue_id not in ended:
                    status = self.session.get(f"{self.url}/jobs/{queue_id}", timeout=30).json()
                    if status["status"] in ("done", "failed", "cancelled") and status.get("finished_at"):
                        if status["status"] != "done":
                            raise RuntimeError(f"job {queue_id} {status['status']}: {status.get('error')}")
                        ended[queue_id] = status
            time.sleep(POLL_SECS)
        latencies = [ended[queue_id]["finished_at"] - ended[queue_id]["created_at"] for queue_id in ids]
        first = min(ended[queue_id]["created_at"] for queue_id in ids)
        secs = max(ended[queue_id]["finished_at"] for queue_id in ids) - first
        return {"secs": secs, "jobs_per_minute": 60 * len(ids) / secs, "latencies_secs": latencies,
                "wall_secs": time.time() - started}


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def job_bodies(count: int, images: int, round_index: int) -> list[dict]:
    # A new seed each round: the library would otherwise hold the same pictures twice, which is fine,
    # but different seeds keep any cache from flattering a later round.
    return [{"text": PROMPTS[i % len(PROMPTS)], "num_images": images, "seed": 1000 * round_index + i + 1,
             **SAMPLING[i % len(SAMPLING)]} for i in range(count)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES) + ["demo"], default="mini")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--images", type=int, default=2, help="images per job")
    parser.add_argument("--slots", type=int, default=8, help="the batched backend's BACKEND_SLOTS")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lone-rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--ready-timeout", type=float, default=3600, help="seconds for both backends to compile")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    if args.model in SIZES:
        model = str(write_random_model(args.cache_dir / f"bench-{args.model}-float32", args.model, "float32").resolve())
    else:
        model = args.model
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as work:
        workdir = Path(work)
        redis_server = RedisServer(workdir / "redis").start()
        stacks = [Stack(workdir, redis_server.url, model, args.cache_dir.resolve(), slots, args.images)
                  for slots in (1, args.slots)]
        try:
            started = time.monotonic()
            for stack in stacks:  # one after the other: two compiles at once would take as long
                stack.start().wait_ready(args.ready_timeout)
            report = {"model": args.model, "cpu_count": os.cpu_count(), "jobs": args.jobs, "images": args.images,
                      "slots": args.slots, "ready_secs": time.monotonic() - started,
                      "load_average_before": os.getloadavg()}
            print(f"both stacks ready after {report['ready_secs']:.0f} s, load {report['load_average_before']}",
                  flush=True)
            for stack in stacks:  # a first job each: one-time costs out of the figures
                stack.run(job_bodies(1, args.images, 0), timeout=1800)
            rounds: dict[int, list[dict]] = {stack.slots: [] for stack in stacks}
            for round_index in range(1, args.rounds + 1):
                for stack in stacks:
                    result = stack.run(job_bodies(args.jobs, args.images, round_index), timeout=3600)
                    rounds[stack.slots].append(result)
                    print(f"round {round_index}, slots {stack.slots}: {result['secs']:.1f} s, "
                          f"{result['jobs_per_minute']:.2f} jobs/min, mean latency "
                          f"{statistics.mean(result['latencies_secs']):.1f} s", flush=True)
            lone: dict[int, list[float]] = {stack.slots: [] for stack in stacks}
            for round_index in range(args.lone_rounds):
                for stack in stacks:
                    lone[stack.slots].append(stack.run(job_bodies(1, args.images, 100 + round_index),
                                                       timeout=1800)["secs"])
        finally:
            for stack in stacks:
                stack.stop()
            redis_server.stop()
    for name, slots in (("one_slot", 1), ("batched", args.slots)):
        best = max(rounds[slots], key=lambda result: result["jobs_per_minute"])
        report[name] = {"slots": slots, "jobs_per_minute": best["jobs_per_minute"], "secs": best["secs"],
                        "latencies_secs": best["latencies_secs"],
                        "mean_latency_secs": statistics.mean(best["latencies_secs"]),
                        "all_rounds_jobs_per_minute": [result["jobs_per_minute"] for result in rounds[slots]],
                        "lone_job_secs": statistics.median(lone[slots]), "lone_job_all_secs": lone[slots]}
    report["speed_up"] = report["batched"]["jobs_per_minute"] / report["one_slot"]["jobs_per_minute"]
    report["lone_job_slower_percent"] = 100 * (report["batched"]["lone_job_secs"]
                                               / report["one_slot"]["lone_job_secs"] - 1)
    report["load_average_after"] = os.getloadavg()
    print(f"jobs/min: one slot {report['one_slot']['jobs_per_minute']:.2f}, {args.slots} slots "
          f"{report['batched']['jobs_per_minute']:.2f} (x{report['speed_up']:.2f}); mean latency "
          f"{report['one_slot']['mean_latency_secs']:.1f} s -> {report['batched']['mean_latency_secs']:.1f} s; "
          f"lone job {report['one_slot']['lone_job_secs']:.2f} s -> {report['batched']['lone_job_secs']:.2f} s "
          f"({report['lone_job_slower_percent']:+.1f} %)", flush=True)
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
