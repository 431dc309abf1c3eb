"""Train a small DalleBart on (caption, image codes) pairs of the shapes data set.

The codes of a scene are its patches' codes (`patch_codes`), the ones the demo VQGAN's
encoder gives and its decoder draws. The image-token tables (the decoder's input embedding
and `lm_head`) are trained factored: a code's row is the sum of its background's, colour's
and mask's rows, so codes no training picture holds (a purple triangle's edges) still get
the colour learnt elsewhere and the mask learnt on other colours. They are multiplied out
into the checkpoint's ordinary tables when saved.

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

from backend.engine import checkpoint, dallebart
from backend.engine.dallebart import DalleBartConfig
from backend.engine.request import DEFAULT_SAMPLING
from backend.engine.text_normalizer import TextNormalizer
from backend.engine.tokenizer import TextTokenizer, write_tokenizer

from . import shapes_dataset
from .patch_codes import PatchCodebook

EMPTY_PROMPT_SHARE = 0.15
# Without smoothing the model grows so sure of itself that codes it has never seen in a
# context get log-probabilities far below anything real; condition_scale 10 then multiplies
# the gap between the prompt's and the empty prompt's log-probabilities of such codes and
# samples them, and the pictures dissolve into noise. Smoothing keeps every code's
# log-probability above a floor where prompt and empty prompt agree.
LABEL_SMOOTHING = 0.1
# Smoothing alone leaves noise of a nat or so among those improbable codes, which
# condition_scale 10 still turns into the likeliest choice now and then. The last steps of
# training therefore also score the guided logits (empty prompt's + GUIDED_SCALE × the
# difference), the very scores the engine samples from, so that they favour the right code.
GUIDED_SCALE = DEFAULT_SAMPLING["condition_scale"]  # the engine's default: 10
TEXT_VOCAB_SIZE = 400  # the 256 bytes, 5 specials, and merges enough for one token a word
TEXT_LENGTH = 32  # the longest caption is about 16 tokens
# Scenes encoded once for the whole run: every one of the 1,215 one-shape scenes and random
# two-shape ones.
TWO_SHAPE_SCENES = 600


def model_config(text_vocab: int, image_codes: int) -> DalleBartConfig:
    return DalleBartConfig(
        d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
        encoder_vocab_size=text_vocab, image_vocab_size=image_codes, max_text_length=TEXT_LENGTH,
        decoder_start_token_id=image_codes, pad_token_id=image_codes + 1)


def init_trainable(config: DalleBartConfig, codebook: PatchCodebook, seed: int) -> dict:
    """The checkpoint's parameters without its image-token tables, and their factors."""
    params = dallebart.random_params(config, seed)
    del params["lm_head"], params["model"]["decoder"]["embed_tokens"]
    rng = np.random.default_rng(seed + 1)
    rows = {**codebook.factor_rows(), "start": 1}
    factors = {side: {name: 0.02 * rng.standard_normal((count, config.d_model), dtype=np.float32)
                      for name, count in rows.items()} for side in ("in", "out")}
    return jax.tree_util.tree_map(jnp.asarray, {"rest": params, "image_tokens": factors})


def checkpoint_params(trainable: dict, factors: jax.Array) -> dict:
    """The checkpoint layout: image-token tables multiplied out, the start token's row last."""
    def table(parts):
        codes = parts["background"][factors[:, 0]] + parts["colour"][factors[:, 1]] + parts["mask"][factors[:, 2]]
        return jnp.concatenate([codes, parts["start"]])

    rest, tokens = trainable["rest"], trainable["image_tokens"]
    decoder = {**rest["model"]["decoder"], "embed_tokens": {"embedding": table(tokens["in"])}}
    return {**rest, "model": {**rest["model"], "decoder": decoder}, "lm_head": {"kernel": table(tokens["out"]).T}}


def image_logits(params, config: DalleBartConfig, input_ids, attention_mask, codes):
    """Teacher-forced logits [N, 256, V]: position t sees the start token and codes before t."""
    layers = dallebart.unstack_layers(params)
    states = dallebart.encode(layers, config, input_ids, attention_mask)
    start = jnp.full((codes.shape[0], 1), config.decoder_start_token_id, codes.dtype)
    decoder_input = jnp.concatenate([start, codes[:, :-1]], axis=1)
    return dallebart.decode_full(layers, config, decoder_input, states, attention_mask)


