"""Build the demo model: python -m training [--stages vqgan,dalle,decoder,score].

Writes backend/engine/demo_model/vqgan (config.json, flax_model.msgpack) and .../dalle (the
same plus the tokenizer files), sharpens the VQGAN's decoder on codes that no longer change,
then scores the engine's `demo` model with `evaluate`. Run it under `nice`: it keeps both
cores busy for about three quarters of an hour.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from backend.engine.models import DEMO_FOLDER

from . import train_dallebart, train_vqgan

# (crop size or None for whole 256×256 images, batch, steps, peak learning rate). Crops
# teach the convolutions at a sixteenth of the cost; whole images then retune the group
# norms and the middle attention, whose statistics span the whole picture.
VQGAN_PHASES = [(64, 8, 300, 1e-3), (None, 1, 300, 5e-4)]
DALLE_STEPS = 700
DECODER_STEPS = 400
DECODER_SEEDS = (3, 4)  # two runs of DECODER_STEPS, each with its own warm-up and decay


def score() -> dict:
    """Match rates of "a {colour} {shape}" for every pair, trained and held out, 8 samples each."""
    from backend.engine import load_engine

    from . import evaluate, shapes_dataset

    with tempfile.TemporaryDirectory() as cache:  # the compilation cache only
        engine = load_engine("demo", Path(cache))
        return {f"a {colour} {shape}": evaluate.match_rate(engine, colour, shape, seeds=(1,))
                for colour, shape in [*shapes_dataset.TRAIN_PAIRS, *sorted(shapes_dataset.HELD_OUT)]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stages", default="vqgan,dalle,decoder,score")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    if "vqgan" in stages:
        report = train_vqgan.train(DEMO_FOLDER / "vqgan", VQGAN_PHASES)
        print(json.dumps({"vqgan_minutes": round(report["minutes"], 1)}), flush=True)
    if "dalle" in stages:
        report = train_dallebart.train(DEMO_FOLDER / "dalle", DEMO_FOLDER / "vqgan", DALLE_STEPS)
        print(json.dumps({"dalle_minutes": round(report["minutes"], 1)}), flush=True)
    if "decoder" in stages:
        for seed in DECODER_SEEDS:
            report = train_vqgan.finetune_decoder(DEMO_FOLDER / "vqgan", DECODER_STEPS, seed=seed)
            print(json.dumps({"decoder_minutes": round(report["minutes"], 1)}), flush=True)
    if "score" in stages:
        print(json.dumps(score(), indent=1), flush=True)


if __name__ == "__main__":
    main()
