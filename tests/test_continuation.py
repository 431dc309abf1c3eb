"""Continuing from an image's codes, in the engine (tiny and demo models, real checkpoints):
a continuation of image i of a job with that job's prompt, values and seed is image i again,
for any number of kept rows; kept rows stay, the rows below follow the seed; one prefill
program serves every keep_rows; the demo VQGAN encodes a rendered picture to its codes and a
continuation keeping the top half keeps the shape drawn there."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from backend.engine import GenerationRequest, load_engine
from backend.engine.models import DEMO
from jax_compiles import recorded_compiles
from training import evaluate, shapes_dataset
from training.patch_codes import PatchCodebook

PROMPT = "a red circle above a blue square"
MIN_ENCODER_ACCURACY = 0.99


@pytest.fixture(scope="module", params=["tiny", DEMO])
def engine(request, model_cache_dir):
    return load_engine(request.param, model_cache_dir)


@pytest.fixture(scope="module")
def demo(model_cache_dir):
    return load_engine(DEMO, model_cache_dir)


@pytest.fixture(scope="module")
def fresh(engine):
    return engine.generate(GenerationRequest(PROMPT, 3, seed=77, top_k=64, temperature=1.3))


def continuation(codes, keep_rows, num_images=3, seed=77, **values) -> GenerationRequest:
    return GenerationRequest(PROMPT, num_images, seed=seed, init_codes=tuple(int(c) for c in codes),
                             keep_rows=keep_rows, **{"top_k": 64, "temperature": 1.3, **values})


@pytest.mark.parametrize("keep_rows", [1, 8, 15])
def test_continuing_image_i_of_a_job_draws_image_i_again(engine, fresh, keep_rows):
    for i in range(3):
        again = engine.generate(continuation(fresh.codes[i], keep_rows))
        np.testing.assert_array_equal(again.codes[i], fresh.codes[i])
        assert np.asarray(again.images[i]).tobytes() == np.asarray(fresh.images[i]).tobytes()


def test_kept_rows_stay_and_the_rows_below_follow_the_seed(engine, fresh):
    kept = 8 * engine.row_length
    runs = [engine.generate_codes(continuation(fresh.codes[0], 8, num_images=4, seed=seed))[0] for seed in (5, 6)]
    for codes in runs:
        assert (codes[:, :kept] == fresh.codes[0][:kept]).all()
        assert len({row[kept:].tobytes() for row in codes}) == 4  # each image its own rows below
    assert not np.array_equal(runs[0][:, kept:], runs[1][:, kept:])


def test_one_prefill_program_serves_every_keep_rows(engine, fresh):
    engine.generate(continuation(fresh.codes[1], 1))
    prefill = engine.programs(3).prefill
    with recorded_compiles() as compiles:
        for keep_rows in (4, 15, 8):
            engine.generate(continuation(fresh.codes[1], keep_rows))
    assert compiles == [] and engine.programs(3).prefill is prefill


def test_progress_starts_after_the_kept_rows(engine, fresh):
    seen = []
    engine.generate_codes(continuation(fresh.codes[0], 12), on_progress=lambda done, total: seen.append(done))
    assert seen[0] == 12 * engine.row_length + engine.chunk_steps and seen[-1] == engine.total_tokens


@pytest.mark.parametrize("change,message", [
    ({"keep_rows": 0}, "keep_rows"), ({"keep_rows": 16}, "keep_rows"),
    ({"init_codes": (1,) * 255}, "init_codes"), ({"init_codes": (0,) * 255 + (10**6,)}, "codebook"),
    ({"init_codes": (-1,) * 256}, "init_codes"), ({"init_codes": None}, "together"),
])
def test_a_bad_start_is_refused(engine, change, message):
    fields = {"init_codes": (0,) * 256, "keep_rows": 8, **change}
    with pytest.raises(ValueError, match=message):
        engine.generate_codes(GenerationRequest(PROMPT, 2, seed=1, **fields))


def _as_upload(picture: Image.Image, size: int, fmt: str = "PNG") -> Image.Image:
    """The picture as a user would send it: bigger, letterboxed (centre crop removes it), a file."""
    big = picture.resize((size, size), Image.Resampling.NEAREST)
    framed = Image.new("RGB", (size + 40, size), (255, 0, 255))
    framed.paste(big, (20, 0))
    buffer = io.BytesIO()
    framed.save(buffer, format=fmt)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_demo_encoder_gives_a_rendered_pictures_codes(demo):
    codebook = PatchCodebook.enumerate()
    rng = random.Random(16)
    scenes = [shapes_dataset.random_scene(rng) for _ in range(4)]
    found = [demo.encode_picture(_as_upload(shapes_dataset.render(scene), 512)) for scene in scenes]
    expected = [codebook.encode(scene) for scene in scenes]
    assert np.mean(np.array(found) == np.array(expected)) >= MIN_ENCODER_ACCURACY


def test_demo_continuation_keeping_the_top_half_keeps_the_top_shape(demo):
    top = shapes_dataset.Item("yellow", "triangle", "medium", (64, 32))
    bottom = shapes_dataset.Item("blue", "circle", "medium", (64, 96))
    scene = shapes_dataset.Scene("white", (top, bottom))
    codes = demo.encode_picture(_as_upload(shapes_dataset.render(scene), 256, "JPEG"))
    result = demo.generate(GenerationRequest("a yellow triangle above a red square", 4, seed=3,
                                             init_codes=tuple(int(c) for c in codes), keep_rows=8))
    half = shapes_dataset.IMAGE_SIZE // 2
    for picture in result.images:
        assert evaluate.classify(np.asarray(picture)[:half]) == ("yellow", "triangle")
    # The bottom half follows the prompt, not the picture: at least one image draws its shape.
    assert ("red", "square") in [evaluate.classify(np.asarray(p)[half:]) for p in result.images]
