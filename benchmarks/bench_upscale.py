"""Time the upscaler at a published size with random weights: 256 -> 1024 pictures by default.

    python benchmarks/bench_upscale.py                               # realesr-general-x4v3, this machine
    python benchmarks/bench_upscale.py --model RealESRGAN_x4plus --side 128 --repeats 2

Builds the network of `--model`'s published shape (esrgan.PUBLISHED) with random weights,
upscales one picture to compile, then times `--repeats` more (the whole `Upscaler.upscale`:
padding, the network, cropping, rounding to uint8). Prints a JSON report, with the process's CPU time beside the wall time (on a busy machine
the wall time mostly measures the others); the issue's targets
for x4v3 at 256 pixels are 2 s on a 2-core CPU and 20 ms on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_upscaler(model: str, seed: int = 0, **tiling):
    from backend.engine import esrgan
    from backend.engine.upscaler import Upscaler

    config = esrgan.PUBLISHED[model]
    rng = np.random.default_rng(seed)
    state = {name: (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 4)).astype(np.float32)
             for name, shape in esrgan.expected_shapes(config).items()}
    return Upscaler(model, config, esrgan.to_params(state, config), **tiling)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesr-general-x4v3")
    parser.add_argument("--side", type=int, default=256, help="input picture side, pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile", type=int, default=None, help="tile size (default: the upscaler's)")
    args = parser.parse_args(argv)

    import jax

    tiling = {} if args.tile is None else {"tile": args.tile}
    upscaler = random_upscaler(args.model, **tiling)
    picture = np.random.default_rng(1).integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)
    start = time.perf_counter()
    upscaler.upscale(picture)
    first = time.perf_counter() - start
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        big = upscaler.upscale(picture)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    print(json.dumps({
        "model": args.model, "device": str(jax.devices()[0]), "input": [args.side, args.side],
        "output": list(big.shape[:2]), "tile": upscaler.tile, "first_call_s": round(first, 3),
        "seconds_per_picture": [round(t, 3) for t in times], "best_s": round(min(times), 3),
        # Core-seconds: on a machine shared with other work, wall time says more about the others.
        "cpu_seconds_per_picture": [round(t, 3) for t in cpu_times], "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
