"""The engine on the tiny model (real files, loaded like the published ones): greedy output
equals the plain forward pass, seeds and batch-independence, two devices, no recompiles,
progress and cancellation, input validation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backend.engine import (
    GenerationCancelled,
    GenerationRequest,
    dallebart,
    load_engine,
)
from backend.engine import generator
from backend.engine.generator import seed_key
from jax_compiles import recorded_compiles
from playground.limits import MAX_SEED

PROMPT = "a red cube on a blue sphere"


@pytest.fixture(scope="module")
def engine(model_cache_dir):
    engine = load_engine("tiny", model_cache_dir)
    engine.warm_up((2,))
    return engine


def reference_greedy(engine, text, condition_scale, length=None):
    """Greedy decoding the way the original did it: separate conditional and unconditional
    passes, the whole sequence re-run through `decode_full` at every step, no cache."""
    config, params = engine.config, engine.params
    ids, mask = engine.encode_text(text)
    total = config.image_length
    rows = [(dallebart.encode(params, config, ids[r:r + 1], mask[r:r + 1]), mask[r:r + 1]) for r in range(2)]
    forward = jax.jit(lambda seq, enc, m: dallebart.decode_full(params, config, seq, enc, m)[0])
    sequence = np.full((1, total), config.decoder_start_token_id, np.int32)
    codes = []
    for t in range(length or total):
        cond, uncond = (np.asarray(forward(sequence, enc, m)[t]) for enc, m in rows)
        scores = uncond + condition_scale * (cond - uncond)
        scores[engine.num_codes:] = -np.inf
        codes.append(int(np.argmax(scores)))
        if t + 1 < total:
            sequence[0, t + 1] = codes[-1]
    return np.array(codes, np.int32)


def test_greedy_fast_path_equals_full_forward(engine):
    for condition_scale in (10.0, 1.0):
        request = GenerationRequest(PROMPT, 3, seed=5, top_k=1, condition_scale=condition_scale)
        codes, _, _ = engine.generate_codes(request)
        expected = reference_greedy(engine, PROMPT, condition_scale)
        assert len(set(expected.tolist())) > 10  # a real sequence, not one repeated token
        for row in codes:
            np.testing.assert_array_equal(row, expected)


def test_generate_returns_images_and_the_values_used(engine):
    result = engine.generate(GenerationRequest(PROMPT, 2, seed=42, temperature=0.7))
    assert result.seed == 42
    assert result.params == {"top_k": 50, "top_p": 1.0, "temperature": 0.7, "condition_scale": 10.0}
    assert [(image.mode, image.size) for image in result.images] == [("RGB", (256, 256))] * 2
    assert result.codes.shape == (2, 256) and result.codes.max() < engine.num_codes
    assert set(result.timings) == {"tokens_secs", "vqgan_secs"}
    assert np.asarray(result.images[0]).std() > 0  # the VQGAN really drew something
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))


def test_seeds(engine):
    assert all(np.array_equal(seed_key(s), jax.random.PRNGKey(s)) for s in (1, 7, 2**31 - 1, 2**31, MAX_SEED - 1))
    assert seed_key(MAX_SEED).tolist() == [1, 0]

    def codes(seed, **extra):
        return np.asarray(engine.generate_codes(GenerationRequest(PROMPT, 2, seed=seed, **extra))[0])

    assert np.array_equal(codes(123), codes(123))
    assert not np.array_equal(codes(123), codes(124))
    top = codes(MAX_SEED)
    assert not np.array_equal(top, codes(MAX_SEED - 1)) and not np.array_equal(top, codes(1))

    chosen_codes, chosen, _ = engine.generate_codes(GenerationRequest(PROMPT, 2, seed=0))
    assert 1 <= chosen <= MAX_SEED
    assert np.array_equal(np.asarray(chosen_codes), codes(chosen))


def test_image_depends_only_on_its_index(engine):
    eight, _, _ = engine.generate_codes(GenerationRequest(PROMPT, 8, seed=99, top_p=0.9))
    two, _, _ = engine.generate_codes(GenerationRequest(PROMPT, 2, seed=99, top_p=0.9))
    eight, two = np.asarray(eight), np.asarray(two)
    np.testing.assert_array_equal(eight[:2], two)
    assert len({row.tobytes() for row in eight}) == 8


def test_requests_share_a_padded_program_without_changing_images(engine, model_cache_dir):
    # As on a GPU, where every request up to ACCELERATOR_BATCH images runs in one program.
    shared = load_engine("tiny", model_cache_dir, batch_per_device=4)
    exact = np.asarray(engine.generate_codes(GenerationRequest(PROMPT, 3, seed=21, top_p=0.9))[0])
    three = shared.generate(GenerationRequest(PROMPT, 3, seed=21, top_p=0.9))
    one = np.asarray(shared.generate_codes(GenerationRequest(PROMPT, 1, seed=21, top_p=0.9))[0])
    assert shared.compiled_batches == [4]
    np.testing.assert_array_equal(three.codes, exact)
    np.testing.assert_array_equal(one, exact[:1])
    assert len(three.images) == 3


def test_a_cache_in_blocks_draws_the_same_codes(engine, model_cache_dir):
    """The cache in four blocks (as on a CPU for a large model) gives the codes of one block:
    chunks inside a block (reading the blocks so far), chunks spanning blocks (every block
    they may write rewrites its own entry or the new one) and a continuation's prefill."""
    assert engine.cache_blocks == 1  # tiny's cache is small: one block by default
    blocks = load_engine("tiny", model_cache_dir, cache_blocks=4)
    request = GenerationRequest(PROMPT, 2, seed=31, top_p=0.9)
    want = np.asarray(engine.generate_codes(request)[0])
    np.testing.assert_array_equal(blocks.generate_codes(request)[0], want)
    np.testing.assert_array_equal(blocks.generate_codes(request, steps_per_chunk=128)[0], want)
    assert sorted(blocks.programs(2).chunks) == [(8, 0, 0), (8, 1, 1), (8, 2, 2), (8, 3, 3), (128, 0, 1), (128, 2, 3)]
    continued = GenerationRequest(PROMPT, 2, seed=31, top_p=0.9, init_codes=want[1], keep_rows=5)
    np.testing.assert_array_equal(blocks.generate_codes(continued)[0], engine.generate_codes(continued)[0])


