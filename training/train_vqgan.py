"""Train the demo VQGAN (the engine's architecture, small) on the shapes data set.

The codebook is not found by vector quantisation: `patch_codes` names every kind of patch
the data set draws, so each picture's codes are known exactly. Training is then two plain
supervised problems:

1. the decoder (with `post_quant_conv` and the codebook's vectors, built from learnt
   background, colour and mask parts) learns to draw the pictures from their codes;
2. the encoder (with `quant_conv`) learns to put each patch nearest its own code's vector.

The result is saved as an ordinary VQGAN checkpoint: `encode_images` then `decode_codes`
round-trips a picture like any other VQGAN's.
"""
from __future__ import annotations

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
from .patch_codes import PatchCodebook

EMBED_PARTS = (4, 6, 22)  # vector sizes of the background, colour and mask parts of a code
BUSY_SHARE = 0.5  # share of training pictures that are busy scenes (more edges a step)
SHAPE_WEIGHT = 10.0  # shapes are a small part of each picture; their pixels weigh this much more
EDGE_WEIGHT = 30.0  # added to the weight of every pixel of an edge patch when sharpening


def config(codebook: PatchCodebook) -> VQGANConfig:
    """128×128 pictures (three upsamplings from 16×16 codes), so that the decoder can be 128
    channels wide for the cost of 64 at 256×256. The width matters: GroupNorm's 32 groups
    normalise away whatever is constant across a picture, such as its background colour,
    except for the direction of each group's channel vector; with 2 channels a group that
    direction is a mere sign, with 4 it is a point on a sphere the decoder can learn to use.
    One residual block a level, and no attention but the middle block's, keep the top level
    affordable on a CPU."""
    return VQGANConfig(ch=128, ch_mult=(1, 1, 1, 1), num_res_blocks=0, attn_resolutions=(),
                       z_channels=32, embed_dim=sum(EMBED_PARTS), n_embed=codebook.size,
                       resolution=shapes_dataset.IMAGE_SIZE)


def code_vectors(parts: dict, factors: jax.Array) -> jax.Array:
    """[n_embed, embed_dim]: each code's background, colour and mask vectors, concatenated."""
    return jnp.concatenate([parts["background"][factors[:, 0]], parts["colour"][factors[:, 1]],
                            parts["mask"][factors[:, 2]]], axis=1)


def init_parts(codebook: PatchCodebook, key: jax.Array) -> dict:
    rows = codebook.factor_rows()
    keys = jax.random.split(key, len(rows))
    return {name: jax.random.normal(k, (count, size)) for (name, count), size, k in zip(rows.items(), EMBED_PARTS, keys)}


def decode(params: dict, cfg: VQGANConfig, vectors: jax.Array, codes: jax.Array) -> jax.Array:
    """Pictures [B, size, size, 3] drawn from codes [B, 256] by the engine's decoder, before the
    engine clips them to [0, 1]: a loss on clipped values has no gradient for a pixel that is
    out of range, and at the start most are."""
    side = cfg.latent_size
    z = vectors[codes].reshape(codes.shape[0], side, side, cfg.embed_dim)
    return vqgan._decoder(vqgan._conv(z, params["post_quant_conv"]), params["decoder"], cfg)


def encoder_logits(params: dict, cfg: VQGANConfig, vectors: jax.Array, images: jax.Array) -> jax.Array:
    """[B * 256, n_embed]: minus the squared distance of each patch's vector to every code's,
    so the largest logit is the code `encode_images` picks."""
    z = vqgan._conv(vqgan._encoder(images, params["encoder"], cfg), params["quant_conv"]).reshape(-1, cfg.embed_dim)
    return -(jnp.sum(vectors ** 2, axis=1) - 2.0 * z @ vectors.T + jnp.sum(z ** 2, axis=1, keepdims=True))


def _batch(rng: random.Random, codebook: PatchCodebook, count: int):
    """Scenes, half captioned and half busy: images in [0, 1], loss weights (SHAPE_WEIGHT on
    shapes) and codes."""
    scenes = [(shapes_dataset.busy_scene if rng.random() < BUSY_SHARE else shapes_dataset.random_scene)(rng)
              for _ in range(count)]
    images = shapes_dataset.render_all(scenes)
    backgrounds = np.array([shapes_dataset.BACKGROUNDS[s.background] for s in scenes], np.uint8)
    on_shape = np.any(images != backgrounds[:, None, None, :], axis=-1)
    weights = np.where(on_shape, SHAPE_WEIGHT, 1.0).astype(np.float32)
    codes = np.stack([codebook.encode(scene, image) for scene, image in zip(scenes, images)])
    return images.astype(np.float32) / 255.0, weights, codes


def _schedule(lr: float, steps: int):
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, min(100, steps // 10)), steps, lr / 20)


def _weighted_mse(drawn, images, weights):
    return jnp.mean(weights[..., None] * jnp.square(drawn - images)) / jnp.mean(weights)


def _fit(loss, trained, codebook: PatchCodebook, steps: int, lr: float, seed: int, batch: int, name: str,
         log_every: int = 50, checkpoint=None, save_every: int = 250) -> tuple[dict, list]:
    """Adam (warm-up, cosine decay, clipped gradients) on `loss(trained, images, weights, codes)`
    over fresh batches; `checkpoint(trained)` every `save_every` steps. The trained values and
    the log."""
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(_schedule(lr, steps)))

    @jax.jit
    def step(trained, opt_state, images, weights, codes):
        value, grads = jax.value_and_grad(loss)(trained, images, weights, codes)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, value

    opt_state, rng = optimizer.init(trained), random.Random(seed)
    started, history = time.monotonic(), []
    for i in range(steps):
        trained, opt_state, value = step(trained, opt_state, *_batch(rng, codebook, batch))
        if i % log_every == 0 or i == steps - 1:
            record = {"stage": name, "step": i, "loss": round(float(value), 5),
                      "minutes": round((time.monotonic() - started) / 60, 2)}
            history.append(record)
            print(json.dumps(record), flush=True)
        if checkpoint and (i + 1) % save_every == 0:
            checkpoint(trained)
    return trained, history


