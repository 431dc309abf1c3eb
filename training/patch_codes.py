"""The demo VQGAN's codebook: one code for each kind of patch the data set draws.

Shape boxes sit on the grid of the codes (16×16 patches a picture), so every patch of a captioned scene is plain
background, plain shape colour, or an edge: a background, a shape colour and one of a few
dozen masks (which pixels are the shape's). Enumerating these patches gives the codes
outright, so the VQGAN need not discover them by vector quantisation (which, on this CPU,
lost most colours); its decoder learns to draw each code and its encoder to name it.

Each code's vector is the concatenation of three learnt parts (background, colour, mask),
so a colour learnt on circles is the same vector on the triangles it was never seen on.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from . import shapes_dataset

PATCH = shapes_dataset.GRID  # pixels per code side
SIDE = shapes_dataset.IMAGE_SIZE // PATCH  # codes per image side
_EMPTY, _FULL = b"empty", b"full"


def _patches(array: np.ndarray) -> np.ndarray:
    """[size, size, ...] → [256 patches, PATCH * PATCH, ...] in row-major patch order."""
    rest = array.shape[2:]
    return (array.reshape(SIDE, PATCH, SIDE, PATCH, *rest).swapaxes(1, 2)
            .reshape(SIDE * SIDE, PATCH * PATCH, *rest))


@dataclasses.dataclass(frozen=True)
class PatchCodebook:
    """Codes for (background, colour, mask) triples; `None` marks a part a patch lacks."""

    masks: tuple[bytes, ...]  # edge masks (packed booleans), then the full and empty marks
    codes: tuple[tuple[str | None, str | None, int], ...]  # (background, colour, mask index)

    @classmethod
    def enumerate(cls) -> "PatchCodebook":
        """Every edge mask of every shape, size and place (drawn in one colour on white)."""
        masks = {}
        for scene in shapes_dataset.single_shape_scenes([("red", s) for s in shapes_dataset.SHAPES]):
            if scene.background != "white":
                continue
            image = np.asarray(shapes_dataset.render(scene))
            for mask in _patches(np.all(image == shapes_dataset.COLOURS["red"], axis=-1)):
                if mask.any() and not mask.all():
                    masks.setdefault(np.packbits(mask).tobytes(), None)
        masks = (*masks, _FULL, _EMPTY)
        full, empty = len(masks) - 2, len(masks) - 1
        codes = [(b, None, empty) for b in shapes_dataset.BACKGROUNDS]
        codes += [(None, c, full) for c in shapes_dataset.COLOURS]
        codes += [(b, c, m) for b in shapes_dataset.BACKGROUNDS for c in shapes_dataset.COLOURS
                  for m in range(full)]
        return cls(masks, tuple(codes))

    @property
    def size(self) -> int:
        return len(self.codes)

    def factor_rows(self) -> dict[str, int]:
        """Rows of each factor's table: every value, plus "none" for background and colour."""
        return {"background": len(shapes_dataset.BACKGROUNDS) + 1, "colour": len(shapes_dataset.COLOURS) + 1,
                "mask": len(self.masks)}

    def edges(self) -> np.ndarray:
        """bool [size]: which codes are edge patches (neither plain background nor plain colour)."""
        return np.array([self.masks[mask] not in (_EMPTY, _FULL) for _, _, mask in self.codes])

    @functools.cached_property
    def _code_index(self) -> dict:
        return {code: i for i, code in enumerate(self.codes)}

    @functools.cached_property
    def _mask_index(self) -> dict:
        return {mask: i for i, mask in enumerate(self.masks)}

    def factors(self) -> np.ndarray:
        """int32 [size, 3]: each code's background, colour and mask index (the last row of a
        factor's table stands for "none")."""
        backgrounds, colours = list(shapes_dataset.BACKGROUNDS), list(shapes_dataset.COLOURS)
        return np.array([(len(backgrounds) if b is None else backgrounds.index(b),
                          len(colours) if c is None else colours.index(c), m)
                         for b, c, m in self.codes], np.int32)

    def encode(self, scene: shapes_dataset.Scene, image: np.ndarray | None = None) -> np.ndarray:
        """int32 [256]: the code of each patch of the rendered scene, row by row (`image`: the
        scene already rendered, when the caller has it)."""
        lookup, mask_index = self._code_index, self._mask_index
        background = shapes_dataset.BACKGROUNDS[scene.background]
        patches = _patches(np.asarray(shapes_dataset.render(scene)) if image is None else image)
        out = np.empty(len(patches), np.int32)
        for i, patch in enumerate(patches):
            shape_pixels = np.any(patch != background, axis=-1)
            if not shape_pixels.any():
                out[i] = lookup[(scene.background, None, mask_index[_EMPTY])]
                continue
            colour = _colour_name(patch[shape_pixels][0])
            if shape_pixels.all():
                out[i] = lookup[(None, colour, mask_index[_FULL])]
            else:
                out[i] = lookup[(scene.background, colour, mask_index[np.packbits(shape_pixels).tobytes()])]
        return out

    def draw(self, codes) -> np.ndarray:
        """uint8 [IMAGE_SIZE, IMAGE_SIZE, 3]: the picture `codes` ([256]) stand for, patch by patch."""
        patches = np.empty((SIDE * SIDE, PATCH * PATCH, 3), np.uint8)
        for i, code in enumerate(codes):
            background, colour, mask = self.codes[code]
            if self.masks[mask] == _EMPTY:
                patches[i] = shapes_dataset.BACKGROUNDS[background]
            elif self.masks[mask] == _FULL:
                patches[i] = shapes_dataset.COLOURS[colour]
            else:
                on_shape = np.unpackbits(np.frombuffer(self.masks[mask], np.uint8)).astype(bool)[:, None]
                patches[i] = np.where(on_shape, shapes_dataset.COLOURS[colour], shapes_dataset.BACKGROUNDS[background])
        return (patches.reshape(SIDE, SIDE, PATCH, PATCH, 3).swapaxes(1, 2)
                .reshape(shapes_dataset.IMAGE_SIZE, shapes_dataset.IMAGE_SIZE, 3))


def _colour_name(rgb) -> str:
    return next(name for name, value in shapes_dataset.COLOURS.items() if tuple(rgb) == value)