def _loss(trainable, factors, config, input_ids, attention_mask, codes, empty_ids, empty_mask, prompted, guided):
    """Smoothed cross-entropy of the logits; with `guided`, plus the plain cross-entropy of
    the guided logits of the rows with a prompt (`prompted` 1.0)."""
    params = checkpoint_params(trainable, factors)
    logits = image_logits(params, config, input_ids, attention_mask, codes)
    targets = optax.smooth_labels(jax.nn.one_hot(codes, logits.shape[-1]), LABEL_SMOOTHING)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    if guided:
        empty = image_logits(params, config, empty_ids, empty_mask, codes)
        scores = empty + GUIDED_SCALE * (logits - empty)
        per_row = optax.softmax_cross_entropy_with_integer_labels(scores, codes).mean(axis=1)
        loss = loss + jnp.sum(per_row * prompted) / jnp.maximum(jnp.sum(prompted), 1.0)
    return loss


def training_scenes(seed: int) -> list[shapes_dataset.Scene]:
    rng = random.Random(seed)
    two = []
    while len(two) < TWO_SHAPE_SCENES:
        scene = shapes_dataset.random_scene(rng)
        if len(scene.items) == 2:
            two.append(scene)
    return shapes_dataset.single_shape_scenes() + two


def train_tokenizer(folder: Path, seed: int) -> TextTokenizer:
    """Train the BPE on normalised captions (what the engine feeds it) and load it back."""
    rng = random.Random(seed)
    normalizer = TextNormalizer()
    corpus = [normalizer.normalize(shapes_dataset.caption(shapes_dataset.random_scene(rng), rng))
              for _ in range(5000)]
    write_tokenizer(folder, corpus, TEXT_VOCAB_SIZE)
    return TextTokenizer.from_folder(folder)


def train(out: Path, steps: int, guided_steps: int = 0, batch: int = 16, seed: int = 0, lr: float = 3e-3,
          guided_lr: float = 1e-3, log_every: int = 25, save_every: int = 100) -> dict:
    """Tokenizer, codes, then `steps` AdamW steps and `guided_steps` more with the guided
    loss (each phase with its own warm-up and decay); writes the model folder `out` (saved
    as it goes)."""
    started = time.monotonic()
    codebook = PatchCodebook.enumerate()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(out, seed)
    config = model_config(tokenizer.vocab_size, codebook.size)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")

    scenes = training_scenes(seed)
    codes = np.stack([codebook.encode(scene) for scene in scenes])
    encoded_minutes = (time.monotonic() - started) / 60
    print(json.dumps({"scenes": len(scenes), "encode_minutes": round(encoded_minutes, 2)}), flush=True)

    factors = jnp.asarray(codebook.factors())
    params = init_trainable(config, codebook, seed)
    empty_ids, empty_mask = tokenizer.encode([""] * batch, max_length=config.max_text_length)
    rng = random.Random(seed + 1)
    normalizer = TextNormalizer()
    history = []
    for phase_steps, phase_lr, guided in ((steps, lr, False), (guided_steps, guided_lr, True)):
        if not phase_steps:
            continue
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.warmup_cosine_decay_schedule(
            0.0, phase_lr, min(100, phase_steps // 5), phase_steps, phase_lr / 20), weight_decay=0.01))
        opt_state = optimizer.init(params)

        @jax.jit
        def step(params, opt_state, input_ids, attention_mask, batch_codes, prompted):
            loss, grads = jax.value_and_grad(_loss)(params, factors, config, input_ids, attention_mask, batch_codes,
                                                    empty_ids, empty_mask, prompted, guided)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        for i in range(phase_steps):
            rows = [rng.randrange(len(scenes)) for _ in range(batch)]
            texts = ["" if rng.random() < EMPTY_PROMPT_SHARE
                     else normalizer.normalize(shapes_dataset.caption(scenes[r], rng)) for r in rows]
            input_ids, attention_mask = tokenizer.encode(texts, max_length=config.max_text_length)
            prompted = np.array([bool(text) for text in texts], np.float32)
            params, opt_state, loss = step(params, opt_state, input_ids, attention_mask, codes[rows], prompted)
            if i % log_every == 0 or i == phase_steps - 1:
                record = {"step": i, "guided": guided, "loss": round(float(loss), 4),
                          "minutes": round((time.monotonic() - started) / 60, 2)}
                history.append(record)
                print(json.dumps(record), flush=True)
            if (i + 1) % save_every == 0 or i == phase_steps - 1:
                checkpoint.write_checkpoint(out / "flax_model.msgpack",
                                            jax.tree_util.tree_map(np.asarray, checkpoint_params(params, factors)))
    return {"minutes": (time.monotonic() - started) / 60, "encode_minutes": encoded_minutes, "history": history}
