"""Build the demo model: python -m training [--stages vqgan,sharpen,dalle,clip,score,adherence,upscale].

Writes backend/engine/demo_model/vqgan (config.json, flax_model.msgpack), .../dalle (the
same plus the tokenizer files) and .../clip (the small CLIP that ranks candidates, with its
tokenizer.json), then scores the engine's `demo` model with `evaluate` and measures what
ranking with the CLIP gains (`train_clip.adherence`, the table of docs/demo-model.md), and
trains the demo upscaler (.../upscaler/demo-x4.pth, `train_upscaler`, 128 -> 512). The
two networks train independently (the DalleBart's codes come from `patch_codes`, not from
the VQGAN), so the stages can run in either order. Run it under `nice`: it keeps both cores
busy for most of an hour.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from backend.engine.models import DEMO_FOLDER, DEMO_UPSCALER

from . import train_clip, train_dallebart, train_upscaler, train_vqgan

VQGAN_DECODER_STEPS = 3600  # one whole picture a step
VQGAN_ENCODER_STEPS = 600  # four pictures a step
SHARPEN_STEPS = 1500  # the decoder again, edges weighted more
DALLE_STEPS = 1000
DALLE_GUIDED_STEPS = 300  # then with the guided loss (train_dallebart.GUIDED_SCALE)
CLIP_STEPS = 1500  # 128 captioned scenes a step
CLIP_FINE_TUNE_STEPS = 600  # then half of each batch hard pairs (train_clip.fine_tune)
CLIP_PLACE_STEPS = 600  # then the same batches with the place heads (train_clip.learn_places)
UPSCALER_STEPS = 1200  # 16 crops of 32 -> 128 pixels a step


def score() -> dict:
    """Match rates of "a {colour} {shape}" for every pair, trained and held out (8 samples
    each, default sampling), and of "a red circle" at three condition scales (24 samples)."""
    from backend.engine import load_engine

    from . import evaluate, shapes_dataset

    with tempfile.TemporaryDirectory() as cache:  # the compilation cache only
        engine = load_engine("demo", Path(cache))
        pairs = {f"a {colour} {shape}": evaluate.match_rate(engine, colour, shape, seeds=(1,))
                 for colour, shape in [*shapes_dataset.TRAIN_PAIRS, *sorted(shapes_dataset.HELD_OUT)]}
        scales = {scale: evaluate.match_rate(engine, "red", "circle", seeds=(1, 2, 3), condition_scale=scale)
                  for scale in (1.0, 3.0, 10.0)}
        return {"pairs": pairs, "a red circle by condition_scale": scales}


def adherence() -> dict:
    """Best 4 of 16 by the demo CLIP against the first 4, on prompts naming all attributes."""
    from backend.engine import load_engine
    from backend.engine.clip import load_clip

    with tempfile.TemporaryDirectory() as cache:
        engine = load_engine("demo", Path(cache))
        return train_clip.adherence(engine, load_clip(DEMO_FOLDER / "clip", "demo"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stages", default="vqgan,sharpen,dalle,clip,score,adherence,upscale")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    if "vqgan" in stages:
        report = train_vqgan.train(DEMO_FOLDER / "vqgan", VQGAN_DECODER_STEPS, VQGAN_ENCODER_STEPS)
        print(json.dumps({"vqgan_minutes": round(report["minutes"], 1)}), flush=True)
    if "sharpen" in stages:
        report = train_vqgan.sharpen_decoder(DEMO_FOLDER / "vqgan", SHARPEN_STEPS)
        print(json.dumps({"sharpen_minutes": round(report["minutes"], 1)}), flush=True)
    if "dalle" in stages:
        report = train_dallebart.train(DEMO_FOLDER / "dalle", DALLE_STEPS, DALLE_GUIDED_STEPS)
        print(json.dumps({"dalle_minutes": round(report["minutes"], 1)}), flush=True)
    if "clip" in stages:
        report = train_clip.train(DEMO_FOLDER / "clip", CLIP_STEPS)
        print(json.dumps({"clip_minutes": round(report["minutes"], 1), "clip_loss": round(report["final_loss"], 3)}),
              flush=True)
        report = train_clip.fine_tune(DEMO_FOLDER / "clip", CLIP_FINE_TUNE_STEPS)
        print(json.dumps({"clip_fine_tune_minutes": round(report["minutes"], 1),
                          "clip_fine_tune_loss": round(report["final_loss"], 3)}), flush=True)
        report = train_clip.learn_places(DEMO_FOLDER / "clip", CLIP_PLACE_STEPS)
        print(json.dumps({"clip_place_minutes": round(report["minutes"], 1),
                          "clip_place_loss": round(report["final_loss"], 3)}), flush=True)
    if "score" in stages:
        print(json.dumps(score(), indent=1), flush=True)
    if "adherence" in stages:
        print(json.dumps(adherence(), indent=1), flush=True)
    if "upscale" in stages:
        report = train_upscaler.train(DEMO_UPSCALER, UPSCALER_STEPS)
        print(json.dumps({"upscaler_minutes": round(report.pop("minutes"), 1), **report}), flush=True)


if __name__ == "__main__":
    main()
