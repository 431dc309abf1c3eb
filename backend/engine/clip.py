"""CLIP (a ViT image tower and a text tower with their projections) as plain JAX functions,
used to rank a job's candidate pictures against its prompt.

Parameters are the nested dict of the official `flax_model.msgpack` as transformers writes
it for `FlaxCLIPModel` (openai/clip-vit-base-patch32, clip-vit-large-patch14, or the demo's
small one); `expected_param_shapes` names every leaf, so the streaming reader checks a file
against the config and names the first bad parameter. Nothing is renamed: the functions
below read the checkpoint's own names (including its `pre_layrnorm`).

Activations, layer norms and softmaxes are float32; matrix products take the weights in
their stored dtype (float16 on a GPU) and accumulate in float32, as in dallebart.py.

    model = load_clip(folder, dtype="float32")
    scores = model.score("a red circle", [picture, ...])   # CLIP's logits, one per picture
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint
from .attention import attention

# CLIP's image statistics (transformers' OPENAI_CLIP_MEAN / STD, CLIPImageProcessor's default).
IMAGE_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
IMAGE_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
CLIP_FILES = ("config.json", "flax_model.msgpack", "tokenizer.json")
_ACTIVATIONS = ("quick_gelu", "gelu")
_MASKED = -1e30  # an attention score never chosen (finite: a row with every key masked stays finite)


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One transformer tower; the defaults are those of openai/clip-vit-base-patch32 (as
    transformers' CLIPTextConfig / CLIPVisionConfig fill in keys a config.json leaves out)."""
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # text only
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    # vision only
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


_TEXT_DEFAULTS = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12}
_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12}


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    text: TowerConfig
    vision: TowerConfig
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipConfig:
        """Read an official CLIP `config.json` (model_type "clip"); refuse what this code lacks."""
        if data.get("model_type", "clip") != "clip":
            raise ValueError(f"config.json: model_type {data.get('model_type')!r} is not a CLIP model")
        towers = []
        for side, defaults in (("text", _TEXT_DEFAULTS), ("vision", _VISION_DEFAULTS)):
            given = data.get(f"{side}_config") or data.get(f"{side}_config_dict") or {}
            names = {f.name for f in dataclasses.fields(TowerConfig)}
            tower = TowerConfig(**{**defaults, **{k: v for k, v in given.items() if k in names}})
            if tower.hidden_act not in _ACTIVATIONS:
                raise ValueError(f"config.json: {side}_config.hidden_act={tower.hidden_act!r} is not supported "
                                 f"(need one of {', '.join(_ACTIVATIONS)})")
            if tower.hidden_size % tower.num_attention_heads:
                raise ValueError(f"config.json: {side}_config.hidden_size must be a multiple of the attention heads")
            towers.append(tower)
        return cls(towers[0], towers[1], int(data.get("projection_dim", 512)),
                   float(data.get("logit_scale_init_value", 2.6592)))

    def to_dict(self) -> dict[str, Any]:
        """An official `config.json` for this configuration (what transformers reads)."""
        text = {k: v for k, v in dataclasses.asdict(self.text).items()
                if k not in ("image_size", "patch_size", "num_channels")}
        vision = {k: v for k, v in dataclasses.asdict(self.vision).items()
                  if k not in ("vocab_size", "max_position_embeddings")}
        text.update(model_type="clip_text_model", projection_dim=self.projection_dim)
        vision.update(model_type="clip_vision_model", projection_dim=self.projection_dim)
        return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value, "initializer_factor": 1.0,
                "text_config": text, "vision_config": vision}


def _tower_shapes(prefix: str, tower: TowerConfig) -> dict[str, tuple[int, ...]]:
    d, inner = tower.hidden_size, tower.intermediate_size
    shapes = {}
    for i in range(tower.num_hidden_layers):
        layer = f"{prefix}/encoder/layers/{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{layer}/self_attn/{proj}/kernel"] = (d, d)
            shapes[f"{layer}/self_attn/{proj}/bias"] = (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}/{norm}/scale"] = (d,)
            shapes[f"{layer}/{norm}/bias"] = (d,)
        shapes[f"{layer}/mlp/fc1/kernel"] = (d, inner)
        shapes[f"{layer}/mlp/fc1/bias"] = (inner,)
        shapes[f"{layer}/mlp/fc2/kernel"] = (inner, d)
        shapes[f"{layer}/mlp/fc2/bias"] = (d,)
    return shapes


