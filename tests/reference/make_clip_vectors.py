"""Write tests/data/reference_clip/: a tiny random CLIP made, saved and run by transformers'
`FlaxCLIPModel`, `CLIPTokenizerFast` and `CLIPImageProcessor`, for tests/test_clip_reference.py;
and the parameter trees of the two published CLIP configurations, for tests/test_clip.py.

This script never runs in the project's environment: it needs transformers with Flax, in a
virtual environment of its own, kept outside the repository. It was run with Python 3.11 and

    python3.11 -m venv "$CLIPREFVENV"
    "$CLIPREFVENV/bin/pip" install "transformers<5" flax jax pillow numpy
    #  -> transformers 4.57.6, flax 0.12.8, jax 0.10.2, tokenizers 0.22.2, pillow 13.0.0
    "$CLIPREFVENV/bin/python" tests/reference/make_clip_vectors.py    # from the repository root

What is written, all float32 on the CPU:
  model/             `save_pretrained` files of the tiny CLIP (config.json, flax_model.msgpack)
                     and its tokenizer.json: a byte-level BPE in CLIP's layout (lower-casing,
                     `</w>` word ends, start and end tokens last in the vocabulary)
  vectors.npz        token ids and masks, the pictures and their pixel values, text and image
                     features, logits; pixel values of a larger picture through the 224-pixel
                     processor of openai/clip-vit-base-patch32 (every 4th row and column)
  inputs.json        the prompts, picture sizes and versions
  ../checkpoint_trees/clip_vit_base_patch32.json, clip_vit_large_patch14.json
                     {path: shape} of FlaxCLIPModel's parameters for each published config

The weights are transformers' own initialisation, except that layer-norm scales and all biases
are drawn at random (a fresh model has 1s and 0s there, which would hide a norm or a bias used
wrongly) and the logit scale is 2.0 instead of 2.6592 (also checked: it is exp'd).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_platform_name", "cpu")
jax.config.update("jax_default_matmul_precision", "float32")

import flax  # noqa: E402
import PIL  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402
from PIL import Image  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTokenizerFast, FlaxCLIPModel  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
OUT = DATA / "reference_clip"
SEED = 3
START, END = "<|startoftext|>", "<|endoftext|>"
CORPUS = [
    "a red circle on a blue background", "a small green square at the top left",
    "a yellow triangle in the middle", "two cats sitting on a wooden table",
    "an astronaut riding a horse, oil painting", "a photo of a city street at night",
]
PROMPTS = ["a red circle on a blue background", "A Yellow   TRIANGLE!", "cats",
           " ".join(["a green square"] * 30)]  # the last is over 77 tokens: truncated
PICTURES = [(32, 32), (48, 64), (70, 40), (33, 45)]  # (width, height)
# The published configurations, as far as they differ from CLIPConfig's defaults.
PUBLISHED = {
    "clip_vit_base_patch32": {
        "projection_dim": 512, "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                        "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                          "num_hidden_layers": 12, "image_size": 224, "patch_size": 32,
                          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512},
    },
    "clip_vit_large_patch14": {
        "projection_dim": 768, "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                        "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                          "num_hidden_layers": 24, "image_size": 224, "patch_size": 14,
                          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768},
    },
}


def make_tokenizer(path: Path) -> int:
    """A small BPE in the layout of openai's CLIP tokenizer.json; returns its vocabulary size."""
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=END))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    # The start and end tokens go last in the model's own vocabulary, as in openai's file.
    vocab = bpe.get_vocab()
    vocab.update({START: len(vocab), END: len(vocab) + 1})
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]  # [[a, b], ...]
    bpe.model = models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=END)
    bpe.add_special_tokens([START, END])
    bpe.post_processor = processors.RobertaProcessing(
        (END, bpe.token_to_id(END)), (START, bpe.token_to_id(START)), trim_offsets=False, add_prefix_space=False)
    bpe.save(str(path))
    return bpe.get_vocab_size()


