"""Real-ESRGAN's two generator networks as plain JAX functions: SRVGGNetCompact and RRDBNet.

The published `.pth` files name their tensors the way the official PyTorch modules do
(``body.3.weight``, ``body.0.rdb2.conv4.bias``); `expected_shapes` lists those names and
shapes for a config, so a file is checked name by name before `to_params` turns it into our
tree: conv kernels from PyTorch's OIHW to HWIO, and the repeated layers stacked so that one
`lax.scan` runs them (RRDBNet's 23 blocks compile once, not 23 times). Activations are NHWC, float,
with pixel values in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]
_LEAKY_SLOPE = 0.2  # RRDBNet's LeakyReLU
_RESIDUAL_SCALE = 0.2  # RRDBNet scales each dense block's output before adding it back


@dataclass(frozen=True)
class SRVGGConfig:
    """SRVGGNetCompact: a straight stack of 3x3 convs with PReLU at the input's size, then
    one conv to 3 * upscale**2 channels, a pixel shuffle, plus the input upsampled nearest."""
    num_feat: int = 64
    num_conv: int = 32
    upscale: int = 4

    @property
    def scale(self) -> int:
        return self.upscale


@dataclass(frozen=True)
class RRDBConfig:
    """RRDBNet (ESRGAN): residual-in-residual dense blocks, then two nearest x2 upsamplings.
    For scale 2 (or 1) the input is first pixel-unshuffled by 2 (or 4), so the body always
    upsamples by 4."""
    num_block: int = 23
    num_feat: int = 64
    num_grow_ch: int = 32
    scale: int = 4

    @property
    def unshuffle(self) -> int:
        return {4: 1, 2: 2, 1: 4}[self.scale]


Config = SRVGGConfig | RRDBConfig

# The published models (https://github.com/xinntao/Real-ESRGAN/releases).
PUBLISHED: dict[str, Config] = {
    "realesr-general-x4v3": SRVGGConfig(num_feat=64, num_conv=32, upscale=4),
    "RealESRGAN_x4plus": RRDBConfig(num_block=23, scale=4),
    "RealESRGAN_x2plus": RRDBConfig(num_block=23, scale=2),
}


# ---------------------------------------------------------------------------------------------
# The official tensor names and shapes, and the file -> parameter tree conversion.

def _conv_shapes(name: str, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (c_out, c_in, 3, 3), f"{name}.bias": (c_out,)}


def _srvgg_last(cfg: SRVGGConfig) -> int:
    """Index in `body` of the last conv: first conv and PReLU, then num_conv of each."""
    return 2 * cfg.num_conv + 2


def _rdb_convs(cfg: RRDBConfig) -> list[tuple[str, int, int]]:
    """(name, in, out) of one dense block's five convs; each sees all earlier outputs."""
    f, g = cfg.num_feat, cfg.num_grow_ch
    return [(f"conv{i}", f + (i - 1) * g, g if i < 5 else f) for i in range(1, 6)]


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the official module's state dict, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    if isinstance(cfg, SRVGGConfig):
        f = cfg.num_feat
        for i in range(cfg.num_conv + 1):
            shapes |= _conv_shapes(f"body.{2 * i}", 3 if i == 0 else f, f)
            shapes[f"body.{2 * i + 1}.weight"] = (f,)  # PReLU, one slope per channel
        shapes |= _conv_shapes(f"body.{_srvgg_last(cfg)}", f, 3 * cfg.upscale ** 2)
        return shapes
    f = cfg.num_feat
    shapes |= _conv_shapes("conv_first", 3 * cfg.unshuffle ** 2, f)
    for b in range(cfg.num_block):
        for r in range(1, 4):
            for name, c_in, c_out in _rdb_convs(cfg):
                shapes |= _conv_shapes(f"body.{b}.rdb{r}.{name}", c_in, c_out)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes |= _conv_shapes(name, f, f)
    shapes |= _conv_shapes("conv_last", f, 3)
    return shapes


def infer_config(state: dict[str, np.ndarray]) -> Config:
    """The config a state dict was saved from, read off a few of its shapes; `expected_shapes`
    then checks all of it."""
    if "conv_first.weight" in state:
        num_block = len({k.split(".")[1] for k in state if k.startswith("body.")})
        scales = {3: 4, 12: 2, 48: 1}
        c_in = state["conv_first.weight"].shape[1]
        if c_in not in scales:
            raise ValueError(f"conv_first.weight: {c_in} input channels fit no RRDBNet scale (3, 12 or 48)")
        return RRDBConfig(num_block=num_block, num_feat=state["conv_first.weight"].shape[0],
                          num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0] if num_block else 32,
                          scale=scales[c_in])
    if "body.0.weight" in state:
        num_layers = len({k.split(".")[1] for k in state if k.startswith("body.")})  # 2 * num_conv + 3
        last = state.get(f"body.{num_layers - 1}.weight")
        upscale = round(((last.shape[0] if last is not None else 3) / 3) ** 0.5)
        return SRVGGConfig(num_feat=state["body.0.weight"].shape[0], num_conv=(num_layers - 3) // 2,
                           upscale=max(upscale, 1))
    raise ValueError("neither an SRVGGNetCompact (body.0.weight) nor an RRDBNet (conv_first.weight)")


