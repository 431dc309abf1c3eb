"""Train a small DalleBart on (caption, VQGAN codes) pairs of the shapes data set.

Teacher forcing with the engine's own model functions (`dallebart.encode` and
`dallebart.decode_full` on `unstack_layers` of the checkpoint-layout parameters), so what is
trained is exactly what the engine samples from. A share of captions is replaced by the
empty prompt, which is what super-conditioning (condition_scale) subtracts at run time.
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

from backend.engine import checkpoint, dallebart, vqgan
from backend.engine.dallebart import DalleBartConfig
from backend.engine.text_normalizer import TextNormalizer
from backend.engine.tokenizer import TextTokenizer

from . import shapes_dataset, text_tokenizer

EMPTY_PROMPT_SHARE = 0.15
TEXT_VOCAB_SIZE = 400  # the 256 bytes, 5 specials, and merges enough for one token a word
TEXT_LENGTH = 32  # the longest caption is about 16 tokens
# Scenes encoded once for the whole run (the VQGAN encoder is the slow part of preparing):
# a random share of the 1,215 one-shape scenes and random two-shape ones.
ONE_SHAPE_SCENES = 800
TWO_SHAPE_SCENES = 250
ENCODE_BATCH = 8


def model_config(text_vocab: int, image_codes: int) -> DalleBartConfig:
    return DalleBartConfig(
        d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
        encoder_vocab_size=text_vocab, image_vocab_size=image_codes, max_text_length=TEXT_LENGTH,
        decoder_start_token_id=image_codes, pad_token_id=image_codes + 1)


def image_logits(params, config: DalleBartConfig, input_ids, attention_mask, codes):
    """Teacher-forced logits [N, 256, V]: position t sees the start token and codes before t."""
    layers = dallebart.unstack_layers(params)
    states = dallebart.encode(layers, config, input_ids, attention_mask)
    start = jnp.full((codes.shape[0], 1), config.decoder_start_token_id, codes.dtype)
    decoder_input = jnp.concatenate([start, codes[:, :-1]], axis=1)
    return dallebart.decode_full(layers, config, decoder_input, states, attention_mask)


def _loss(params, config, input_ids, attention_mask, codes):
    logits = image_logits(params, config, input_ids, attention_mask, codes)
    return optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()


def encode_scenes(vqgan_params, vqgan_config, scenes) -> np.ndarray:
    """VQGAN codes int32 [len(scenes), 256] of the rendered scenes."""
    encode = jax.jit(lambda images: vqgan.encode_images(vqgan_params, vqgan_config, images))
    out = []
    for start in range(0, len(scenes), ENCODE_BATCH):
        piece = scenes[start:start + ENCODE_BATCH]
        images = shapes_dataset.render_all(piece).astype(np.float32) / 255.0
        if len(piece) < ENCODE_BATCH:  # one compiled shape for every call
            images = np.concatenate([images, np.repeat(images[-1:], ENCODE_BATCH - len(piece), axis=0)])
        out.append(np.asarray(encode(images))[:len(piece)])
    return np.concatenate(out)


def training_scenes(seed: int) -> list[shapes_dataset.Scene]:
    rng = random.Random(seed)
    two = []
    while len(two) < TWO_SHAPE_SCENES:
        scene = shapes_dataset.random_scene(rng)
        if len(scene.items) == 2:
            two.append(scene)
    return rng.sample(shapes_dataset.single_shape_scenes(), ONE_SHAPE_SCENES) + two


def write_tokenizer(folder: Path, seed: int) -> TextTokenizer:
    """Train the BPE on normalised captions (what the engine feeds it) and load it back."""
    rng = random.Random(seed)
    normalizer = TextNormalizer()
    corpus = [normalizer.normalize(shapes_dataset.caption(shapes_dataset.random_scene(rng), rng))
              for _ in range(5000)]
    text_tokenizer.write_tokenizer(folder, corpus, TEXT_VOCAB_SIZE)
    return TextTokenizer.from_folder(folder)


def train(out: Path, vqgan_dir: Path, steps: int, batch: int = 16, seed: int = 0, lr: float = 3e-3,
          log_every: int = 25, save_every: int = 100) -> dict:
    """Tokenizer, codes, then `steps` Adam steps; writes the model folder `out` (saved as it goes)."""
    started = time.monotonic()
    vqgan_config = vqgan.VQGANConfig.from_dict(json.loads((vqgan_dir / "config.json").read_text()))
    vqgan_params = checkpoint.read_checkpoint(vqgan_dir / "flax_model.msgpack")
    tokenizer = write_tokenizer(out, seed)
    config = model_config(tokenizer.vocab_size, vqgan_config.n_embed)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")

    scenes = training_scenes(seed)
    codes = encode_scenes(vqgan_params, vqgan_config, scenes)
    encoded_minutes = (time.monotonic() - started) / 60
    print(json.dumps({"scenes": len(scenes), "encode_minutes": round(encoded_minutes, 2)}), flush=True)

    params = jax.tree_util.tree_map(jnp.asarray, dallebart.random_params(config, seed))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 5), steps, lr / 20), weight_decay=0.01))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, input_ids, attention_mask, batch_codes):
        loss, grads = jax.value_and_grad(_loss)(params, config, input_ids, attention_mask, batch_codes)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = random.Random(seed + 1)
    normalizer = TextNormalizer()
    history = []
    for i in range(steps):
        rows = [rng.randrange(len(scenes)) for _ in range(batch)]
        texts = ["" if rng.random() < EMPTY_PROMPT_SHARE
                 else normalizer.normalize(shapes_dataset.caption(scenes[r], rng)) for r in rows]
        input_ids, attention_mask = tokenizer.encode(texts, max_length=config.max_text_length)
        params, opt_state, loss = step(params, opt_state, input_ids, attention_mask, codes[rows])
        if i % log_every == 0 or i == steps - 1:
            record = {"step": i, "loss": round(float(loss), 4), "minutes": round((time.monotonic() - started) / 60, 2)}
            history.append(record)
            print(json.dumps(record), flush=True)
        if (i + 1) % save_every == 0 or i == steps - 1:
            checkpoint.write_checkpoint(out / "flax_model.msgpack", jax.tree_util.tree_map(np.asarray, params))
    return {"minutes": (time.monotonic() - started) / 60, "encode_minutes": encoded_minutes, "history": history}
