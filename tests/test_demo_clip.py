"""The demo's small CLIP (backend/engine/demo_model/clip, `python -m training --stages clip`):
loaded like openai's, it knows the data set's pictures, and ranking the demo model's candidates
with it keeps pictures that match their prompt far more often (the model card's table)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from backend.engine import load_engine
from backend.engine.clip import load_clip
from backend.engine.models import CLIP_FILES, DEMO_FOLDER
from training import shapes_dataset, train_clip

CLIP_FOLDER = DEMO_FOLDER / "clip"
MIN_RETRIEVAL = 0.9  # the right scene among 8 random ones, for full captions
# docs/demo-model.md: measured 20.1 points (0.049 unranked → 0.250 ranked, of a ceiling of
# 0.278 that the candidates allow); issue 18 asks for 20. The test leaves 2 points of margin.
GAIN_MEASURED = 20.1
MIN_GAIN = 18.0


@pytest.fixture(scope="module")
def ranker():
    return load_clip(CLIP_FOLDER, "demo")


def test_shipped_files_are_small_and_official(ranker):
    assert all((CLIP_FOLDER / name).is_file() for name in CLIP_FILES)
    size = sum((CLIP_FOLDER / name).stat().st_size for name in CLIP_FILES)
    assert size < 5 * 2**20
    assert ranker.config.vision.image_size == train_clip.IMAGE_SIZE and ranker.dtype == "float32"


def _single(rng):
    background = rng.choice(list(shapes_dataset.BACKGROUNDS))
    colour, shape = rng.choice(train_clip.ALL_PAIRS)
    place = rng.choice(list(shapes_dataset.PLACES))
    item = shapes_dataset.Item(colour, shape, rng.choice(list(shapes_dataset.SIZES)), shapes_dataset.PLACES[place])
    return (colour, shape, place, background), shapes_dataset.Scene(background, (item,))


def test_it_finds_the_scene_a_full_caption_describes(ranker):
    """Among 8 one-shape scenes, the one the caption describes (the others differ in at least
    one named attribute) scores highest."""
    rng = random.Random(7)
    hits = []
    for _ in range(40):
        (colour, shape, place, background), target = _single(rng)
        others = []
        while len(others) < 7:
            named, scene = _single(rng)
            if named != (colour, shape, place, background):
                others.append(scene)
        text = f"{'an' if colour == 'orange' else 'a'} {colour} {shape} {place} on a {background} background"
        scores = ranker.score(text, [shapes_dataset.render(scene) for scene in [target, *others]])
        hits.append(int(np.argmax(scores)) == 0)
    assert np.mean(hits) >= MIN_RETRIEVAL, np.mean(hits)


@pytest.mark.slow
def test_ranking_raises_adherence(ranker, tmp_path):
    """12 prompts naming colour, shape, place and background, seeds 1-3, 16 candidates: the
    best 4 by CLIP against the first 4 (several minutes on a CPU)."""
    engine = load_engine("demo", tmp_path)
    figure = train_clip.adherence(engine, ranker)
    assert figure["gain_points"] >= MIN_GAIN, figure


def test_the_clip_tokenizer_comes_out_the_same_every_time(tmp_path):
    # The BPE trainer numbers word-final characters in hash order; write_tokenizer fixes
    # their ids, without which a retrained demo CLIP would differ from run to run.
    captions = ["a red circle on the left", "two blue squares, gray background", "a yellow star at the top"] * 20
    written = []
    for attempt in range(3):
        path = tmp_path / f"tokenizer-{attempt}.json"
        train_clip.write_tokenizer(path, captions, 300)
        written.append(path.read_bytes())
    assert written[0] == written[1] == written[2]
