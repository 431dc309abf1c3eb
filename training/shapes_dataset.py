"""A procedural text-to-image data set: flat shapes on plain backgrounds, drawn with Pillow.

Every scene is one or two shapes (circle, square, triangle) in six colours on a white,
black or gray background, with a caption saying what is where. Shape boxes sit on the
grid of the VQGAN's codes (16×16 of them), so a small codebook can hold their edges.

A few (colour, shape) pairs are held out: no training scene contains them, so a model
that draws them has combined words it only saw apart.
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128
GRID = IMAGE_SIZE // 16  # pixels per VQGAN code: 16×16 codes a picture

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "orange": (245, 130, 20),
    "purple": (140, 50, 180),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 4 * GRID, "medium": 6 * GRID, "large": 8 * GRID}  # side of the shape's box

# Box centres a quarter, half and three quarters across: every box edge lies on the grid.
_LINES = (IMAGE_SIZE // 4, IMAGE_SIZE // 2, 3 * IMAGE_SIZE // 4)
PLACES = {
    "in the top left": (_LINES[0], _LINES[0]), "at the top": (_LINES[1], _LINES[0]),
    "in the top right": (_LINES[2], _LINES[0]), "on the left": (_LINES[0], _LINES[1]),
    "in the center": (_LINES[1], _LINES[1]), "on the right": (_LINES[2], _LINES[1]),
    "in the bottom left": (_LINES[0], _LINES[2]), "at the bottom": (_LINES[1], _LINES[2]),
    "in the bottom right": (_LINES[2], _LINES[2]),
}

HELD_OUT = frozenset({("purple", "triangle"), ("orange", "square"), ("green", "circle")})
TRAIN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT)

# How often a caption leaves out each optional part, so that short prompts such as
# "a red circle" are in the training distribution.
_DROP = {"size": 0.5, "place": 0.5, "background": 0.4}
_TWO_SHAPES = 0.3  # share of scenes with two shapes


@dataclasses.dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    size: str
    centre: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Scene:
    background: str
    items: tuple[Item, ...]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(item: Item, with_size: bool) -> str:
    words = ([item.size] if with_size else []) + [item.colour, item.shape]
    return f"{_article(words[0])} {' '.join(words)}"


def random_scene(rng: random.Random, pairs=TRAIN_PAIRS) -> Scene:
    """A scene whose (colour, shape) pairs all come from `pairs`."""
    background = rng.choice(list(BACKGROUNDS))
    if rng.random() < _TWO_SHAPES:
        return _two_shapes(rng, pairs, background)
    colour, shape = rng.choice(pairs)
    return Scene(background, (Item(colour, shape, rng.choice(list(SIZES)), rng.choice(list(PLACES.values()))),))


def busy_scene(rng: random.Random, pairs=TRAIN_PAIRS, tries: int = 12) -> Scene:
    """Up to six shapes of any size anywhere on the grid, their boxes apart.

    Not a captioned scene: the VQGAN also trains on these, as a picture full of edges and
    colours teaches it more a step than the one or two shapes of a captioned scene.
    """
    boxes, items = [], []
    for _ in range(tries):
        size = rng.choice(list(SIZES))
        side = SIZES[size]
        left, top = (GRID * rng.randint(0, (IMAGE_SIZE - side) // GRID) for _ in range(2))
        box = (left, top, left + side, top + side)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        boxes.append(box)
        items.append(Item(*rng.choice(pairs), size, (left + side // 2, top + side // 2)))
        if len(items) == 6:
            break
    return Scene(rng.choice(list(BACKGROUNDS)), tuple(items))


def single_shape_scenes(pairs=TRAIN_PAIRS) -> list[Scene]:
    """Every one-shape scene: each background, pair, size and place."""
    return [Scene(b, (Item(c, s, z, at),)) for b in BACKGROUNDS for c, s in pairs for z in SIZES
            for at in PLACES.values()]


def _two_shapes(rng: random.Random, pairs, background: str) -> Scene:
    """Two small or medium shapes, one above or left of the other, half the picture apart."""
    if rng.random() < 0.5:
        x = rng.choice(_LINES)
        centres = [(x, _LINES[0]), (x, _LINES[2])]
    else:
        y = rng.choice(_LINES)
        centres = [(_LINES[0], y), (_LINES[2], y)]
    items = tuple(Item(*rng.choice(pairs), rng.choice(["small", "medium"]), at) for at in centres)
    return Scene(background, items)


def caption(scene: Scene, rng: random.Random) -> str:
    """One of the captions that describe `scene` (parts are left out at random)."""
    if len(scene.items) == 1:
        item = scene.items[0]
        words = [_noun_phrase(item, rng.random() >= _DROP["size"])]
        if rng.random() >= _DROP["place"]:
            words.append(next(name for name, at in PLACES.items() if at == item.centre))
    else:
        first, second = scene.items
        relation = "above" if first.centre[0] == second.centre[0] else "to the left of"
        words = [_noun_phrase(first, False), relation, _noun_phrase(second, False)]
    if rng.random() >= _DROP["background"]:
        words.append(f"on a {scene.background} background")
    return " ".join(words)


def render(scene: Scene, scale: int = 1) -> Image.Image:
    """The scene at IMAGE_SIZE pixels, or `scale` times larger (the upscaler's targets)."""
    image = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        half = SIZES[item.size] // 2 * scale
        x, y = (c * scale for c in item.centre)
        box = (x - half, y - half, x + half - 1, y + half - 1)
        fill = COLOURS[item.colour]
        if item.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif item.shape == "square":
            draw.rectangle(box, fill=fill)
        else:  # an upright isosceles triangle filling its box's base
            draw.polygon([(box[0], box[3]), (box[2], box[3]), (x - 0.5 * scale, box[1])], fill=fill)
    return image


def render_all(scenes) -> np.ndarray:
    """uint8 [len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3]."""
    return np.stack([np.asarray(render(scene)) for scene in scenes])
