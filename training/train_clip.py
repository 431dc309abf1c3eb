"""Train the demo's small CLIP on the shapes data set, and measure what ranking with it gains.

The model is the engine's own (`backend.engine.clip`: `text_features`, `image_features`,
`logits` on checkpoint-layout parameters), trained with CLIP's symmetric contrastive loss on
(rendered scene, caption) batches; the pictures go through the same `preprocess` as at run
time. Every (colour, shape) pair is used, the held-out ones too: CLIP is a separate judge, it
must know what a purple triangle is even if the DalleBart never saw one. Saved in the official
format (config.json, flax_model.msgpack, tokenizer.json) as backend/engine/demo_model/clip.

`adherence` is the demo's figure for docs/demo-model.md: for prompts that name a colour, a
shape, a place and a background, 16 candidates a seed, the share of kept pictures the project's
classifier (`evaluate.describe`) finds right in all four, best 4 by CLIP against the first 4.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backend.engine import checkpoint, clip

from . import evaluate, shapes_dataset

IMAGE_SIZE = 64  # CLIP's input: the demo's 128-pixel pictures halved
PATCH = 8
TOKENIZER_VOCAB = 400  # the target; it stops at 363, every caption word one token
TOKENIZER_CAPTIONS = 4000
ALL_PAIRS = tuple((c, s) for c in shapes_dataset.COLOURS for s in shapes_dataset.SHAPES)
MAX_LOGIT_SCALE = math.log(100.0)  # as CLIP clamps it
# The second phase (`fine_tune`): half of each batch are pairs of one-shape scenes with full
# captions that differ in one named attribute, mostly the place or the background. Random
# scenes teach CLIP what a picture holds, not which of two nearly equal pictures fits a caption
# better, which is the question ranking asks of it. Shapes there sit up to JITTER pixels off
# the caption's place (still nearest to it), as the DalleBart often draws them, so "on the
# right" means what the classifier reads: the nearest of the nine places.
TWIN_SHARE = 0.5
TWIN_ATTRIBUTES = ("place", "place", "background", "colour", "shape")
JITTER = 14  # < half the 32 pixels between places
# The third phase (`learn_places`): batches as the second's, plus a classifier of the place on
# each tower's normalised embedding (a linear head, used in training only, not saved). The
# contrastive loss alone never made either tower encode the place (the nine places' picture
# and caption embeddings stayed at a cosine of 0.9998: neither tower gains by encoding it
# while the other does not); the heads make both encode it, then the contrastive loss aligns it.
PLACE_WEIGHT = 1.0
PLACE_SCALE = 16.0  # the heads see the unit embeddings times this
# The picture tower's patch tokens come out about 20 long, its position embeddings under 1, so
# after the first layer norm the place is a 2.5 % ripple on each token and even the head
# could not read it back. The third phase starts by multiplying the position embeddings.
POSITION_BOOST = 20.0

# The measurement: prompts naming all four attributes (colour, shape, place, background).
ADHERENCE_PROMPTS = (
    "a red circle in the top left on a white background",
    "a blue square at the bottom on a black background",
    "a yellow triangle on the right on a gray background",
    "a green square in the center on a white background",
    "an orange circle in the bottom right on a black background",
    "a purple square at the top on a gray background",
    "a red triangle on the left on a black background",
    "a blue circle in the top right on a white background",
    "a yellow square in the bottom left on a gray background",
    "a green triangle in the center on a black background",
    "an orange triangle at the top on a white background",
    "a purple circle on the right on a white background",
)
ADHERENCE_SEEDS = (1, 2, 3)
CANDIDATES, KEPT = 16, 4


def model_config(vocab_size: int) -> clip.ClipConfig:
    text = clip.TowerConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                            vocab_size=vocab_size, max_position_embeddings=77)
    vision = clip.TowerConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH)
    return clip.ClipConfig(text, vision, projection_dim=64, logit_scale_init_value=math.log(1 / 0.07))


def write_tokenizer(path: Path, captions: list[str], vocab_size: int) -> None:
    """A byte-level BPE in the layout of openai's CLIP tokenizer.json (NFC, whitespace folded,
    lower case; `</w>` ends a word; the start and end tokens last), trained on `captions`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    def fresh(model) -> Tokenizer:
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                     normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                                 behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer

    options = {"continuing_subword_prefix": "", "end_of_word_suffix": "</w>"}
    learner = fresh(models.BPE(**options))
    # The trainer numbers the word-final characters ("e</w>", ...) in the order it meets them
    # in a hash map, and breaks ties between equally frequent pairs by those numbers, so two
    # runs could learn different merges. Given as special tokens after the characters, all
    # sorted, they are numbered in order: the same captions then give the same tokenizer.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    words = [word for caption in captions
             for word, _ in learner.pre_tokenizer.pre_tokenize_str(learner.normalizer.normalize_str(caption))]
    word_final = sorted({word[-1] + "</w>" for word in words})
    learner.train_from_iterator(captions, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, end_of_word_suffix="</w>", special_tokens=[*alphabet, *word_final],
        show_progress=False))
    learnt = json.loads(learner.to_str())["model"]
    vocab = dict(learnt["vocab"])  # the characters, the word-final characters, then each merge's result
    vocab.update({clip.START_TOKEN: len(vocab), clip.END_TOKEN: len(vocab) + 1})
    merges = [tuple(pair) if not isinstance(pair, str) else tuple(pair.split(" ")) for pair in learnt["merges"]]
    tokenizer = fresh(models.BPE(vocab, merges, unk_token=clip.END_TOKEN, **options))
    tokenizer.add_special_tokens([clip.START_TOKEN, clip.END_TOKEN])
    tokenizer.post_processor = processors.RobertaProcessing(
        (clip.END_TOKEN, vocab[clip.END_TOKEN]), (clip.START_TOKEN, vocab[clip.START_TOKEN]),
        trim_offsets=False, add_prefix_space=False)
    tokenizer.save(str(path))


