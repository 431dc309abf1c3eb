"""Enlarge a picture with a Real-ESRGAN network: load a release file, run it tile by tile.

    upscaler = load_upscaler("demo")  # or a release file: "weights/realesr-general-x4v3.pth"
    big = upscaler.upscale(rgb, progress=lambda done, total: ...)  # (H, W, 3) uint8 -> (4H, 4W, 3)

The picture is handled as the official `RealESRGANer` does it, so results match its own:
padded by reflection on the right and bottom (`pre_pad`, which keeps the network's border
effects off the picture), cut into tiles of `tile` input pixels, each run with `tile_pad`
pixels of its neighbours around it and only its own part kept, then the padding cropped off.
A picture no larger than one tile runs whole. Each tile shape compiles once.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import esrgan
from .checkpoint import CheckpointError
from .models import DEMO, DEMO_UPSCALER
from .torch_checkpoint import read_state_dict

Progress = Callable[[int, int], None]  # (tiles done, tiles in all)

TILE = 512  # input pixels; a 256-pixel picture plus its padding is one tile
TILE_PAD = 10
PRE_PAD = 10

# One compiled function for every Upscaler: a config and a tile shape compile once per process.
_forward = jax.jit(esrgan.forward, static_argnums=1)


@dataclass(frozen=True)
class Tile:
    """One tile: the input window it runs on (its own area plus `tile_pad` around it, within
    the picture), and where its own area lies in that window and in the picture."""
    window: tuple[slice, slice]
    own: tuple[slice, slice]  # rows and columns of the input picture
    inner: tuple[slice, slice]  # the same area, relative to the window


def plan_tiles(height: int, width: int, tile: int, tile_pad: int) -> list[Tile]:
    """Tiles row by row, as `RealESRGANer.tile_process` cuts them."""
    tiles = []
    for y in range(math.ceil(height / tile)):
        for x in range(math.ceil(width / tile)):
            top, left = y * tile, x * tile
            bottom, right = min(top + tile, height), min(left + tile, width)
            top_pad, left_pad = max(top - tile_pad, 0), max(left - tile_pad, 0)
            bottom_pad, right_pad = min(bottom + tile_pad, height), min(right + tile_pad, width)
            tiles.append(Tile(
                window=(slice(top_pad, bottom_pad), slice(left_pad, right_pad)),
                own=(slice(top, bottom), slice(left, right)),
                inner=(slice(top - top_pad, bottom - top_pad), slice(left - left_pad, right - left_pad))))
    return tiles


def _reflect_bottom_right(image: np.ndarray, bottom: int, right: int) -> np.ndarray:
    return np.pad(image, ((0, bottom), (0, right), (0, 0)), mode="reflect") if bottom or right else image


def _scaled(area: tuple[slice, slice], scale: int) -> tuple[slice, slice]:
    return tuple(slice(s.start * scale, s.stop * scale) for s in area)


class Upscaler:
    """A loaded network; `upscale` and `upscale_float` are safe to call from one thread at a time."""

    def __init__(self, name: str, config: esrgan.Config, params: esrgan.Params,
                 tile: int = TILE, tile_pad: int = TILE_PAD, pre_pad: int = PRE_PAD):
        self.name, self.config = name, config
        self.scale = config.scale
        self.tile, self.tile_pad, self.pre_pad = tile, tile_pad, pre_pad
        self._params = jax.device_put(params)

    def upscale(self, rgb: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*scale, W*scale, 3) uint8."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 picture, got {rgb.dtype} {rgb.shape}")
        out = self.upscale_float(rgb.astype(np.float32) / 255.0, progress)
        return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)

    def upscale_float(self, image: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> (H*scale, W*scale, 3) float32, not clipped."""
        height, width = image.shape[:2]
        padded = _reflect_bottom_right(image.astype(np.float32), self.pre_pad, self.pre_pad)
        # RRDBNet x2 unshuffles by 2 (x1 by 4): the padded picture must divide by that. A
        # second reflection, as the official code pads, so the border pixels match its own.
        multiple = getattr(self.config, "unshuffle", 1)
        padded = _reflect_bottom_right(padded, -padded.shape[0] % multiple, -padded.shape[1] % multiple)
        out = self._run_tiled(padded, progress)
        return out[:height * self.scale, :width * self.scale]

    def _run_tiled(self, image: np.ndarray, progress: Progress | None) -> np.ndarray:
        height, width = image.shape[:2]
        if self.tile <= 0 or (height <= self.tile and width <= self.tile):
            out = self._forward(image)
            if progress:
                progress(1, 1)
            return out
        tiles = plan_tiles(height, width, self.tile, self.tile_pad)
        out = np.zeros((height * self.scale, width * self.scale, 3), np.float32)
        for done, tile in enumerate(tiles, 1):
            result = self._forward(image[tile.window])
            out[_scaled(tile.own, self.scale)] = result[_scaled(tile.inner, self.scale)]
            if progress:
                progress(done, len(tiles))
        return out

    def _forward(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(_forward(self._params, self.config, jnp.asarray(image)[None]))[0]


def load_upscaler(name_or_path: str | Path, expected: esrgan.Config | None = None, **tiling) -> Upscaler:
    """An Upscaler from `demo` (the shipped demo upscaler) or an official release file (or
    one in its format). `expected` is the config it must have (a published model's, see
    `esrgan.PUBLISHED`); without it, the config is read off the file's shapes. Either way every
    tensor name and shape is checked, and a wrong file raises CheckpointError naming the first
    problem."""
    path = DEMO_UPSCALER if str(name_or_path) == DEMO else Path(name_or_path)
    state = read_state_dict(path)
    try:
        config = expected or esrgan.infer_config(state)
        esrgan.check_shapes(state, config)
    except ValueError as error:
        raise CheckpointError(f"{path.name}: {error}") from None
    name = DEMO if path == DEMO_UPSCALER else path.stem
    return Upscaler(name, config, esrgan.to_params(state, config), **tiling)
