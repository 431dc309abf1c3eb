"""Train a small VQGAN (the engine's architecture) on the shapes data set.

Loss: mean squared reconstruction error plus a commitment term; the codebook follows the
encoder by exponential moving averages (no gradient), and codes nobody used for a while are
moved onto random encoder outputs, so the whole codebook stays in use. The network is fully
convolutional with attention only in its middle block, so it trains first on 64×64 crops
(one sixteenth of the work), then on whole 256×256 pictures, whose statistics the group
norms and the middle attention must see. `finetune_decoder` later sharpens the decoder
alone, once codes made with the encoder are in use.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backend.engine import checkpoint, vqgan
from backend.engine.vqgan import VQGANConfig

from . import shapes_dataset

# No attention at the 16×16 level: crops move that level to another depth, and the
# parameter tree must not depend on the crop size. 64 channels, not 32: with GroupNorm's 32
# groups, one channel a group normalises each channel on its own, which erases the flat
# colours these pictures are made of; two a group keep them as differences.
CONFIG = VQGANConfig(ch=64, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=0, attn_resolutions=(),
                     z_channels=32, embed_dim=16, n_embed=512, resolution=256)
GRID = 16  # pixels per code: crops start on this grid so codes see what they see at 256
COMMITMENT = 0.25
EMA_DECAY = 0.99
DEAD_CODE_USES = 0.005  # average uses per step below which a code is moved
# Shapes cover a small part of a picture: their pixels weigh this much more than the
# background's, or the codebook spends itself on background and loses rare colours.
SHAPE_WEIGHT = 10.0


@dataclasses.dataclass
class State:
    params: dict
    opt_state: optax.OptState
    counts: jax.Array  # EMA of how often each code is chosen per step
    sums: jax.Array  # EMA of the encoder outputs assigned to each code


jax.tree_util.register_dataclass(State, data_fields=["params", "opt_state", "counts", "sums"], meta_fields=[])


def quantize(params, cfg: VQGANConfig, images):
    """Encoder outputs z [N, D] (flattened), their codes [N] and code vectors [N, D]."""
    z = vqgan._conv(vqgan._encoder(images, params["encoder"], cfg), params["quant_conv"])
    flat = z.reshape(-1, cfg.embed_dim)
    codebook = params["quantize"]["embedding"]["embedding"]
    distances = jnp.sum(codebook ** 2, axis=1) - 2.0 * flat @ codebook.T
    codes = jnp.argmin(distances, axis=1)
    return z, flat, codes, codebook[codes]


def reconstruct(params, cfg: VQGANConfig, images):
    """Images → codes → images, with the straight-through gradient past the quantiser."""
    z, flat, codes, chosen = quantize(params, cfg, images)
    z_q = z + jax.lax.stop_gradient(chosen.reshape(z.shape) - z)
    decoded = vqgan._decoder(vqgan._conv(z_q, params["post_quant_conv"]), params["decoder"], cfg)
    return jnp.clip(decoded, 0.0, 1.0), flat, codes, chosen


def _loss(trainable, codebook, cfg, images, weights):
    params = {**trainable, "quantize": {"embedding": {"embedding": codebook}}}
    recon, flat, codes, chosen = reconstruct(params, cfg, images)
    mse = jnp.mean(weights[..., None] * jnp.square(recon - images)) / jnp.mean(weights)
    commitment = jnp.mean(jnp.square(flat - jax.lax.stop_gradient(chosen)))
    return mse + COMMITMENT * commitment, (mse, flat, codes)


def make_step(cfg: VQGANConfig, optimizer):
    @jax.jit
    def step(state: State, images, weights, key):
        codebook = state.params["quantize"]["embedding"]["embedding"]
        trainable = {k: v for k, v in state.params.items() if k != "quantize"}
        (_, (mse, flat, codes)), grads = jax.value_and_grad(_loss, has_aux=True)(trainable, codebook, cfg, images, weights)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)

        one_hot = jax.nn.one_hot(codes, cfg.n_embed, dtype=flat.dtype)
        counts = EMA_DECAY * state.counts + (1 - EMA_DECAY) * one_hot.sum(0)
        sums = EMA_DECAY * state.sums + (1 - EMA_DECAY) * one_hot.T @ flat
        codebook = sums / jnp.maximum(counts, 1e-6)[:, None]
        # Dead codes restart on random encoder outputs of this batch, slightly jittered.
        pick = jax.random.randint(key, (cfg.n_embed,), 0, flat.shape[0])
        fresh = flat[pick] + 1e-3 * jax.random.normal(key, codebook.shape)
        dead = (counts < DEAD_CODE_USES)[:, None]
        codebook = jnp.where(dead, fresh, codebook)
        counts = jnp.where(dead[:, 0], 1.0, counts)
        sums = jnp.where(dead, fresh, sums)
        params = {**trainable, "quantize": {"embedding": {"embedding": codebook}}}
        used = jnp.sum(counts > DEAD_CODE_USES)
        return State(params, opt_state, counts, sums), mse, used

    return step



def _crops(rng: random.Random, images: np.ndarray, scenes_centres, size: int) -> np.ndarray:
    """One grid-aligned `size` crop per image, near a shape, so few crops are all background."""
    out = []
    for image, centres in zip(images, scenes_centres):
        x, y = rng.choice(centres)
        limit = shapes_dataset.IMAGE_SIZE - size
        jitter = lambda: GRID * rng.randint(-size // (2 * GRID), size // (2 * GRID))
        left = min(max(0, (x - size // 2 + jitter()) // GRID * GRID), limit)
        top = min(max(0, (y - size // 2 + jitter()) // GRID * GRID), limit)
        out.append(image[top:top + size, left:left + size])
    return np.stack(out)


def _batch(rng: random.Random, count: int, crop: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] and per-pixel loss weights (SHAPE_WEIGHT where a shape is)."""
    scenes = [shapes_dataset.random_scene(rng) for _ in range(count)]
    images = shapes_dataset.render_all(scenes)
    if crop:
        images = _crops(rng, images, [[item.centre for item in s.items] for s in scenes], crop)
    backgrounds = np.array([shapes_dataset.BACKGROUNDS[s.background] for s in scenes], np.uint8)
    on_shape = np.any(images != backgrounds[:, None, None, :], axis=-1)
    return images.astype(np.float32) / 255.0, np.where(on_shape, SHAPE_WEIGHT, 1.0).astype(np.float32)


