"""Build the demo model: python -m training [--out FOLDER] [--stages vqgan,tokenizer,dalle]."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import train_vqgan

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "backend" / "engine" / "demo_model"
# (crop size or None for whole 256×256 images, batch, steps)
VQGAN_PHASES = [(64, 16, 900), (None, 2, 150)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stages", default="vqgan,dalle")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    if "vqgan" in stages:
        report = train_vqgan.train(args.out / "vqgan", VQGAN_PHASES)
        print(json.dumps({"vqgan_minutes": round(report["minutes"], 1)}), flush=True)


if __name__ == "__main__":
    main()
