"""The demo model's training pipeline runs end to end (a few steps of each stage) and writes
a model the engine loads like any folder of official checkpoint files."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from backend.engine import GenerationRequest, load_engine
from training import shapes_dataset, train_dallebart, train_vqgan

pytestmark = pytest.mark.timeout(600)


@pytest.mark.slow
def test_every_stage_runs_and_the_engine_loads_the_result(tmp_path):
    model = tmp_path / "model"
    vqgan_report = train_vqgan.train(model / "vqgan", decoder_steps=2, encoder_steps=2)
    sharpen_report = train_vqgan.sharpen_decoder(model / "vqgan", steps=2)
    dalle_report = train_dallebart.train(model, steps=2, guided_steps=2, batch=2)
    losses = [r["loss"] for report in (vqgan_report, sharpen_report, dalle_report) for r in report["history"]]
    assert len(losses) == 10 and all(math.isfinite(loss) for loss in losses)

    engine = load_engine(str(model), tmp_path / "cache")
    result = engine.generate(GenerationRequest("a red circle", 2, seed=1))
    size = shapes_dataset.IMAGE_SIZE
    assert [np.asarray(image).shape for image in result.images] == [(size, size, 3)] * 2


# The short one that runs every time (about a minute): the CLIP stage end to end.
def test_the_clip_stage_runs_and_writes_a_clip_the_backend_loads(tmp_path):
    from backend.engine.clip import load_clip
    from training import train_clip

    report = train_clip.train(tmp_path / "clip", steps=3, batch=8)
    assert math.isfinite(report["final_loss"])
    assert math.isfinite(train_clip.fine_tune(tmp_path / "clip", steps=2, batch=8)["final_loss"])
    assert math.isfinite(train_clip.learn_places(tmp_path / "clip", steps=2, batch=8)["final_loss"])
    ranker = load_clip(tmp_path / "clip")
    pictures = [shapes_dataset.render(shapes_dataset.random_scene(random.Random(i))) for i in range(3)]
    scores = ranker.score("a red circle", pictures)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert train_clip.all_right({"colour": "red", "shape": "circle", "place": "on the left", "background": "gray"},
                                "a red circle on the left on a gray background")
    assert not train_clip.all_right({"colour": "red", "shape": "circle", "place": "on the right", "background": "gray"},
                                    "a red circle on the left on a gray background")