def save(folder: Path, params) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG.to_dict(), indent=2, sort_keys=True) + "\n")
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", jax.tree_util.tree_map(np.asarray, params))


def train(out: Path, phases: list[tuple[int | None, int, int, float]], seed: int = 0,
          start_from: Path | None = None, log_every: int = 50) -> dict:
    """Train through `phases` of (crop size or None for whole images, batch, steps, peak
    learning rate), each with its own warm-up and cosine decay; save to `out` after each.

    `start_from` (a saved VQGAN folder) replaces the random initial weights.
    """
    rng = random.Random(seed)
    if start_from is None:
        params = vqgan.init_vqgan_params(CONFIG, jax.random.PRNGKey(seed))
    else:
        params = jax.tree_util.tree_map(jnp.asarray, checkpoint.read_checkpoint(start_from / "flax_model.msgpack"))
    key = jax.random.PRNGKey(seed + 1)
    started = time.monotonic()
    history = []
    for crop, batch, steps, lr in phases:
        optimizer = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 5), steps, lr / 10))
        trainable = {k: v for k, v in params.items() if k != "quantize"}
        codebook = params["quantize"]["embedding"]["embedding"]
        state = State(params, optimizer.init(trainable), jnp.ones(CONFIG.n_embed), codebook)
        step = make_step(dataclasses.replace(CONFIG, resolution=crop or CONFIG.resolution), optimizer)
        for i in range(steps):
            key, sub = jax.random.split(key)
            state, mse, used = step(state, *_batch(rng, batch, crop), sub)
            if i % log_every == 0 or i == steps - 1:
                record = {"crop": crop or CONFIG.resolution, "step": i, "mse": float(mse), "codes_used": int(used),
                          "minutes": round((time.monotonic() - started) / 60, 2)}
                history.append(record)
                print(json.dumps(record), flush=True)
        params = state.params
        save(out, params)
    return {"minutes": (time.monotonic() - started) / 60, "history": history}


def finetune_decoder(folder: Path, steps: int, lr: float = 5e-4, seed: int = 3, log_every: int = 50) -> dict:
    """Train only the decoder side (post_quant_conv, decoder) of the VQGAN saved in `folder`.

    The encoder and codebook stay fixed, so codes computed before (the DalleBart's training
    data) keep their meaning while the pictures drawn from them get sharper.
    """
    params = jax.tree_util.tree_map(jnp.asarray, checkpoint.read_checkpoint(folder / "flax_model.msgpack"))
    decoder_side = ("post_quant_conv", "decoder")
    fixed = {k: v for k, v in params.items() if k not in decoder_side}
    trained = {k: params[k] for k in decoder_side}
    optimizer = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 5), steps, lr / 10))
    opt_state = optimizer.init(trained)

    def loss(trained, images, weights):
        recon = reconstruct({**fixed, **trained}, CONFIG, images)[0]
        return jnp.mean(weights[..., None] * jnp.square(recon - images)) / jnp.mean(weights)

    @jax.jit
    def step(trained, opt_state, images, weights):
        value, grads = jax.value_and_grad(loss)(trained, images, weights)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, value

    rng = random.Random(seed)
    started = time.monotonic()
    history = []
    for i in range(steps):
        trained, opt_state, value = step(trained, opt_state, *_batch(rng, 1, None))
        if i % log_every == 0 or i == steps - 1:
            record = {"decoder_step": i, "mse": float(value), "minutes": round((time.monotonic() - started) / 60, 2)}
            history.append(record)
            print(json.dumps(record), flush=True)
    save(folder, {**fixed, **trained})
    return {"minutes": (time.monotonic() - started) / 60, "history": history}
