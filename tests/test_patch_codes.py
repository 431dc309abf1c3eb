"""The demo VQGAN's codebook: the codes of a scene stand for exactly its pixels."""
from __future__ import annotations

import random

import numpy as np
import pytest

from training import shapes_dataset
from training.patch_codes import PatchCodebook

EVERY_PAIR = [(c, s) for c in shapes_dataset.COLOURS for s in shapes_dataset.SHAPES]


@pytest.fixture(scope="module")
def codebook():
    return PatchCodebook.enumerate()


def test_codes_draw_back_every_scene_exactly(codebook):
    rng = random.Random(3)
    for i in range(60):  # one- and two-shape scenes and busy ones, held-out pairs included
        scene = (shapes_dataset.busy_scene if i % 2 else shapes_dataset.random_scene)(rng, EVERY_PAIR)
        assert np.array_equal(codebook.draw(codebook.encode(scene)), np.asarray(shapes_dataset.render(scene))), scene


def test_codebook_covers_every_background_colour_and_edge(codebook):
    factors = codebook.factors()
    assert len(set(map(tuple, factors))) == codebook.size  # no code twice
    edges = len(codebook.masks) - 2
    # Plain backgrounds, plain colours, then every (background, colour, edge).
    assert codebook.size == 3 + 6 + 3 * 6 * edges
    assert edges > 10  # circles of three sizes alone have dozens of edge patches


def test_scenes_use_the_codes_of_their_parts(codebook):
    centre = shapes_dataset.PLACES["in the center"]
    scene = shapes_dataset.Scene("black", (shapes_dataset.Item("red", "square", "large", centre),))
    codes = codebook.encode(scene)
    named = {codebook.codes[c] for c in codes}
    # A square on the grid has no edge patches: only plain black and plain red.
    assert named == {("black", None, len(codebook.masks) - 1), (None, "red", len(codebook.masks) - 2)}
    assert sum(codebook.codes[c][1] == "red" for c in codes) == (shapes_dataset.SIZES["large"] // shapes_dataset.GRID) ** 2