def test_sampling_values_never_recompile(engine):
    engine.generate_codes(GenerationRequest(PROMPT, 2, seed=1))
    before = engine.compiled_batches
    with recorded_compiles() as compiles:
        for top_k, top_p, temperature, scale in ((1, 1.0, 1.0, 10.0), (7, 0.5, 0.3, 0.0), (None, 0.99, 2.5, 3.5),
                                                 (10_000, None, None, 1.0)):
            engine.generate_codes(GenerationRequest(PROMPT, 2, seed=3, top_k=top_k, top_p=top_p,
                                                    temperature=temperature, condition_scale=scale))
    assert compiles == []
    assert engine.compiled_batches == before


def test_sampling_values_change_the_result(engine):
    def codes(**values):
        return np.asarray(engine.generate_codes(GenerationRequest(PROMPT, 2, seed=8, **values))[0])

    base = codes()
    greedy = codes(top_k=1)
    assert np.array_equal(greedy[0], greedy[1])  # greedy ignores the per-image keys
    assert not np.array_equal(base, greedy)
    assert not np.array_equal(base, codes(temperature=3.0))
    assert not np.array_equal(base, codes(condition_scale=0.0))
    narrow = codes(top_p=1e-6)  # keeps only the best token: greedy again
    np.testing.assert_array_equal(narrow, greedy)


@pytest.mark.parametrize("top_k,top_p,partitionable", [(64, 0.9, True), (64, 0.9, False), (65, 1.0, True),
                                                       (1024, 0.95, True), (1025, 1.0, True)])
def test_every_top_k_tier_draws_what_one_full_ranking_draws(monkeypatch, top_k, top_p, partitionable):
    """The partial sort is picked by k (TOP_K_TIERS), yet the codes are those one tier of 1024
    (as before the tiers) draws: same ranks, same random numbers, at the real vocabulary size,
    with either of JAX's ways to generate random bits (only one gives a longer draw the same
    numbers at the start)."""
    rng = np.random.default_rng(top_k)
    logits = jnp.asarray(rng.standard_normal((16, 2, 16385), np.float32))
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(top_k), jnp.arange(16))

    def draw(tiers, k):
        monkeypatch.setattr(generator, "TOP_K_TIERS", tiers)
        sampling = {"top_k": jnp.int32(k), "top_p": jnp.float32(top_p), "temperature": jnp.float32(1.0),
                    "condition_scale": jnp.float32(3.0)}
        with jax.threefry_partitionable(partitionable):
            # A new function each time: jit would reuse the program traced with the other tiers.
            return np.asarray(jax.jit(lambda *args: generator._sample(*args, 16384))(logits, keys, sampling))

    np.testing.assert_array_equal(draw((64, 1024), top_k), draw((1024,), top_k))
    assert not np.array_equal(draw((1024,), top_k), draw((1024,), 1))  # random draws, not the best code