def train_decoder(params: dict, parts: dict, codebook: PatchCodebook, steps: int, lr: float, seed: int,
                  out: Path | None = None) -> tuple[dict, dict, list]:
    """Fit `post_quant_conv`, the decoder and the code vectors' parts to draw scenes from codes;
    saved to `out` (when given) as it goes, so a long run can be looked at."""
    cfg, factors = config(codebook), jnp.asarray(codebook.factors())

    def loss(trained, images, weights, codes):
        return _weighted_mse(decode(trained, cfg, code_vectors(trained["parts"], factors), codes), images, weights)

    def checkpoint(trained):
        if out is not None:
            rest = {k: v for k, v in trained.items() if k != "parts"}
            save(out, cfg, {**params, **rest}, code_vectors(trained["parts"], factors))

    trained = {"post_quant_conv": params["post_quant_conv"], "decoder": params["decoder"], "parts": parts}
    trained, history = _fit(loss, trained, codebook, steps, lr, seed, 1, "decoder", checkpoint=checkpoint)
    parts = trained.pop("parts")
    return {**params, **trained}, parts, history


def train_encoder(params: dict, vectors: jax.Array, codebook: PatchCodebook, steps: int, lr: float, seed: int,
                  batch: int = 4) -> tuple[dict, list]:
    """Fit the encoder and `quant_conv` so each patch lands nearest its code's vector."""
    cfg = config(codebook)

    def loss(trained, images, weights, codes):
        logits = encoder_logits(trained, cfg, vectors, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, codes.reshape(-1)).mean()

    trained = {"encoder": params["encoder"], "quant_conv": params["quant_conv"]}
    trained, history = _fit(loss, trained, codebook, steps, lr, seed, batch, "encoder")
    return {**params, **trained}, history


def sharpen_decoder(folder: Path, steps: int, lr: float = 2e-4, seed: int = 2) -> dict:
    """Train the decoder of the VQGAN saved in `folder` further with its edge patches' pixels
    weighing EDGE_WEIGHT more: after `train`, colours are right but the masks inside edge
    patches are still blurred (circles come out as rounded squares). The code vectors stay
    fixed, so the encoder trained for them stays valid."""
    started = time.monotonic()
    codebook = PatchCodebook.enumerate()
    cfg = config(codebook)
    params = jax.tree_util.tree_map(jnp.asarray, checkpoint.read_checkpoint(folder / "flax_model.msgpack"))
    vectors = params["quantize"]["embedding"]["embedding"]
    edge_codes = jnp.asarray(codebook.edges(), jnp.float32)

    def loss(trained, images, weights, codes):
        side, patch = cfg.latent_size, cfg.resolution // cfg.latent_size
        edges = edge_codes[codes].reshape(-1, side, 1, side, 1)
        edges = jnp.broadcast_to(edges, (edges.shape[0], side, patch, side, patch)).reshape(weights.shape)
        return _weighted_mse(decode(trained, cfg, vectors, codes), images, weights + EDGE_WEIGHT * edges)

    trained = {"post_quant_conv": params["post_quant_conv"], "decoder": params["decoder"]}
    trained, history = _fit(loss, trained, codebook, steps, lr, seed, 1, "sharpen",
                            checkpoint=lambda trained: save(folder, cfg, {**params, **trained}, vectors))
    save(folder, cfg, {**params, **trained}, vectors)
    return {"minutes": (time.monotonic() - started) / 60, "history": history}


def save(folder: Path, cfg: VQGANConfig, params: dict, vectors: jax.Array) -> None:
    params = {**params, "quantize": {"embedding": {"embedding": vectors}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", jax.tree_util.tree_map(np.asarray, params))


def train(out: Path, decoder_steps: int, encoder_steps: int, decoder_lr: float = 5e-4,
          encoder_lr: float = 1e-3, seed: int = 0) -> dict:
    """Decoder first (it shapes the code vectors), then the encoder; saves to `out` after each."""
    started = time.monotonic()
    codebook = PatchCodebook.enumerate()
    cfg = config(codebook)
    params = vqgan.init_vqgan_params(cfg, jax.random.PRNGKey(seed))
    parts = init_parts(codebook, jax.random.PRNGKey(seed + 1))
    params, parts, decoder_log = train_decoder(params, parts, codebook, decoder_steps, decoder_lr, seed, out)
    vectors = code_vectors(parts, jnp.asarray(codebook.factors()))
    save(out, cfg, params, vectors)
    params, encoder_log = train_encoder(params, vectors, codebook, encoder_steps, encoder_lr, seed + 1)
    save(out, cfg, params, vectors)
    return {"minutes": (time.monotonic() - started) / 60, "history": decoder_log + encoder_log}