def expected_param_shapes(config: ClipConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter path of a FlaxCLIPModel checkpoint for `config`, with its shape."""
    text, vision = config.text, config.vision
    shapes: dict[str, tuple[int, ...]] = {
        "logit_scale": (),
        "text_projection/kernel": (text.hidden_size, config.projection_dim),
        "visual_projection/kernel": (vision.hidden_size, config.projection_dim),
        "text_model/embeddings/token_embedding/embedding": (text.vocab_size, text.hidden_size),
        "text_model/embeddings/position_embedding/embedding": (text.max_position_embeddings, text.hidden_size),
        "text_model/final_layer_norm/scale": (text.hidden_size,),
        "text_model/final_layer_norm/bias": (text.hidden_size,),
        "vision_model/embeddings/class_embedding": (vision.hidden_size,),
        "vision_model/embeddings/patch_embedding/kernel": (vision.patch_size, vision.patch_size,
                                                           vision.num_channels, vision.hidden_size),
        "vision_model/embeddings/position_embedding/embedding": (vision.num_patches + 1, vision.hidden_size),
    }
    for norm in ("pre_layrnorm", "post_layernorm"):  # sic: the checkpoint's name
        shapes[f"vision_model/{norm}/scale"] = (vision.hidden_size,)
        shapes[f"vision_model/{norm}/bias"] = (vision.hidden_size,)
    shapes.update(_tower_shapes("text_model", text))
    shapes.update(_tower_shapes("vision_model", vision))
    return shapes


def random_params(config: ClipConfig, seed: int, dtype=np.float32, std: float = 0.02) -> dict:
    """Deterministic random weights in the checkpoint layout (tests, benchmarks, training's start)."""
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for path, shape in sorted(expected_param_shapes(config).items()):
        if path == "logit_scale":
            leaf = np.float32(config.logit_scale_init_value) * np.ones(shape, np.float32)
        elif path.endswith("/scale"):
            leaf = np.ones(shape, np.float32)
        elif path.endswith("/bias"):
            leaf = np.zeros(shape, np.float32)
        else:
            leaf = std * rng.standard_normal(shape, dtype=np.float32)
        node = tree
        *parents, name = path.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = leaf.astype(dtype)
    return tree


# ---------------------------------------------------------------- building blocks


def _layer_norm(x, norm, eps: float):
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * norm["scale"].astype(jnp.float32) + norm["bias"].astype(jnp.float32)


def _dense(x, layer):
    """x @ kernel (+ bias) with the weight's dtype as input and a float32 result."""
    kernel = layer["kernel"]
    y = jnp.einsum("...i,io->...o", x.astype(kernel.dtype), kernel, preferred_element_type=jnp.float32)
    return y + layer["bias"].astype(jnp.float32) if "bias" in layer else y


def _activation(x, name: str):
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    return jax.nn.gelu(x, approximate=False)


def _encoder(tower_params, tower: TowerConfig, x, bias):
    """The pre-norm transformer layers: x [N, S, D] float32, bias [N or 1, 1, S, S] added to scores."""
    heads = tower.num_attention_heads
    eps = tower.layer_norm_eps
    for i in range(tower.num_hidden_layers):
        layer = tower_params["encoder"]["layers"][str(i)]
        attn = layer["self_attn"]
        hidden = _layer_norm(x, layer["layer_norm1"], eps)
        split = lambda y: y.reshape(y.shape[:-1] + (heads, -1))  # noqa: E731  (N, S, H, hd)
        queries = split(_dense(hidden, attn["q_proj"]))
        keys, values = (split(_dense(hidden, attn[name])).swapaxes(1, 2)  # (N, H, S, hd)
                        for name in ("k_proj", "v_proj"))
        attended = attention(queries, [(keys, values)], bias)  # (N, S, H, hd)
        x = x + _dense(attended.reshape(attended.shape[:-2] + (-1,)), attn["out_proj"])  # (N, S, D)
        hidden = _layer_norm(x, layer["layer_norm2"], eps)
        x = x + _dense(_activation(_dense(hidden, layer["mlp"]["fc1"]), tower.hidden_act), layer["mlp"]["fc2"])
    return x


# ---------------------------------------------------------------- the two towers


def text_features(params, config: ClipConfig, input_ids, attention_mask, end_id: int):
    """Token ids [N, S] → projected text features [N, P] (float32, not normalised), pooled at
    each row's first end token (the highest id of openai's vocabulary, where transformers
    takes the argmax)."""
    text = params["text_model"]
    tower = config.text
    length = input_ids.shape[1]
    embeddings = text["embeddings"]
    x = jnp.take(embeddings["token_embedding"]["embedding"], input_ids, axis=0).astype(jnp.float32)
    x = x + embeddings["position_embedding"]["embedding"][:length].astype(jnp.float32)
    allowed = jnp.tril(jnp.ones((length, length), bool))[None] & (attention_mask[:, None, :] > 0)  # [N, Q, K]
    x = _encoder(text, tower, x, jnp.where(allowed, 0.0, _MASKED)[:, None])
    x = _layer_norm(x, text["final_layer_norm"], tower.layer_norm_eps)
    is_end = input_ids == end_id
    position = jnp.where(is_end.any(-1), jnp.argmax(is_end, axis=-1), jnp.argmax(input_ids, axis=-1))
    pooled = jnp.take_along_axis(x, position[:, None, None], axis=1)[:, 0]
    return _dense(pooled, params["text_projection"])


def image_features(params, config: ClipConfig, pixels):
    """Preprocessed pixels [N, H, W, C] (`preprocess`) → projected image features [N, P]."""
    vision = params["vision_model"]
    tower = config.vision
    p = tower.patch_size
    n, height, width, channels = pixels.shape
    rows, cols = height // p, width // p  # the convolution's VALID padding: partial patches dropped
    patches = pixels[:, :rows * p, :cols * p].reshape(n, rows, p, cols, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows * cols, p * p * channels)
    kernel = vision["embeddings"]["patch_embedding"]["kernel"]  # [p, p, C, D]: the same order
    x = _dense(patches, {"kernel": kernel.reshape(p * p * channels, -1)})
    cls = jnp.broadcast_to(vision["embeddings"]["class_embedding"].astype(jnp.float32), (n, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + vision["embeddings"]["position_embedding"]["embedding"].astype(jnp.float32)
    x = _layer_norm(x, vision["pre_layrnorm"], tower.layer_norm_eps)
    x = _encoder(vision, tower, x, jnp.zeros((1, 1, 1, 1), jnp.float32))
    pooled = _layer_norm(x[:, 0], vision["post_layernorm"], tower.layer_norm_eps)
    return _dense(pooled, params["visual_projection"])


def normalise(features):
    return features / jnp.linalg.norm(features, axis=-1, keepdims=True)


def logits(params, text_feats, image_feats):
    """CLIP's logits [T, I]: the cosine of the normalised features times exp(logit_scale)."""
    scale = jnp.exp(params["logit_scale"].astype(jnp.float32))
    return jnp.einsum("td,id->ti", normalise(text_feats), normalise(image_feats)) * scale


# ---------------------------------------------------------------- inputs


def preprocess(picture, size: int) -> np.ndarray:
    """A PIL picture → float32 [size, size, 3] as transformers' CLIPImageProcessor makes it for
    openai's models: the shortest side resized to `size` (bicubic, PIL's), the centre cropped
    to a square, scaled to [0, 1], CLIP's mean subtracted and divided by its std."""
    from PIL import Image

    picture = picture.convert("RGB")
    width, height = picture.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) != (width, height):
        picture = picture.resize((new_width, new_height), Image.BICUBIC)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    pixels = np.asarray(picture, np.float32)[top:top + size, left:left + size] * np.float32(1 / 255)
    return (pixels - IMAGE_MEAN) / IMAGE_STD


class ClipTokenizer:
    """CLIP's tokenizer from its `tokenizer.json` (the `tokenizers` library): the start token,
    the prompt's tokens, the end token, padded with the end token to `length` (77)."""

    def __init__(self, path: Path, length: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self.end_id = self._tokenizer.token_to_id(END_TOKEN)
        if self.end_id is None or self._tokenizer.token_to_id(START_TOKEN) is None:
            raise ValueError(f"{path} is not a CLIP tokenizer: it lacks {START_TOKEN} or {END_TOKEN}")
        self.length = length
        self._tokenizer.enable_truncation(max_length=length)  # keeps room for the start and end tokens
        self._tokenizer.enable_padding(length=length, pad_id=self.end_id, pad_token=END_TOKEN)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], np.int32)
        mask = np.array([e.attention_mask for e in encodings], np.int32)
        return ids, mask


# ---------------------------------------------------------------- a loaded model


def read_config(folder: Path) -> ClipConfig:
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise checkpoint.CheckpointError(f"cannot read {Path(folder) / 'config.json'}: {error}") from error
    return ClipConfig.from_dict(data)


def read_params(folder: Path, config: ClipConfig, dtype: str | None = None) -> dict:
    """The checkpoint, checked against `config` leaf by leaf, each float leaf cast to `dtype`
    (None: as stored) as it is read."""
    dtype_for = checkpoint.cast_floats_to(dtype) if dtype else checkpoint.keep_dtype
    return checkpoint.read_checkpoint(Path(folder) / "flax_model.msgpack", expected_param_shapes(config), dtype_for)


class ClipModel:
    """CLIP placed on one device, with its tokenizer; `score` is what the backend calls."""

    def __init__(self, name: str, config: ClipConfig, params: dict, tokenizer: ClipTokenizer, device=None):
        self.name = name
        self.config = config
        self.tokenizer = tokenizer
        self.device = device or jax.local_devices()[0]
        self.params = jax.device_put(params, self.device)
        self.dtype = str(jax.tree_util.tree_leaves(params)[0].dtype)
        end_id = tokenizer.end_id
        self._text = jax.jit(lambda p, ids, mask: text_features(p, config, ids, mask, end_id))
        self._images = jax.jit(lambda p, pixels: image_features(p, config, pixels))
        self._logits = jax.jit(logits)

    def preprocess(self, pictures) -> np.ndarray:
        return np.stack([preprocess(picture, self.config.vision.image_size) for picture in pictures])

    def embed_text(self, texts: list[str]):
        ids, mask = self.tokenizer.encode(texts)
        return self._text(self.params, jax.device_put(ids, self.device), jax.device_put(mask, self.device))

    def embed_images(self, pictures):
        return self._images(self.params, jax.device_put(self.preprocess(pictures), self.device))

    def score(self, text: str, pictures) -> np.ndarray:
        """CLIP's logit of each picture against `text`: float32 [len(pictures)]."""
        return np.asarray(self._logits(self.params, self.embed_text([text]), self.embed_images(pictures)))[0]

    def warm_up(self, counts=(1,)) -> None:
        from PIL import Image

        blank = Image.new("RGB", (self.config.vision.image_size,) * 2)
        for count in counts:
            self.score("", [blank] * count)


def load_clip(folder: Path, name: str | None = None, dtype: str | None = None, device=None) -> ClipModel:
    """A CLIP model folder (config.json, flax_model.msgpack, tokenizer.json) → a ClipModel."""
    folder = Path(folder)
    config = read_config(folder)
    params = read_params(folder, config, dtype)
    tokenizer = ClipTokenizer(folder / "tokenizer.json", config.text.max_position_embeddings)
    if tokenizer.vocab_size > config.text.vocab_size:
        raise checkpoint.CheckpointError(
            f"{folder / 'tokenizer.json'} has {tokenizer.vocab_size} tokens, the model only {config.text.vocab_size}")
    return ClipModel(name or folder.name, config, params, tokenizer, device)