def test_progress_and_cancel(engine):
    reports = []
    engine.generate_codes(GenerationRequest(PROMPT, 2, seed=4), on_progress=lambda d, t: reports.append((d, t)))
    steps = engine.chunk_steps
    assert reports == [(done, 256) for done in range(steps, 257, steps)]

    cancel = threading.Event()
    calls = []

    def stop_after_first(done, total):
        calls.append(done)
        cancel.set()

    with pytest.raises(GenerationCancelled):
        engine.generate(GenerationRequest(PROMPT, 2, seed=4), on_progress=stop_after_first, cancel=cancel)
    assert calls and max(calls) < 256
    result = engine.generate(GenerationRequest(PROMPT, 2, seed=4))  # still usable afterwards
    assert len(result.images) == 2


@pytest.fixture
def previews_every(engine):
    """Set the engine's preview spacing for one test."""
    def set_every(every):
        engine.preview_every = every
    yield set_every
    engine.preview_every = None


def test_previews_hand_out_the_first_codes_of_the_result(engine, previews_every):
    previews_every(16)
    seen = []
    result = engine.generate(GenerationRequest(PROMPT, 2, seed=3),
                             on_preview=lambda done, codes: seen.append((done, np.array(codes))))
    # Every 16 tokens but the last (the finished pictures come at once then).
    assert [done for done, _ in seen] == list(range(16, 256, 16))
    for done, codes in seen:
        np.testing.assert_array_equal(codes, result.codes[:, :done])
    assert result.timings["previews"] == len(seen)

    # A continuation hands out its kept rows with the new ones, from its first new row on.
    keep = tuple(int(c) for c in result.codes[1])
    seen.clear()
    again = engine.generate(GenerationRequest(PROMPT, 1, seed=9, init_codes=keep, keep_rows=10),
                            on_preview=lambda done, codes: seen.append((done, np.array(codes))))
    assert [done for done, _ in seen] == [176, 192, 208, 224, 240]
    for done, codes in seen:
        np.testing.assert_array_equal(codes, again.codes[:, :done])

    previews_every(0)
    calls = []
    engine.generate_codes(GenerationRequest(PROMPT, 2, seed=3), on_preview=lambda *args: calls.append(args))
    assert calls == []


def test_preview_pictures_show_the_drawn_rows_and_grey_below(engine):
    codes = engine.generate_codes(GenerationRequest(PROMPT, 2, seed=3))[0]
    pictures = engine.preview_pictures(codes[:, :64])  # four of the 16 rows
    assert pictures.shape == (2, 128, 128, 3) and pictures.dtype == np.uint8
    assert (pictures[:, 40:] == 128).all()  # below the 4th row of cells (8 px each) and its blur
    full = engine.preview_pictures(codes)
    assert not (full[:, 40:] == 128).all()


def test_decoded_previews_as_on_an_accelerator(engine):
    # The accelerator's method, run on the CPU: the VQGAN's own picture, grey where not drawn.
    from PIL import Image

    engine.preview_method = "decode"
    try:
        result = engine.generate(GenerationRequest(PROMPT, 2, seed=3))
        whole = engine.preview_pictures(result.codes)
        part = engine.preview_pictures(result.codes[:, :100])  # 6 rows and 4 cells
    finally:
        engine.preview_method = "table"
    scaled = np.stack([np.asarray(image.resize((128, 128), Image.BILINEAR)) for image in result.images])
    np.testing.assert_array_equal(whole, scaled)
    assert (part[:, 57:] == 128).all() and (part[:, 49:55, 33:] == 128).all()  # one blended pixel apart
    assert not (part[:, :48] == 128).all()


def test_adaptive_previews_stay_within_their_budget(engine, previews_every):
    from backend.engine.preview import BUDGET

    previews_every(None)
    cost = 0.05

    def slow_preview(done, codes):
        time.sleep(cost)  # a slow machine's preview

    result = engine.generate(GenerationRequest(PROMPT, 2, seed=3), on_preview=slow_preview)
    count, spent = result.timings["previews"], result.timings["preview_secs"]
    assert count >= 1
    # The first one's cost is not known before it is paid; after it, the budget holds.
    assert spent - cost <= BUDGET * result.timings["tokens_secs"] + 0.01, result.timings
    previews_every(16)
    fixed = engine.generate(GenerationRequest(PROMPT, 2, seed=3), on_preview=slow_preview).timings
    assert fixed["previews"] == 15 > count  # a fixed spacing is not held to the budget