def check_shapes(state: dict[str, np.ndarray], cfg: Config) -> None:
    """Raise ValueError naming the first missing, unexpected or wrongly shaped tensor."""
    expected = expected_shapes(cfg)
    for name, shape in expected.items():
        if name not in state:
            raise ValueError(f"{name}: missing")
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{name}: shape {tuple(state[name].shape)}, expected {shape}")
    for name in state:
        if name not in expected:
            raise ValueError(f"{name}: not a tensor of {type(cfg).__name__} {cfg}")


def _conv_params(state: dict[str, np.ndarray], name: str) -> Params:
    return {"kernel": np.transpose(state[f"{name}.weight"], (2, 3, 1, 0)).astype(np.float32),
            "bias": state[f"{name}.bias"].astype(np.float32)}


def _stack(trees: list[Params]) -> Params:
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def to_params(state: dict[str, np.ndarray], cfg: Config) -> Params:
    """Our parameter tree from a checked state dict (numpy, float32)."""
    if isinstance(cfg, SRVGGConfig):
        layers = [{"conv": _conv_params(state, f"body.{2 * i}"),
                   "slope": state[f"body.{2 * i + 1}.weight"].astype(np.float32)} for i in range(cfg.num_conv + 1)]
        return {"first": layers[0], "body": _stack(layers[1:]),
                "last": _conv_params(state, f"body.{_srvgg_last(cfg)}")}
    blocks = [{f"rdb{r}": {name: _conv_params(state, f"body.{b}.rdb{r}.{name}") for name, _, _ in _rdb_convs(cfg)}
               for r in range(1, 4)} for b in range(cfg.num_block)]
    params = {name: _conv_params(state, name)
              for name in ("conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last")}
    params["body"] = _stack(blocks)
    return params


def to_state_dict(params: Params, cfg: SRVGGConfig) -> dict[str, np.ndarray]:
    """The official names and layouts of an SRVGGNetCompact tree: the inverse of `to_params`,
    for the networks we train ourselves."""
    def conv(name: str, p: Params) -> dict[str, np.ndarray]:
        return {f"{name}.weight": np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)), f"{name}.bias": np.asarray(p["bias"])}

    layers = [params["first"]] + [jax.tree_util.tree_map(lambda leaf: leaf[i], params["body"]) for i in range(cfg.num_conv)]
    state: dict[str, np.ndarray] = {}
    for i, layer in enumerate(layers):
        state |= conv(f"body.{2 * i}", layer["conv"])
        state[f"body.{2 * i + 1}.weight"] = np.asarray(layer["slope"])
    return state | conv(f"body.{_srvgg_last(cfg)}", params["last"])


# ---------------------------------------------------------------------------------------------
# The networks (NHWC activations, HWIO kernels).

def _conv(x: jax.Array, p: Params) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["bias"]


def _prelu(x: jax.Array, slope: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, x * slope)


def _leaky_relu(x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, x * _LEAKY_SLOPE)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """(B, H, W, C*r*r) -> (B, H*r, W*r, C); PyTorch's channel order (c, row offset, column offset)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
    """The inverse of `pixel_shuffle`: (B, H*r, W*r, C) -> (B, H, W, C*r*r)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def _upsample_nearest(x: jax.Array, r: int) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, r, axis=1), r, axis=2)


def srvgg(params: Params, cfg: SRVGGConfig, x: jax.Array) -> jax.Array:
    """(B, H, W, 3) -> (B, H*upscale, W*upscale, 3)."""
    out = _prelu(_conv(x, params["first"]["conv"]), params["first"]["slope"])

    def layer(h, p):
        return _prelu(_conv(h, p["conv"]), p["slope"]), None

    # Unrolled: as fast to run as a loop, and its gradient (training the demo upscaler) is 25x
    # faster on XLA:CPU than a loop's.
    out, _ = jax.lax.scan(layer, out, params["body"], unroll=True)
    out = pixel_shuffle(_conv(out, params["last"]), cfg.upscale)
    return out + _upsample_nearest(x, cfg.upscale)  # the network learns the residual


def _dense_block(x: jax.Array, p: Params) -> jax.Array:
    features = [x]
    for i in range(1, 5):
        features.append(_leaky_relu(_conv(jnp.concatenate(features, axis=-1), p[f"conv{i}"])))
    return x + _RESIDUAL_SCALE * _conv(jnp.concatenate(features, axis=-1), p["conv5"])


def _rrdb(x: jax.Array, p: Params) -> jax.Array:
    out = _dense_block(_dense_block(_dense_block(x, p["rdb1"]), p["rdb2"]), p["rdb3"])
    return x + _RESIDUAL_SCALE * out


def rrdbnet(params: Params, cfg: RRDBConfig, x: jax.Array) -> jax.Array:
    """(B, H, W, 3) -> (B, H*scale, W*scale, 3); for scale 2 (1), H and W must be even
    (divisible by 4), for the pixel unshuffle."""
    if cfg.unshuffle > 1:
        x = pixel_unshuffle(x, cfg.unshuffle)
    feat = _conv(x, params["conv_first"])
    body, _ = jax.lax.scan(lambda h, p: (_rrdb(h, p), None), feat, params["body"])
    feat = feat + _conv(body, params["conv_body"])
    feat = _leaky_relu(_conv(_upsample_nearest(feat, 2), params["conv_up1"]))
    feat = _leaky_relu(_conv(_upsample_nearest(feat, 2), params["conv_up2"]))
    return _conv(_leaky_relu(_conv(feat, params["conv_hr"])), params["conv_last"])


def forward(params: Params, cfg: Config, x: jax.Array) -> jax.Array:
    return srvgg(params, cfg, x) if isinstance(cfg, SRVGGConfig) else rrdbnet(params, cfg, x)