def _single(rng: random.Random, named: dict | None = None) -> tuple[dict, shapes_dataset.Scene]:
    """A one-shape scene and the four attributes a full caption names (`named` fixes some),
    its shape up to JITTER pixels off the named place."""
    named = {"colour": rng.choice(list(shapes_dataset.COLOURS)), "shape": rng.choice(shapes_dataset.SHAPES),
             "place": rng.choice(list(shapes_dataset.PLACES)),
             "background": rng.choice(list(shapes_dataset.BACKGROUNDS)), **(named or {})}
    x, y = shapes_dataset.PLACES[named["place"]]
    centre = (x + rng.randint(-JITTER, JITTER), y + rng.randint(-JITTER, JITTER))
    item = shapes_dataset.Item(named["colour"], named["shape"], rng.choice(list(shapes_dataset.SIZES)), centre)
    return named, shapes_dataset.Scene(named["background"], (item,))


def _full_caption(named: dict, scene: shapes_dataset.Scene, rng: random.Random) -> str:
    words = ([scene.items[0].size] if rng.random() < 0.5 else []) + [named["colour"], named["shape"]]
    return (f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)} {named['place']} "
            f"on a {named['background']} background")


def _twins(rng: random.Random, count: int) -> tuple[list, list[str]]:
    """`count` one-shape scenes with full captions, in pairs that differ in one named
    attribute: each is the other's hard negative, as the candidates of one prompt are."""
    scenes, captions = [], []
    while len(scenes) < count:
        named, scene = _single(rng)
        attribute = rng.choice(TWIN_ATTRIBUTES)
        while True:
            other, twin = _single(rng, {k: v for k, v in named.items() if k != attribute})
            if other[attribute] != named[attribute]:
                break
        for these, this in ((named, scene), (other, twin)):
            scenes.append(this)
            captions.append(_full_caption(these, this, rng))
    return scenes[:count], captions[:count]


def _scenes(rng: random.Random, size: int, twin_share: float = 0.0) -> tuple[list, list[str]]:
    """A batch's scenes and captions: `twin_share` of them hard pairs (`_twins`), the rest random."""
    scenes, captions = _twins(rng, int(size * twin_share) // 2 * 2)
    if twin_share:  # (the order the shipped weights' second phase drew its random half in)
        while len(scenes) < size:
            scenes.append(shapes_dataset.random_scene(rng, ALL_PAIRS))
            captions.append(shapes_dataset.caption(scenes[-1], rng))
    else:
        rest = [shapes_dataset.random_scene(rng, ALL_PAIRS) for _ in range(size)]
        scenes, captions = rest, [shapes_dataset.caption(scene, rng) for scene in rest]
    return scenes, captions


def _batch(rng: random.Random, size: int, tokenizer: clip.ClipTokenizer, twin_share: float = 0.0):
    return _encode(tokenizer, *_scenes(rng, size, twin_share))


def _encode(tokenizer: clip.ClipTokenizer, scenes, captions) -> tuple:
    pixels = np.stack([clip.preprocess(shapes_dataset.render(scene), IMAGE_SIZE) for scene in scenes])
    ids, mask = tokenizer.encode(captions)
    return ids, mask, pixels


def _contrastive(params, config: clip.ClipConfig, end_id: int, ids, mask, pixels):
    """CLIP's symmetric loss, and the two towers' features it was computed from."""
    texts = clip.text_features(params, config, ids, mask, end_id)
    images = clip.image_features(params, config, pixels)
    scores = clip.logits(params, texts, images)
    labels = jnp.arange(scores.shape[0])
    loss = (optax.softmax_cross_entropy_with_integer_labels(scores, labels).mean()
            + optax.softmax_cross_entropy_with_integer_labels(scores.T, labels).mean()) / 2
    return loss, texts, images


def _step(loss_fn, optimiser):
    """One jitted optimiser step of `loss_fn(params, *batch)` → (loss, {name: part})."""
    @jax.jit
    def step(params, state, *batch):
        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
        updates, state = optimiser.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)
        return params, state, parts

    return step


