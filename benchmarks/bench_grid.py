"""A grid sweep's cells decoded together against one after another, in the engine (issue 30).

    python benchmarks/bench_grid.py --model demo               # quick on a CPU
    python benchmarks/bench_grid.py --model mini --side 4      # a 4×4 grid at mini's real size

A `--side`×`--side` grid (temperature × top-k, one picture per cell, playground/grid.py) runs as
a backend with several slots runs it (`BatchRunner.submit_group`: the cells join at one boundary
and decode as one batch) and as one with one slot does (`Engine.generate` for each cell in
turn), alternately for `--rounds` rounds, and checks both drew the same codes. Prints each
round's seconds and the ratio, and a JSON report (also written with --json). Engine only.
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

TEMPERATURES = [0.6, 0.8, 1.0, 1.2]
TOP_KS = [8, 32, 128, 512]


def cell_requests(side: int) -> list:
    from backend.engine import GenerationRequest
    from playground.grid import parse_grid

    grid = parse_grid({"x": {"field": "temperature", "values": TEMPERATURES[:side]},
                       "y": {"field": "top_k", "values": TOP_KS[:side]}})
    return [GenerationRequest("a lighthouse on a cliff at sunset", 1, seed=7, **values) for values in grid.cells()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES) + ["demo", "tiny"], default="demo")
    parser.add_argument("--side", type=int, default=4, choices=(2, 3, 4), help="values per axis")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    from backend.engine import load_engine
    from backend.engine.batching import BatchRunner

    folder = (write_random_model(args.cache_dir / f"bench-{args.model}-float32", args.model, "float32")
              if args.model in SIZES else args.model)
    engine = load_engine(str(folder), args.cache_dir)
    engine.preview_every = 0
    runner = BatchRunner(engine, slots=2)
    started = time.perf_counter()
    engine.warm_up((1,))
    runner.warm_up(continuations=False)
    requests = cell_requests(args.side)
    report = {"model": args.model, "cells": len(requests), "devices": [str(d) for d in engine.devices],
              "warm_up_secs": time.perf_counter() - started, "load_average_before": os.getloadavg(),
              "together_secs": [], "one_after_another_secs": []}
    print(f"{report['devices']}, {len(requests)} cells, warm-up {report['warm_up_secs']:.0f} s", flush=True)
    for round_ in range(args.rounds):
        started = time.perf_counter()
        together = [result.codes for result in runner.generate_group(requests)]
        report["together_secs"].append(time.perf_counter() - started)
        started = time.perf_counter()
        alone = [engine.generate(request).codes for request in requests]
        report["one_after_another_secs"].append(time.perf_counter() - started)
        assert all(np.array_equal(a, b) for a, b in zip(together, alone)), "the two ways drew different codes"
        print(f"round {round_ + 1}: together {report['together_secs'][-1]:.1f} s, one after another "
              f"{report['one_after_another_secs'][-1]:.1f} s", flush=True)
    runner.close()
    report["speed_up"] = statistics.mean(report["one_after_another_secs"]) / statistics.mean(report["together_secs"])
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