def tiny_config(vocab_size: int, end_id: int) -> CLIPConfig:
    return CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "eos_token_id": end_id, "bos_token_id": end_id - 1, "pad_token_id": end_id},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8, "hidden_act": "gelu"},
        projection_dim=16, logit_scale_init_value=2.0)


def randomise(params, rng: np.random.Generator):
    flat = flatten_dict(params)
    for path in sorted(flat):
        leaf = np.asarray(flat[path])
        if path[-1] == "scale":
            flat[path] = (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        elif path[-1] == "bias":
            flat[path] = (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        elif path[-1] != "logit_scale":
            # 5× transformers' init, so that the tiny model's outputs are not near-constant.
            flat[path] = (5.0 * leaf).astype(np.float32)
    return unflatten_dict(flat)


def picture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth colours plus noise: resizing has something to do, the file stays small."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def published_trees() -> None:
    for name, overrides in PUBLISHED.items():
        config = CLIPConfig(**overrides)
        model = FlaxCLIPModel(config, _do_init=False)
        size = config.vision_config.image_size
        shapes = jax.eval_shape(lambda rng: model.init_weights(rng, ((1, 1), (1, size, size, 3))),
                                jax.random.PRNGKey(0))
        tree = {"/".join(path): list(leaf.shape) for path, leaf in sorted(flatten_dict(shapes).items())}
        text = "{\n" + f'"config": {json.dumps(config.to_dict(), sort_keys=True, default=str)},\n'
        text += ",\n".join(f"{json.dumps(path)}: {json.dumps(shape)}" for path, shape in tree.items()) + "\n}\n"
        (DATA / "checkpoint_trees" / f"{name}.json").write_text(text, encoding="utf-8")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    model_dir = OUT / "model"
    model_dir.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    vocab_size = make_tokenizer(model_dir / "tokenizer.json")
    tokenizer = CLIPTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token=START,
                                  eos_token=END, pad_token=END, unk_token=END)
    end_id = tokenizer.convert_tokens_to_ids(END)
    assert end_id == vocab_size - 1
    model = FlaxCLIPModel(tiny_config(vocab_size, end_id), seed=SEED)
    model.params = randomise(model.params, rng)
    model.save_pretrained(model_dir)

    text = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [picture(size, rng) for size in PICTURES]
    pixel_values = processor(images=[Image.fromarray(image) for image in images], return_tensors="np")["pixel_values"]
    outputs = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixel_values)
    text_features = model.get_text_features(text["input_ids"], text["attention_mask"])
    image_features = model.get_image_features(pixel_values)

    large = picture((320, 240), rng)
    large_values = CLIPImageProcessor.from_dict({  # openai/clip-vit-base-patch32's preprocessor_config.json
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "size": 224})(images=Image.fromarray(large), return_tensors="np")["pixel_values"]

    vectors = {
        "input_ids": text["input_ids"].astype(np.int32), "attention_mask": text["attention_mask"].astype(np.int32),
        "pixel_values": np.asarray(pixel_values, np.float32),  # [N, 3, H, W], as the processor gives them
        "text_features": np.asarray(text_features), "image_features": np.asarray(image_features),
        "text_embeds": np.asarray(outputs.text_embeds), "image_embeds": np.asarray(outputs.image_embeds),
        "logits_per_text": np.asarray(outputs.logits_per_text),
        "large_picture": large, "large_pixel_values_every_4th": np.asarray(large_values[0, :, ::4, ::4], np.float32),
    }
    for index, image in enumerate(images):
        vectors[f"picture_{index}"] = image
    np.savez_compressed(OUT / "vectors.npz", **vectors)
    versions = {"transformers": transformers.__version__, "flax": flax.__version__, "jax": jax.__version__,
                "tokenizers": tokenizers.__version__, "pillow": PIL.__version__, "numpy": np.__version__}
    (OUT / "inputs.json").write_text(json.dumps(
        {"prompts": PROMPTS, "pictures": PICTURES, "seed": SEED, "versions": versions}, indent=2) + "\n",
        encoding="utf-8")
    published_trees()
    print("wrote", OUT, versions)


if __name__ == "__main__":
    main()
