"""Fidelity to transformers: a tiny random CLIP initialised, saved and run by transformers'
FlaxCLIPModel, CLIPTokenizerFast and CLIPImageProcessor (tests/reference/make_clip_vectors.py,
in a virtual environment of its own), loaded and run here by backend/engine/clip.py."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from backend.engine import clip
from reference_data import DATA, assert_close, reference_fixtures

REFERENCE = DATA / "reference_clip"
MODEL = REFERENCE / "model"
PIXELS = 1e-3  # preprocessing: the same PIL resize, float32 arithmetic in another order


# Every test here runs at full float32 matmul precision, against these vectors and inputs.
float32_matmuls, vectors, inputs = reference_fixtures(REFERENCE)


@pytest.fixture(scope="module")
def model():
    return clip.load_clip(MODEL, dtype="float32", device=jax.devices("cpu")[0])


def pictures(vectors, inputs):
    return [Image.fromarray(vectors[f"picture_{i}"]) for i in range(len(inputs["pictures"]))]


def test_tokenizer_gives_transformers_ids(model, vectors, inputs):
    ids, mask = model.tokenizer.encode(inputs["prompts"])
    np.testing.assert_array_equal(ids, vectors["input_ids"])
    np.testing.assert_array_equal(mask, vectors["attention_mask"])
    assert ids.shape[1] == 77 and ids[3, -1] == model.tokenizer.end_id  # the long prompt: truncated, ended


def test_preprocessing_equals_clip_image_processor(model, vectors, inputs):
    ours = model.preprocess(pictures(vectors, inputs))
    assert_close(ours, vectors["pixel_values"].transpose(0, 2, 3, 1), PIXELS)
    # openai/clip-vit-base-patch32's processor (224 pixels) on a 320×240 picture.
    large = clip.preprocess(Image.fromarray(vectors["large_picture"]), 224)
    assert large.shape == (224, 224, 3)
    assert_close(large[::4, ::4].transpose(2, 0, 1), vectors["large_pixel_values_every_4th"], PIXELS)


def test_text_features(model, vectors):
    feats = model._text(model.params, vectors["input_ids"], vectors["attention_mask"])
    assert_close(feats, vectors["text_features"])
    assert_close(clip.normalise(feats), vectors["text_embeds"])


def test_image_features(model, vectors):
    feats = model._images(model.params, vectors["pixel_values"].transpose(0, 2, 3, 1))
    assert_close(feats, vectors["image_features"])
    assert_close(clip.normalise(feats), vectors["image_embeds"])


def test_logits_through_the_whole_model(model, vectors, inputs):
    text = model.embed_text(inputs["prompts"])
    images = model.embed_images(pictures(vectors, inputs))
    assert_close(clip.logits(model.params, text, images), vectors["logits_per_text"])
    for row, prompt in enumerate(inputs["prompts"]):
        assert_close(model.score(prompt, pictures(vectors, inputs)), vectors["logits_per_text"][row])