def _loss_and_step(config: clip.ClipConfig, end_id: int, optimiser):
    def loss_fn(params, ids, mask, pixels):
        loss, _, _ = _contrastive(params, config, end_id, ids, mask, pixels)
        return loss, {"loss": loss}

    return _step(loss_fn, optimiser)


_PLACE_NAMES = tuple(shapes_dataset.PLACES)


def _place_labels(scenes, captions) -> tuple[np.ndarray, np.ndarray]:
    """The index of the place each one-shape picture's shape is nearest to, and of the place
    each caption names; -1 for two-shape scenes and captions that name none."""
    centres = np.array(list(shapes_dataset.PLACES.values()))
    pictures = [int(np.argmin(((centres - np.array(scene.items[0].centre)) ** 2).sum(-1)))
                if len(scene.items) == 1 else -1 for scene in scenes]
    texts = [next((i for i, name in enumerate(_PLACE_NAMES) if f" {name} " in f" {caption} "), -1)
             for caption in captions]
    return np.array(pictures, np.int32), np.array(texts, np.int32)


def _place_batch(rng: random.Random, size: int, tokenizer: clip.ClipTokenizer, twin_share: float):
    """As `_batch`, with the place labels of pictures and captions."""
    scenes, captions = _scenes(rng, size, twin_share)
    return (*_encode(tokenizer, scenes, captions), *_place_labels(scenes, captions))


def _place_loss_and_step(config: clip.ClipConfig, end_id: int, optimiser):
    """The contrastive loss plus PLACE_WEIGHT × the place heads' cross-entropies; the heads
    live under params["place_heads"] while training."""
    def masked_cross_entropy(features, head, labels):
        unit = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
        scores = PLACE_SCALE * unit @ head["kernel"] + head["bias"]
        losses = optax.softmax_cross_entropy_with_integer_labels(scores, jnp.maximum(labels, 0))
        known = labels >= 0
        return jnp.sum(jnp.where(known, losses, 0.0)) / jnp.maximum(known.sum(), 1)

    def loss_fn(params, ids, mask, pixels, picture_places, caption_places):
        contrastive, texts, images = _contrastive(params, config, end_id, ids, mask, pixels)
        heads = params["place_heads"]
        places = (masked_cross_entropy(images, heads["image"], picture_places)
                  + masked_cross_entropy(texts, heads["text"], caption_places))
        return contrastive + PLACE_WEIGHT * places, {"loss": contrastive, "place_loss": places}

    return _step(loss_fn, optimiser)


