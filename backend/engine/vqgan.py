"""VQGAN (taming-transformers f16 model) as plain JAX functions over the published parameter tree.

The parameter tree is a nested dict whose paths are exactly those of the published
`flax_model.msgpack` (e.g. ``decoder/up_4/attn_0/q/kernel``), so the real checkpoint loads
unchanged. Tensors are NHWC and conv kernels HWIO, as in the Flax original.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from .attention import attention

Params = dict[str, Any]

_GROUPS = 32
_NORM_EPS = 1e-6


@dataclass(frozen=True)
class VQGANConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 16384
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = False

    def __post_init__(self):
        # Tuples keep the config hashable, so it can be a static argument of jax.jit.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if not self.ch_mult:
            raise ValueError("ch_mult must not be empty")
        for mult in self.ch_mult:
            if self.ch * mult % _GROUPS:
                raise ValueError(f"every ch * ch_mult must be a multiple of {_GROUPS} (GroupNorm)")
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ValueError("resolution must be divisible by 2 ** (len(ch_mult) - 1)")

    @classmethod
    def from_dict(cls, data: dict) -> "VQGANConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["ch_mult"] = list(self.ch_mult)
        data["attn_resolutions"] = list(self.attn_resolutions)
        return data

    @property
    def num_resolutions(self) -> int:
        return len(self.ch_mult)

    @property
    def latent_size(self) -> int:
        """Side of the code grid: 16 for a 256-pixel f16 model."""
        return self.resolution // 2 ** (self.num_resolutions - 1)


# ---------------------------------------------------------------------------------------------
# Parameter tree layout. Each leaf is an initialiser tag plus a shape; `init_vqgan_params`
# turns it into arrays, so layout and initialisation cannot drift apart.

def _conv_spec(c_in: int, c_out: int, size: int) -> dict:
    return {"kernel": ("fan_in", (size, size, c_in, c_out)), "bias": ("zeros", (c_out,))}


def _norm_spec(channels: int) -> dict:
    return {"scale": ("ones", (channels,)), "bias": ("zeros", (channels,))}


def _resnet_spec(c_in: int, c_out: int) -> dict:
    spec = {
        "norm1": _norm_spec(c_in),
        "conv1": _conv_spec(c_in, c_out, 3),
        "norm2": _norm_spec(c_out),
        "conv2": _conv_spec(c_out, c_out, 3),
    }
    if c_in != c_out:
        spec["nin_shortcut"] = _conv_spec(c_in, c_out, 1)
    return spec


def _attn_spec(channels: int) -> dict:
    projections = {name: _conv_spec(channels, channels, 1) for name in ("q", "k", "v", "proj_out")}
    return {"norm": _norm_spec(channels), **projections}


def _mid_spec(channels: int) -> dict:
    return {"block_1": _resnet_spec(channels, channels), "attn_1": _attn_spec(channels),
            "block_2": _resnet_spec(channels, channels)}


def _encoder_spec(cfg: VQGANConfig) -> dict:
    spec: dict = {"conv_in": _conv_spec(cfg.in_channels, cfg.ch, 3)}
    in_mult = (1,) + cfg.ch_mult
    resolution = cfg.resolution
    for level in range(cfg.num_resolutions):
        block_in, block_out = cfg.ch * in_mult[level], cfg.ch * cfg.ch_mult[level]
        down: dict = {}
        for i in range(cfg.num_res_blocks):
            down[f"block_{i}"] = _resnet_spec(block_in, block_out)
            block_in = block_out
            if resolution in cfg.attn_resolutions:
                down[f"attn_{i}"] = _attn_spec(block_out)
        if level != cfg.num_resolutions - 1:
            down["downsample"] = {"conv": _conv_spec(block_out, block_out, 3)}
            resolution //= 2
        spec[f"down_{level}"] = down
    top = cfg.ch * cfg.ch_mult[-1]
    spec["mid"] = _mid_spec(top)
    spec["norm_out"] = _norm_spec(top)
    spec["conv_out"] = _conv_spec(top, _encoder_channels(cfg), 3)
    return spec


def _decoder_spec(cfg: VQGANConfig) -> dict:
    top = cfg.ch * cfg.ch_mult[-1]
    spec: dict = {"conv_in": _conv_spec(cfg.z_channels, top, 3), "mid": _mid_spec(top)}
    for level in range(cfg.num_resolutions):
        block_in = cfg.ch * (cfg.ch_mult[level + 1] if level + 1 < cfg.num_resolutions else cfg.ch_mult[-1])
        block_out = cfg.ch * cfg.ch_mult[level]
        up: dict = {}
        for i in range(cfg.num_res_blocks + 1):
            up[f"block_{i}"] = _resnet_spec(block_in, block_out)
            block_in = block_out
            if _up_resolution(cfg, level) in cfg.attn_resolutions:
                up[f"attn_{i}"] = _attn_spec(block_out)
        if level != 0:
            up["upsample"] = {"conv": _conv_spec(block_out, block_out, 3)}
        spec[f"up_{level}"] = up
    spec["norm_out"] = _norm_spec(cfg.ch * cfg.ch_mult[0])
    # A mid-grey output bias: a randomly initialised model then draws textures around 0.5
    # instead of images half clipped to black.
    spec["conv_out"] = {**_conv_spec(cfg.ch * cfg.ch_mult[0], cfg.out_ch, 3), "bias": ("halves", (cfg.out_ch,))}
    return spec


def _encoder_channels(cfg: VQGANConfig) -> int:
    return 2 * cfg.z_channels if cfg.double_z else cfg.z_channels


def _up_resolution(cfg: VQGANConfig, level: int) -> int:
    """Resolution at which decoder level `level` runs its blocks (before its upsample)."""
    return cfg.latent_size * 2 ** (cfg.num_resolutions - 1 - level)


def _vqgan_spec(cfg: VQGANConfig) -> dict:
    return {
        "encoder": _encoder_spec(cfg),
        "quant_conv": _conv_spec(_encoder_channels(cfg), cfg.embed_dim, 1),
        "quantize": {"embedding": {"embedding": ("embedding", (cfg.n_embed, cfg.embed_dim))}},
        "post_quant_conv": _conv_spec(cfg.embed_dim, cfg.z_channels, 1),
        "decoder": _decoder_spec(cfg),
    }


def _is_leaf(node) -> bool:
    return isinstance(node, tuple) and len(node) == 2 and isinstance(node[0], str)


@functools.partial(jax.jit, static_argnums=0)
def init_vqgan_params(config: VQGANConfig, rng: jax.Array) -> Params:
    """Random parameters for the whole model (encoder included), float32, in the published layout."""
    spec = _vqgan_spec(config)
    leaves, treedef = jax.tree_util.tree_flatten(spec, is_leaf=_is_leaf)
    random_sizes = [math.prod(shape) for kind, shape in leaves if kind in ("fan_in", "embedding")]
    # One draw for all random tensors: a random op per tensor makes compilation very slow.
    noise = iter(jnp.split(jax.random.normal(rng, (sum(random_sizes),), jnp.float32),
                           list(itertools.accumulate(random_sizes))[:-1]))

    def make(kind: str, shape: tuple[int, ...]) -> jax.Array:
        if kind == "zeros":
            return jnp.zeros(shape, jnp.float32)
        if kind == "ones":
            return jnp.ones(shape, jnp.float32)
        if kind == "halves":
            return jnp.full(shape, 0.5, jnp.float32)
        # LeCun normal: keeps activations at unit scale through the stack.
        fan_in = shape[-1] if kind == "embedding" else math.prod(shape[:-1])
        return next(noise).reshape(shape) / math.sqrt(fan_in)

    return jax.tree_util.tree_unflatten(treedef, [make(*leaf) for leaf in leaves])


# ---------------------------------------------------------------------------------------------
# Layers (NHWC activations, HWIO kernels).

def _conv(x: jax.Array, p: Params, stride: int = 1, padding="SAME") -> jax.Array:
    kernel = p["kernel"].astype(x.dtype)
    if kernel.shape[:2] == (1, 1) and stride == 1:
        # A 1x1 conv is a matmul over channels; dot is faster than a conv on CPU.
        y = jnp.dot(x, kernel[0, 0])
    else:
        y = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["bias"].astype(x.dtype)


def _group_norm(x: jax.Array, p: Params) -> jax.Array:
    b, h, w, c = x.shape
    grouped = x.reshape(b, h, w, _GROUPS, c // _GROUPS).astype(jnp.float32)
    # Both moments in one pass over x (XLA fuses the two sums), not two as with .var().
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.maximum(jnp.square(grouped).mean(axis=(1, 2, 4), keepdims=True) - jnp.square(mean), 0.0)
    normed = ((grouped - mean) * jax.lax.rsqrt(var + _NORM_EPS)).reshape(b, h, w, c).astype(x.dtype)
    return normed * p["scale"].astype(x.dtype) + p["bias"].astype(x.dtype)


def _resnet(x: jax.Array, p: Params) -> jax.Array:
    h = _conv(jax.nn.swish(_group_norm(x, p["norm1"])), p["conv1"])
    h = _conv(jax.nn.swish(_group_norm(h, p["norm2"])), p["conv2"])
    if "nin_shortcut" in p:
        x = _conv(x, p["nin_shortcut"])
    return x + h


def _attention(x: jax.Array, p: Params) -> jax.Array:
    """Single-head self-attention over all H*W positions."""
    b, height, width, c = x.shape
    h = _group_norm(x, p["norm"])
    q, k, v = (_conv(h, p[name]).reshape(b, height * width, 1, c) for name in ("q", "k", "v"))  # (B, HW, 1 head, C)
    out = attention(q, [(k.swapaxes(1, 2), v.swapaxes(1, 2))], 0.0)  # (B, HW, 1, C)
    out = out.astype(x.dtype).reshape(b, height, width, c)
    return x + _conv(out, p["proj_out"])


def _mid(x: jax.Array, p: Params) -> jax.Array:
    return _resnet(_attention(_resnet(x, p["block_1"]), p["attn_1"]), p["block_2"])


def _upsample(x: jax.Array, p: Params) -> jax.Array:
    """Nearest-neighbour x2 followed by a 3x3 conv, without building the x2 image.

    Along each axis an even output pixel reads input pixels (i-1, i, i) through taps (0, 1, 2)
    and an odd one reads (i, i, i+1), so each of the four output phases is a 2x2 conv of the
    input with summed taps: 16 instead of 36 multiply-adds per input pixel and channel pair.
    """
    b, h, w, _ = x.shape
    kernel = p["conv"]["kernel"].astype(x.dtype)
    row_phases = []
    for row_kernel, row_pad in _phase_kernels(kernel, axis=0):
        col_phases = [
            jax.lax.conv_general_dilated(x, k, (1, 1), (row_pad, col_pad), dimension_numbers=("NHWC", "HWIO", "NHWC"))
            for k, col_pad in _phase_kernels(row_kernel, axis=1)
        ]
        row_phases.append(jnp.stack(col_phases, axis=3))  # [B, H, W, column phase, C]
    y = jnp.stack(row_phases, axis=2)  # [B, H, row phase, W, column phase, C]
    return y.reshape(b, 2 * h, 2 * w, -1) + p["conv"]["bias"].astype(x.dtype)


def _phase_kernels(kernel: jax.Array, axis: int) -> list[tuple[jax.Array, tuple[int, int]]]:
    """The 2-tap kernels (and paddings) of the even and odd output phases along `axis`."""
    k0, k1, k2 = (jnp.take(kernel, i, axis=axis) for i in range(3))
    even = jnp.stack([k0, k1 + k2], axis=axis)  # reads rows i-1, i: pad one before
    odd = jnp.stack([k0 + k1, k2], axis=axis)  # reads rows i, i+1: pad one after
    return [(even, (1, 0)), (odd, (0, 1))]


def _downsample(x: jax.Array, p: Params) -> jax.Array:
    """3x3 conv with stride 2 after padding one row/column at the bottom/right (taming's choice)."""
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(x, p["conv"], stride=2, padding="VALID")


def _stage(x: jax.Array, p: Params, num_blocks: int) -> jax.Array:
    """Resnet blocks, each followed by its attention block where the level has one."""
    for i in range(num_blocks):
        x = _resnet(x, p[f"block_{i}"])
        if f"attn_{i}" in p:
            x = _attention(x, p[f"attn_{i}"])
    return x


def _decoder(z: jax.Array, p: Params, cfg: VQGANConfig) -> jax.Array:
    x = _mid(_conv(z, p["conv_in"]), p["mid"])
    for level in reversed(range(cfg.num_resolutions)):  # coarsest (up_4) first
        up = p[f"up_{level}"]
        x = _stage(x, up, cfg.num_res_blocks + 1)
        if level != 0:
            x = _upsample(x, up["upsample"])
    return _conv(jax.nn.swish(_group_norm(x, p["norm_out"])), p["conv_out"])


def _encoder(images: jax.Array, p: Params, cfg: VQGANConfig) -> jax.Array:
    x = _conv(images, p["conv_in"])
    for level in range(cfg.num_resolutions):
        down = p[f"down_{level}"]
        x = _stage(x, down, cfg.num_res_blocks)
        if level != cfg.num_resolutions - 1:
            x = _downsample(x, down["downsample"])
    x = _mid(x, p["mid"])
    return _conv(jax.nn.swish(_group_norm(x, p["norm_out"])), p["conv_out"])


# ---------------------------------------------------------------------------------------------
# Public entry points.

def decode_codes(params: Params, config: VQGANConfig, codes: jax.Array, side: int | None = None) -> jax.Array:
    """Codebook indices int [B, h*w] -> RGB float32 [B, H, W, 3] in [0, 1].

    `side`: the code grid's side, when not the model's (the decoder takes any grid: the
    previews' colour table decodes each code as a small grid of itself).
    Out-of-range indices are clamped (this runs under jit, where values cannot be checked).
    """
    codes = jnp.asarray(codes)
    side = side or config.latent_size
    if codes.ndim != 2 or codes.shape[1] != side * side:
        raise ValueError(f"codes must have shape [batch, {side * side}], got {tuple(codes.shape)}")
    embedding = params["quantize"]["embedding"]["embedding"]
    z = jnp.take(embedding, codes.astype(jnp.int32), axis=0, mode="clip")
    z = z.reshape(codes.shape[0], side, side, config.embed_dim)
    z = _conv(z, params["post_quant_conv"])
    images = _decoder(z, params["decoder"], config)
    return jnp.clip(images.astype(jnp.float32), 0.0, 1.0)


def encode_images(params: Params, config: VQGANConfig, images: jax.Array) -> jax.Array:
    """RGB images float [B, H, W, 3] in [0, 1] -> nearest codebook indices int32 [B, h*w]."""
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != config.in_channels:
        raise ValueError(f"images must have shape [batch, height, width, {config.in_channels}]")
    z = _conv(_encoder(images.astype(jnp.float32), params["encoder"], config), params["quant_conv"])
    flat = z.reshape(-1, config.embed_dim)
    embedding = params["quantize"]["embedding"]["embedding"].astype(flat.dtype)
    # |z - e|^2 without the |z|^2 term, which is the same for every code.
    distances = jnp.sum(embedding ** 2, axis=1) - 2.0 * flat @ embedding.T
    return jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(images.shape[0], -1)
