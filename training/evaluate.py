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

from .shapes_dataset import BACKGROUNDS, COLOURS, IMAGE_SIZE, PLACES

_BORDER = 8
_FOREGROUND_DISTANCE = 70  # RGB distance from the background (purple on gray is 94 away)
_MIN_PIXELS = 300  # a smaller region is no shape (the smallest one drawn has about 500 pixels)
_SQUARE_FILL, _CIRCLE_FILL = 0.89, 0.64  # fill ratios above which a region is a square / circle


def classify(image) -> tuple[str | None, str | None]:
    """(colour name, shape name) of the largest shape, or (None, None) when there is none."""
    found = describe(image)
    return found["colour"], found["shape"]


def describe(image) -> dict[str, str | None]:
    """The largest shape's colour, shape and place (the nearest of the captions' nine box
    centres to its bounding box's centre) and the background (the nearest background colour
    to the border's median); None for what is not there."""
    return _describe(np.asarray(image, dtype=np.int32)[..., :3])


def _describe(pixels) -> dict[str, str | None]:
    border = np.concatenate([pixels[:_BORDER].reshape(-1, 3), pixels[-_BORDER:].reshape(-1, 3),
                             pixels[:, :_BORDER].reshape(-1, 3), pixels[:, -_BORDER:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    backgrounds = np.array(list(BACKGROUNDS.values()))
    found = {"colour": None, "shape": None, "place": None,
             "background": list(BACKGROUNDS)[int(np.argmin(((backgrounds - background) ** 2).sum(-1)))]}
    kind_and_box = _main_shape(pixels, background)
    if kind_and_box is not None:
        colour, kind, (top, left, bottom, right) = kind_and_box
        scale = pixels.shape[0] / IMAGE_SIZE
        centre = np.array([(left + right + 1) / 2, (top + bottom + 1) / 2]) / scale
        places = np.array(list(PLACES.values()))
        found.update(colour=colour, shape=kind,
                     place=list(PLACES)[int(np.argmin(((places - centre) ** 2).sum(-1)))])
    return found


def _main_shape(pixels, background):
    """(colour, kind, (top, left, bottom, right)) of the largest shape, or None."""
    foreground = np.sqrt(((pixels - background) ** 2).sum(-1)) > _FOREGROUND_DISTANCE
    palette = np.array(list(COLOURS.values()))
    nearest = np.argmin(((pixels[..., None, :] - palette) ** 2).sum(-1), axis=-1)
    regions, count = ndimage.label(foreground)
    if not count:
        return None
    sizes = ndimage.sum_labels(foreground, regions, index=np.arange(1, count + 1))
    largest = regions == 1 + int(np.argmax(sizes))
    if largest.sum() < _MIN_PIXELS:
        return None
    index = int(np.bincount(nearest[largest], minlength=len(palette)).argmax())
    nearer = ((pixels - palette[index]) ** 2).sum(-1) < ((pixels - background) ** 2).sum(-1)
    outlines, _ = ndimage.label(nearer)
    overlap = np.bincount(outlines[largest], minlength=2)
    overlap[0] = 0
    shape = outlines == int(overlap.argmax())
    rows, cols = np.nonzero(shape)
    fill = shape.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    kind = "square" if fill > _SQUARE_FILL else "circle" if fill > _CIRCLE_FILL else "triangle"
    return list(COLOURS)[index], kind, (rows.min(), cols.min(), rows.max(), cols.max())


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