@pytest.mark.parametrize("field, value, message", [
    ("num_images", 0, "num_images"), ("num_images", 17, "num_images"), ("num_images", True, "num_images"),
    ("num_images", 2.0, "num_images"), ("seed", -1, "seed"), ("seed", MAX_SEED + 1, "seed"),
    ("seed", "5", "seed"), ("top_k", 0, "top_k"), ("top_k", 2.5, "top_k"), ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"), ("temperature", 0, "temperature"), ("temperature", float("nan"), "temperature"),
    ("condition_scale", -1.0, "condition_scale"), ("condition_scale", float("inf"), "condition_scale"),
    ("text", None, "text"),
])
def test_bad_requests_are_refused(engine, field, value, message):
    values = {"text": PROMPT, "num_images": 2, "seed": 1, field: value}
    with pytest.raises(ValueError, match=message):
        engine.generate(GenerationRequest(**values))


def test_half_precision_keeps_weights_half(model_cache_dir):
    half = load_engine("tiny", model_cache_dir, dtype="float16")
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(half.params)} == {jnp.dtype("float16")}
    result = half.generate(GenerationRequest(PROMPT, 2, seed=11))
    assert len(result.images) == 2 and result.codes.max() < half.num_codes


def test_compilation_cache_lives_in_the_cache_dir(engine, model_cache_dir):
    assert any((model_cache_dir / "jax-compilation-cache").iterdir())


def test_preview_colours_are_kept_for_the_next_start_of_the_same_weights_only(model_cache_dir):
    """The warm-up's colour table is made once, then read from the model cache by the next
    engine of the same VQGAN; other weights, or a damaged file, make their own. (Making one is
    stood in for by random colours here: decoding every code takes seconds.)"""
    import shutil

    folder = model_cache_dir / generator.PREVIEW_COLOURS_SUBFOLDER
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)

    def started(change_weights=False):
        engine = load_engine("tiny", model_cache_dir)
        if change_weights:
            conv = engine.vqgan_params["decoder"]["conv_out"]
            conv["bias"] = conv["bias"] + 0.25
        made = []

        def make(*args, **kwargs):
            made.append(1)
            engine.colours.sums = rng.random(engine.colours.sums.shape)
            engine.colours.counts = np.ones_like(engine.colours.counts)

        engine.colours.learn_exact = make
        engine.prepare_colour_table()
        return engine, bool(made)

    first, made = started()
    assert made
    (kept,) = folder.iterdir()
    again, made = started()
    assert not made and np.array_equal(again.colours.table(), first.colours.table())
    other, made = started(change_weights=True)
    assert made and not np.array_equal(other.colours.table(), first.colours.table())
    assert len(list(folder.iterdir())) == 2

    kept.write_bytes(b"not a table")
    damaged, made = started()
    assert made and started()[1] is False
    assert sorted(path.name for path in folder.iterdir()) == sorted([kept.name, other._colours_file().name])


TWO_DEVICE_SCRIPT = """
import json, sys
from pathlib import Path
import jax, numpy as np
from backend.engine import GenerationRequest, load_engine
engine = load_engine("tiny", Path(sys.argv[1]))
out = {"devices": len(engine.devices)}
codes, _, _ = engine.generate_codes(GenerationRequest(sys.argv[2], 3, seed=5, top_k=1))
out["greedy"] = np.asarray(codes)[:3].tolist()
codes, _, _ = engine.generate_codes(GenerationRequest(sys.argv[2], 2, seed=77, top_p=0.95))
out["sampled"] = np.asarray(codes)[:2].tolist()
# A continuation of sampled image 1, its batch split over the two devices as well.
start = tuple(out["sampled"][1])
codes, _, _ = engine.generate_codes(GenerationRequest(sys.argv[2], 2, seed=77, top_p=0.95, init_codes=start, keep_rows=6))
out["continued"] = np.asarray(codes)[:2].tolist()
print(json.dumps(out))
"""


def test_two_devices_give_the_same_images(engine, model_cache_dir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", TWO_DEVICE_SCRIPT, str(model_cache_dir), PROMPT],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    greedy = np.asarray(engine.generate_codes(GenerationRequest(PROMPT, 3, seed=5, top_k=1))[0])
    sampled = np.asarray(engine.generate_codes(GenerationRequest(PROMPT, 2, seed=77, top_p=0.95))[0])
    np.testing.assert_array_equal(np.array(out["greedy"]), greedy[:3])
    np.testing.assert_array_equal(np.array(out["sampled"]), sampled[:2])
    np.testing.assert_array_equal(np.array(out["continued"])[1], sampled[1])  # image 1 again
    assert (np.array(out["continued"])[0][:96] == sampled[1][:96]).all()
    np.testing.assert_array_equal(greedy[0], reference_greedy(engine, PROMPT, 10.0))