def _run(params, config, tokenizer, rng, steps: int, batch: int, learning_rate: float, twin_share: float,
         label: str, places: bool = False) -> tuple[dict, list[float]]:
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(200, steps // 10), steps, learning_rate / 20)
    optimiser = optax.adamw(schedule, weight_decay=1e-4)
    state = optimiser.init(params)
    make_step, make_batch = (_place_loss_and_step, _place_batch) if places else (_loss_and_step, _batch)
    step = make_step(config, tokenizer.end_id, optimiser)
    history: dict[str, list[float]] = {}
    for index in range(steps):
        params, state, parts = step(params, state, *make_batch(rng, batch, tokenizer, twin_share))
        for name, value in parts.items():
            history.setdefault(name, []).append(float(value))
        if index % 100 == 0 or index == steps - 1:
            print(json.dumps({label: index, **{name: round(float(np.mean(values[-100:])), 4)
                                               for name, values in history.items()}}), flush=True)
    return params, history["loss"]


def _save(folder: Path, config: clip.ClipConfig, params) -> None:
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", jax.tree_util.tree_map(np.asarray, params))


def train(folder: Path, steps: int, batch: int = 128, seed: int = 0, learning_rate: float = 2e-3) -> dict:
    """Phase one: the tokenizer, then `steps` steps on random captioned scenes, from scratch."""
    started = time.monotonic()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions = [shapes_dataset.caption(shapes_dataset.random_scene(rng, ALL_PAIRS), rng)
                for _ in range(TOKENIZER_CAPTIONS)]
    write_tokenizer(folder / "tokenizer.json", captions, TOKENIZER_VOCAB)
    tokenizer = clip.ClipTokenizer(folder / "tokenizer.json", 77)
    config = model_config(tokenizer.vocab_size)
    params = jax.tree_util.tree_map(jnp.asarray, clip.random_params(config, seed))
    params, losses = _run(params, config, tokenizer, rng, steps, batch, learning_rate, 0.0, "clip_step")
    _save(folder, config, params)
    return {"minutes": (time.monotonic() - started) / 60, "final_loss": float(np.mean(losses[-100:]))}


def fine_tune(folder: Path, steps: int, batch: int = 128, seed: int = 1, learning_rate: float = 5e-4) -> dict:
    """Phase two, on the folder phase one wrote: `steps` steps with TWIN_SHARE hard pairs."""
    started = time.monotonic()
    folder = Path(folder)
    tokenizer = clip.ClipTokenizer(folder / "tokenizer.json", 77)
    config = clip.read_config(folder)
    params = jax.tree_util.tree_map(jnp.asarray, clip.read_params(folder, config, "float32"))
    params, losses = _run(params, config, tokenizer, random.Random(seed), steps, batch, learning_rate, TWIN_SHARE,
                          "clip_fine_tune_step")
    _save(folder, config, params)
    return {"minutes": (time.monotonic() - started) / 60, "final_loss": float(np.mean(losses[-100:]))}


def learn_places(folder: Path, steps: int, batch: int = 128, seed: int = 2, learning_rate: float = 1e-3,
                 position_boost: float = POSITION_BOOST) -> dict:
    """Phase three, on the folder phase two wrote: the picture tower's position embeddings
    times `position_boost`, then `steps` steps of phase two's batches with the place heads
    (PLACE_WEIGHT), which are dropped when saved: the files stay openai's CLIP. Its
    `final_loss` is the contrastive part alone, comparable with the other phases'."""
    started = time.monotonic()
    folder = Path(folder)
    tokenizer = clip.ClipTokenizer(folder / "tokenizer.json", 77)
    config = clip.read_config(folder)
    params = jax.tree_util.tree_map(jnp.asarray, clip.read_params(folder, config, "float32"))
    embeddings = params["vision_model"]["embeddings"]["position_embedding"]
    embeddings["embedding"] = embeddings["embedding"] * position_boost
    width = config.projection_dim
    # Random heads: zero ones would pass no gradient to the towers, which would then never
    # start to encode the place.
    key = np.random.default_rng(seed)
    params["place_heads"] = {
        tower: {"kernel": jnp.asarray(key.standard_normal((width, len(_PLACE_NAMES)), np.float32) / math.sqrt(width)),
                "bias": jnp.zeros((len(_PLACE_NAMES),))} for tower in ("image", "text")}
    params, losses = _run(params, config, tokenizer, random.Random(seed), steps, batch, learning_rate, TWIN_SHARE,
                          "clip_place_step", places=True)
    params.pop("place_heads")
    _save(folder, config, params)
    return {"minutes": (time.monotonic() - started) / 60, "final_loss": float(np.mean(losses[-100:]))}


def all_right(found: dict, prompt: str) -> bool:
    """Whether the classifier's reading of a picture has every attribute `prompt` names."""
    named = {"colour": next(c for c in shapes_dataset.COLOURS if f" {c} " in f" {prompt} "),
             "shape": next(s for s in shapes_dataset.SHAPES if f" {s} " in f" {prompt} "),
             "place": next(p for p in shapes_dataset.PLACES if f" {p} " in f" {prompt} "),
             "background": next(b for b in shapes_dataset.BACKGROUNDS if f"on a {b} background" in prompt)}
    return all(found[key] == value for key, value in named.items())


def adherence(engine, ranker, prompts=ADHERENCE_PROMPTS, seeds=ADHERENCE_SEEDS, candidates: int = CANDIDATES,
              kept: int = KEPT) -> dict:
    """Per prompt and overall: the share of kept pictures right in all named attributes, the
    first `kept` of `candidates` (unranked) against the best `kept` by CLIP (ranked)."""
    from backend.engine import GenerationRequest

    rows = {}
    for prompt in prompts:
        first, best = [], []
        for seed in seeds:
            images = engine.generate(GenerationRequest(prompt, candidates, seed=seed)).images
            right = [all_right(evaluate.describe(image), prompt) for image in images]
            scores = ranker.score(prompt, images)
            order = sorted(range(len(images)), key=lambda i: (-scores[i], i))
            first += right[:kept]
            best += [right[i] for i in order[:kept]]
        rows[prompt] = {"unranked": float(np.mean(first)), "ranked": float(np.mean(best))}
    unranked = float(np.mean([row["unranked"] for row in rows.values()]))
    ranked = float(np.mean([row["ranked"] for row in rows.values()]))
    return {"prompts": rows, "unranked": unranked, "ranked": ranked, "gain_points": 100 * (ranked - unranked),
            "seeds": list(seeds), "candidates": candidates, "kept": kept}
