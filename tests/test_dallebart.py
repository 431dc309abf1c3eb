"""DalleBart math: the published parameter trees, and the cached one-token-at-a-time decoder
against the plain full-sequence forward pass."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backend.engine import dallebart
from backend.engine.checkpoint import tree_shapes
from backend.engine.dallebart import DalleBartConfig

TREES = Path(__file__).parent / "data" / "checkpoint_trees"
SMALL = DalleBartConfig(d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40,
                        encoder_vocab_size=100, image_vocab_size=50, max_text_length=12, image_length=16,
                        decoder_start_token_id=50, pad_token_id=51)


@pytest.mark.parametrize("name", ["dallebart_mini", "dallebart_mega"])
def test_expected_tree_equals_the_published_checkpoint(name):
    published = json.loads((TREES / f"{name}.json").read_text())
    config = DalleBartConfig.from_dict(published.pop("config"))
    expected = {path: tuple(shape) for path, shape in published.items()}
    assert dallebart.expected_param_shapes(config) == expected


def test_config_round_trip_and_unsupported_options():
    published = json.loads((TREES / "dallebart_mini.json").read_text())["config"]
    config = DalleBartConfig.from_dict(published)
    assert (config.d_model, config.decoder_layers, config.image_vocab_size) == (1024, 12, 16384)
    assert config.decoder_start_token_id == 16384 and config.pad_token_id == 16385
    written = config.to_dict()
    for key in ("decoder_start_token_id", "eos_token_id", "ln_positions", "use_scan", "max_length"):
        assert written[key] == published[key], key
    assert DalleBartConfig.from_dict(written) == config
    with pytest.raises(ValueError, match="ln_positions='preln' is not supported"):
        DalleBartConfig.from_dict({**published, "ln_positions": "preln"})
    with pytest.raises(ValueError, match="lacks d_model"):
        DalleBartConfig.from_dict({k: v for k, v in published.items() if k != "d_model"})


def test_random_params_are_deterministic_and_fit_the_config():
    params = dallebart.random_params(SMALL, seed=3)
    assert tree_shapes(params) == dallebart.expected_param_shapes(SMALL)
    again = dallebart.random_params(SMALL, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                     jax.tree_util.tree_leaves(again)))


def _inputs(rng, batch):
    ids = rng.integers(3, SMALL.encoder_vocab_size, (2, SMALL.max_text_length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 3:] = 0  # the unconditional row is mostly padding, as in real use
    images = rng.integers(0, SMALL.image_vocab_size, (batch, SMALL.image_length)).astype(np.int32)
    return ids, mask, images


def _cached_logits(params, ids, mask, images, blocks=1):
    """Teacher-forced logits [B, 2, T, V] from the fast path, one position at a time, the cache
    in `blocks` blocks of positions (every step reads and may write any of them)."""
    encoder_states = dallebart.encode(params, SMALL, ids, mask)
    cross_kv = dallebart.cross_attention_kv(params, SMALL, encoder_states)
    batch = images.shape[0]
    cache = dallebart.empty_cache(SMALL, batch, jax.tree_util.tree_leaves(params)[0].dtype, blocks)
    previous = np.concatenate([np.full((batch, 1), SMALL.decoder_start_token_id), images[:, :-1]], 1)
    step = jax.jit(lambda params, tokens, t, cache: dallebart.decode_step(params, SMALL, tokens, t, cache, cross_kv, mask))
    steps = []
    for t in range(SMALL.image_length):
        tokens = np.repeat(previous[:, t:t + 1], 2, axis=1)
        logits, cache = step(params, tokens, t, cache)
        steps.append(logits)
    return np.stack(steps, axis=2)


def _full_logits(params, ids, mask, images):
    """The same logits from the plain forward pass, conditional and unconditional rows run apart."""
    previous = np.concatenate([np.full((images.shape[0], 1), SMALL.decoder_start_token_id), images[:, :-1]], 1)
    rows = []
    for row in range(2):
        encoder_states = dallebart.encode(params, SMALL, ids[row:row + 1], mask[row:row + 1])
        encoder_states = jnp.repeat(encoder_states, images.shape[0], axis=0)
        row_mask = np.repeat(mask[row:row + 1], images.shape[0], axis=0)
        rows.append(jax.jit(dallebart.decode_full, static_argnums=1)(params, SMALL, previous, encoder_states, row_mask))
    return np.stack(rows, axis=1)


@pytest.mark.parametrize("blocks", [1, 4])
def test_cached_decoder_equals_full_forward(blocks):
    rng = np.random.default_rng(1)
    params = dallebart.unstack_layers(dallebart.random_params(SMALL, seed=1, std=0.2))
    ids, mask, images = _inputs(rng, batch=3)
    fast = _cached_logits(params, ids, mask, images, blocks)
    full = _full_logits(params, ids, mask, images)
    assert fast.shape == (3, 2, SMALL.image_length, SMALL.image_vocab_size + 1)
    np.testing.assert_allclose(fast, full, rtol=1e-4, atol=1e-4)
    # The positions really depend on the past (a cache bug could hide behind constant logits).
    assert np.abs(np.diff(full, axis=2)).mean() > 1e-2


def test_half_precision_weights_stay_half_and_agree():
    rng = np.random.default_rng(2)
    params = dallebart.unstack_layers(dallebart.random_params(SMALL, seed=2, std=0.2))
    half = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.bfloat16), params)
    ids, mask, images = _inputs(rng, batch=2)
    exact = _cached_logits(params, ids, mask, images)
    approx = _cached_logits(half, ids, mask, images)
    assert approx.dtype == np.float32  # activations and logits are float32
    scale = np.abs(exact).mean()
    assert np.abs(approx - exact).mean() < 0.05 * scale


def _positions(layer):
    """A layer's cache blocks joined: (keys, values) [2B, H, T, hd]."""
    return tuple(np.concatenate([np.asarray(pair[i]) for pair in layer], axis=2) for i in range(2))


