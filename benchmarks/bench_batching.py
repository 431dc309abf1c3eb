"""Several jobs in one decoding batch against one job at a time, in the engine (issue 30).

    python benchmarks/bench_batching.py --model demo           # quick on a CPU
    python benchmarks/bench_batching.py --model mini           # mini's real size, random weights

`--jobs` jobs of `--images` images (different prompts, seeds and sampling values) are handed
over at once, then run one at a time (`Engine.generate`, as a backend with one slot does) and
all together (`BatchRunner`), alternately for `--rounds` rounds; then a lone job on an empty
engine, both ways, alternately. Reports jobs per minute, each job's latency from the hand-over
to its images, the lone job's latency, and checks that both ways drew the same codes. Prints a
JSON report at the end (also written with --json). Engine only: the service, the scheduler and
Redis are not in these figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import SIZES, write_random_model  # noqa: E402

PROMPTS = ["a lighthouse on a cliff at sunset", "a red circle", "two cats on a sofa", "a blue square",
           "an oil painting of a harbour", "a green triangle above a yellow star", "a city at night",
           "a bowl of fruit"]


def job_requests(count: int, images: int) -> list:
    from backend.engine import GenerationRequest

    return [GenerationRequest(PROMPTS[i % len(PROMPTS)], images, seed=100 + i, top_k=[50, 20, 100, 8][i % 4],
                              top_p=[1.0, 0.9, 0.95, 1.0][i % 4], temperature=[1.0, 0.8, 1.2, 0.9][i % 4],
                              condition_scale=[10.0, 3.0, 7.5, 12.0][i % 4])
            for i in range(count)]


def one_at_a_time(engine, requests) -> dict:
    started = time.perf_counter()
    latencies, codes = [], []
    for request in requests:
        codes.append(engine.generate(request).codes)
        latencies.append(time.perf_counter() - started)
    return summary(latencies, codes)


def batched(runner, requests) -> dict:
    started = time.perf_counter()
    jobs = [runner.submit(request) for request in requests]
    latencies, codes = [], []
    for job in jobs:
        codes.append(job.result().codes)
        latencies.append(time.perf_counter() - started)
    return summary(latencies, codes)


def summary(latencies, codes) -> dict:
    total = max(latencies)
    return {"secs": total, "jobs_per_minute": 60 * len(latencies) / total, "latencies_secs": latencies,
            "codes": codes}


def compare(engine, runner, requests: list, rounds: int, lone_rounds: int) -> dict:
    """`requests` one at a time (`Engine.generate`) against all together (`runner`), rounds
    alternating, then the first alone both ways: each way's best round, the speed-up, the lone
    job's difference, and whether both ways drew the same codes."""
    results = {"one_at_a_time": [], "batched": []}
    ways = {"one_at_a_time": lambda jobs: one_at_a_time(engine, jobs), "batched": lambda jobs: batched(runner, jobs)}
    for round_index in range(rounds):
        for name, run in ways.items():
            result = run(requests)
            results[name].append(result)
            print(f"round {round_index + 1} {name}: {result['secs']:.1f} s, {result['jobs_per_minute']:.2f} jobs/min",
                  flush=True)
    same = all(np.array_equal(a, b) for single, batch in zip(results["one_at_a_time"], results["batched"])
               for a, b in zip(single["codes"], batch["codes"]))
    lone = {name: [] for name in ways}
    for _ in range(lone_rounds):
        for name, run in ways.items():
            lone[name].append(run(requests[:1])["secs"])
    report: dict = {}
    for name in ways:
        best = min(results[name], key=lambda result: result["secs"])
        report[name] = {"jobs_per_minute": best["jobs_per_minute"], "secs": best["secs"],
                        "latencies_secs": best["latencies_secs"],
                        "mean_latency_secs": statistics.mean(best["latencies_secs"]),
                        "all_rounds_secs": [result["secs"] for result in results[name]],
                        "lone_job_secs": min(lone[name]), "lone_job_all_secs": lone[name]}
    report["speed_up"] = report["batched"]["jobs_per_minute"] / report["one_at_a_time"]["jobs_per_minute"]
    report["lone_job_slower_percent"] = 100 * (report["batched"]["lone_job_secs"]
                                               / report["one_at_a_time"]["lone_job_secs"] - 1)
    report["same_codes"] = same
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES) + ["demo", "tiny"], default="demo")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--images", type=int, default=2, help="images per job")
    parser.add_argument("--slots", type=int, default=8, help="jobs in one batch at most")
    parser.add_argument("--sizes", default="", help="the runner's batch sizes (default: its own)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lone-rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    import jax

    from backend.engine import load_engine
    from backend.engine.batching import BatchRunner

    if args.model in SIZES:
        folder = write_random_model(args.cache_dir / f"bench-{args.model}-float32", args.model, "float32")
    else:
        folder = args.model
    engine = load_engine(str(folder), args.cache_dir)
    engine.preview_every = 0
    sizes = tuple(int(n) for n in args.sizes.split(",") if n) or None
    runner = BatchRunner(engine, slots=args.slots, sizes=sizes)
    started = time.perf_counter()
    engine.warm_up((args.images,))
    runner.warm_up(continuations=False)
    report = {"model": args.model, "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
              "jobs": args.jobs, "images": args.images, "slots": args.slots, "sizes": list(runner.sizes),
              "warm_up_secs": time.perf_counter() - started, "load_average_before": os.getloadavg()}
    print(f"{report['devices']}, load {report['load_average_before']}, warm-up {report['warm_up_secs']:.0f} s",
          flush=True)
    report.update(compare(engine, runner, job_requests(args.jobs, args.images), args.rounds, args.lone_rounds))
    runner.close()
    report["load_average_after"] = os.getloadavg()
    print(f"jobs/min: one at a time {report['one_at_a_time']['jobs_per_minute']:.2f}, "
          f"batched {report['batched']['jobs_per_minute']:.2f} (x{report['speed_up']:.2f}); "
          f"mean latency {report['one_at_a_time']['mean_latency_secs']:.1f} s -> "
          f"{report['batched']['mean_latency_secs']:.1f} s; lone job {report['one_at_a_time']['lone_job_secs']:.2f} s "
          f"-> {report['batched']['lone_job_secs']:.2f} s ({report['lone_job_slower_percent']:+.1f}%); "
          f"same codes: {report['same_codes']}", flush=True)
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
