"""Fidelity to the original code: a tiny random DalleBart and VQGAN, initialised, saved and run
by dalle-mini 0.1.5 and patil-suraj/vqgan-jax (tests/reference/make_vectors.py, in a virtual
environment of its own), loaded and run here by the playground's engine.

Differences in the inputs, on purpose: the model's config has normalize_text false (the
original's normaliser downloads a word list), so prompts go to the tokenizer as they are; and
the original's VQGAN output is clipped to [0, 1], as dalle-mini's inference pipeline does,
which is what `decode_codes` returns. One difference in behaviour is kept out of the data: the
original may pick the start token as an image code, the playground never does, so the model's
lm_head scores the start token 0, below every greedy choice.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from backend.engine import GenerationRequest, checkpoint, dallebart, load_engine
from backend.engine.vqgan import decode_codes
from reference_data import DATA, assert_close, reference_fixtures

REFERENCE = DATA / "reference"
MODEL = REFERENCE / "model"


# Every test here runs at full float32 matmul precision, against these vectors and inputs.
float32_matmuls, vectors, inputs = reference_fixtures(REFERENCE)


@pytest.fixture(scope="module")
def model():
    """The checkpoint read the way `load_engine` reads it, without the engine around it."""
    config = dallebart.DalleBartConfig.from_dict(json.loads((MODEL / "config.json").read_text()))
    params = checkpoint.read_checkpoint(MODEL / "flax_model.msgpack", dallebart.expected_param_shapes(config))
    return config, dallebart.unstack_layers(params)


@pytest.fixture(scope="module")
def engine(model_cache_dir):
    return load_engine(str(MODEL), model_cache_dir)


def test_tokenizer_gives_the_original_ids(engine, vectors, inputs):
    ids, mask = vectors["input_ids"], vectors["attention_mask"]
    for row, prompt in enumerate(inputs["prompts"]):
        engine_ids, engine_mask = engine.encode_text(prompt)  # [prompt, empty prompt]
        np.testing.assert_array_equal(engine_ids, ids[[row, -1]])
        np.testing.assert_array_equal(engine_mask, mask[[row, -1]])


def test_encoder_states(model, vectors):
    config, params = model
    states = dallebart.encode(params, config, vectors["input_ids"], vectors["attention_mask"])
    assert_close(states, vectors["encoder_states"])


def test_teacher_forced_logits(model, vectors):
    config, params = model
    rows = [0, -1]  # the first prompt and the empty one, as in make_vectors.py
    ids, mask = vectors["input_ids"][rows], vectors["attention_mask"][rows]
    codes = vectors["teacher_codes"]
    decoder_ids = np.concatenate([[config.decoder_start_token_id], codes[:-1]]).astype(np.int32)
    states = dallebart.encode(params, config, ids, mask)
    logits = dallebart.decode_full(params, config, np.stack([decoder_ids] * 2), states, mask)
    assert_close(logits, vectors["teacher_logits"])


def test_greedy_super_conditioned_sequences(engine, vectors, inputs):
    # The smallest gap between the two best scores the original saw is far above the two
    # implementations' differences (about 2e-4 at scale 10), so a mismatch is no rounding tie.
    assert inputs["smallest_greedy_margin"] > 2e-3
    assert all(len(set(seq.tolist())) > 10 for seq in vectors["greedy_sequences"].reshape(-1, 256))
    for p, prompt in enumerate(inputs["prompts"]):
        for s, scale in enumerate(inputs["condition_scales"]):
            request = GenerationRequest(prompt, 1, seed=1, top_k=1, condition_scale=scale)
            codes, _, _ = engine.generate_codes(request)
            np.testing.assert_array_equal(codes[0], vectors["greedy_sequences"][p, s], err_msg=f"{prompt!r} x{scale}")


def test_vqgan_pixels(engine, vectors):
    pixels = decode_codes(engine.vqgan_params, engine.vqgan_config, vectors["vqgan_codes"])
    assert_close(pixels, vectors["vqgan_pixels"])
