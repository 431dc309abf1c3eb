"""Read a generated picture back: its main shape's colour and kind, and scores over prompts.

The background is the median colour of the image border; the main shape is the largest
connected region of pixels far from it, named after the nearest palette colour. Its outline
is where a pixel is nearer that colour than the background (half way, so a soft edge counts
as much as it shows). Its kind comes from how much of its bounding box it fills: a square
about all of it, a circle π/4 ≈ 0.79, an upright triangle one half.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shapes_dataset import COLOURS

_BORDER = 8
_FOREGROUND_DISTANCE = 70  # RGB distance from the background (purple on gray is 94 away)
_MIN_PIXELS = 300  # a smaller region is no shape (the smallest one drawn has about 500 pixels)
_SQUARE_FILL, _CIRCLE_FILL = 0.89, 0.64  # fill ratios above which a region is a square / circle


def classify(image) -> tuple[str | None, str | None]:
    """(colour name, shape name) of the largest shape, or (None, None) when there is none."""
    pixels = np.asarray(image, dtype=np.int32)[..., :3]
    border = np.concatenate([pixels[:_BORDER].reshape(-1, 3), pixels[-_BORDER:].reshape(-1, 3),
                             pixels[:, :_BORDER].reshape(-1, 3), pixels[:, -_BORDER:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    foreground = np.sqrt(((pixels - background) ** 2).sum(-1)) > _FOREGROUND_DISTANCE
    palette = np.array(list(COLOURS.values()))
    nearest = np.argmin(((pixels[..., None, :] - palette) ** 2).sum(-1), axis=-1)
    regions, count = ndimage.label(foreground)
    if not count:
        return None, None
    sizes = ndimage.sum_labels(foreground, regions, index=np.arange(1, count + 1))
    largest = regions == 1 + int(np.argmax(sizes))
    if largest.sum() < _MIN_PIXELS:
        return None, None
    index = int(np.bincount(nearest[largest], minlength=len(palette)).argmax())
    nearer = ((pixels - palette[index]) ** 2).sum(-1) < ((pixels - background) ** 2).sum(-1)
    outlines, _ = ndimage.label(nearer)
    overlap = np.bincount(outlines[largest], minlength=2)
    overlap[0] = 0
    shape = outlines == int(overlap.argmax())
    rows, cols = np.nonzero(shape)
    fill = shape.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    kind = "square" if fill > _SQUARE_FILL else "circle" if fill > _CIRCLE_FILL else "triangle"
    return list(COLOURS)[index], kind


def match_rate(engine, colour: str, shape: str, seeds, batch: int = 8, **sampling) -> dict:
    """Generate "a {colour} {shape}" for every seed (`batch` images a call) and count matches.

    Image i of a call with seed s depends only on (s, i), so a call covers `batch` samples.
    """
    from backend.engine import GenerationRequest

    found = []
    for seed in seeds:
        result = engine.generate(GenerationRequest(f"a {colour} {shape}", batch, seed=seed, **sampling))
        found += [classify(image) for image in result.images]
    return {"colour": np.mean([c == colour for c, _ in found]), "shape": np.mean([s == shape for _, s in found]),
            "both": np.mean([f == (colour, shape) for f in found]), "samples": len(found)}