@pytest.mark.parametrize("blocks", [1, 4])
def test_prefill_caches_what_the_steps_cache_and_decoding_goes_on_from_it(blocks):
    """`prefill_cache` over the first Q positions gives every layer the keys and values the
    steps would have cached; steps after it give the logits of steps all the way."""
    rng = np.random.default_rng(4)
    params = dallebart.unstack_layers(dallebart.random_params(SMALL, seed=4, std=0.2))
    ids, mask, images = _inputs(rng, batch=2)
    encoder_states = dallebart.encode(params, SMALL, ids, mask)
    cross_kv = dallebart.cross_attention_kv(params, SMALL, encoder_states)
    previous = np.concatenate([np.full((2, 1), SMALL.decoder_start_token_id), images[:, :-1]], 1)
    step = jax.jit(lambda tokens, t, cache: dallebart.decode_step(params, SMALL, tokens, t, cache, cross_kv, mask))
    kept = SMALL.image_length // 2
    stepped = dallebart.empty_cache(SMALL, 2, jnp.float32, blocks)
    for t in range(kept):
        _, stepped = step(np.repeat(previous[:, t:t + 1], 2, axis=1), t, stepped)
    filled = jax.jit(lambda tokens, cache: dallebart.prefill_cache(params, SMALL, tokens, cache, cross_kv, mask))(
        previous[:, :kept + 3], dallebart.empty_cache(SMALL, 2, jnp.float32, blocks))
    # It filled 3 positions past `kept` too: the steps below must overwrite them to match.
    assert np.abs(_positions(filled[0])[0][:, :, kept:kept + 3]).sum() > 0
    for (keys, values), (want_keys, want_values) in zip(map(_positions, filled), map(_positions, stepped)):
        np.testing.assert_allclose(keys[:, :, :kept], want_keys[:, :, :kept], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(values[:, :, :kept], want_values[:, :, :kept], rtol=1e-5, atol=1e-5)
    # Position `kept` on, after the prefill (its extra positions are overwritten by the steps).
    logits_after, logits_all = [], []
    for t in range(kept, kept + 4):
        tokens = np.repeat(previous[:, t:t + 1], 2, axis=1)
        logits, filled = step(tokens, t, filled)
        logits_after.append(logits)
        logits, stepped = step(tokens, t, stepped)
        logits_all.append(logits)
    np.testing.assert_allclose(np.stack(logits_after), np.stack(logits_all), rtol=1e-4, atol=1e-4)
