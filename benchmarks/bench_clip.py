"""What ranking costs against generating: 16 candidates at the real sizes, random weights.

    python benchmarks/bench_clip.py --cache-dir cache          # mini + ViT-B/32, float32, this CPU
    python benchmarks/bench_clip.py --model cache/bench-mini-float32   # bench_engine.py's random mini

Writes a random mini of the published shape (bench_engine.write_random_model, once) and a
random CLIP of openai/clip-vit-base-patch32's shape (its config.json, our tokenizer), then
times generating `--candidates` images (tokens + VQGAN, one batched pass, after a warm-up)
and scoring them with CLIP (preprocessing, both towers, logits; compiled beforehand). The
ranking share is CLIP's time over the generation's. Prints a JSON report.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TREES = Path(__file__).resolve().parents[1] / "tests" / "data" / "checkpoint_trees"
PROMPT = "a watercolor painting of a lighthouse on a cliff at sunset"


def write_random_clip(folder: Path, published: str = "clip_vit_base_patch32") -> Path:
    from backend.engine import checkpoint, clip
    from backend.engine.models import CLIP_DEMO_SUBFOLDER, DEMO_FOLDER

    if (folder / "flax_model.msgpack").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = clip.ClipConfig.from_dict(json.loads((TREES / f"{published}.json").read_text())["config"])
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", clip.random_params(config, seed=0))
    # Any CLIP tokenizer will do for timing: the prompt's length is what counts (77 tokens anyway).
    shutil.copy(DEMO_FOLDER / CLIP_DEMO_SUBFOLDER / "tokenizer.json", folder / "tokenizer.json")
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--model", default="mini", help="mini or mega (random weights), or demo / tiny")
    parser.add_argument("--clip", default="clip_vit_base_patch32", help="a published CLIP shape (tests/data/checkpoint_trees)")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="CLIP runs; the fastest counts")
    args = parser.parse_args(argv)

    import jax

    from backend.engine import GenerationRequest, load_engine
    from backend.engine.clip import load_clip
    from bench_engine import SIZES, write_random_model

    if args.model in SIZES:
        folder = write_random_model(args.cache_dir / f"bench-{args.model}-float32", args.model, "float32")
    else:
        folder = args.model
    engine = load_engine(str(folder), args.cache_dir)
    ranker = load_clip(write_random_clip(args.cache_dir / f"bench-{args.clip}"), args.clip, dtype="float32")
    request = GenerationRequest(PROMPT, args.candidates, seed=1)
    engine.warm_up((args.candidates,))
    started = time.perf_counter()
    result = engine.generate(request)
    generate_secs = time.perf_counter() - started
    ranker.score(PROMPT, result.images)  # compiles
    rank_secs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ranker.score(PROMPT, result.images)
        rank_secs.append(time.perf_counter() - started)
    report = {"model": Path(args.model).name, "clip": args.clip, "candidates": args.candidates,
              "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "generate_secs": round(generate_secs, 2),
              "timings": {k: round(v, 2) for k, v in result.timings.items()},
              "rank_secs": round(min(rank_secs), 3),
              "rank_share_percent": round(100 * min(rank_secs) / generate_secs, 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
