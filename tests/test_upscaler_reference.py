"""Fidelity to the official Real-ESRGAN code: small random SRVGGNetCompact and RRDBNet (x4 and
x2) saved by torch and run by basicsr / realesrgan (tests/reference/make_upscaler_vectors.py, in
a virtual environment of its own), loaded from those `.pth` files and run here."""
from __future__ import annotations

import numpy as np
import pytest

from backend.engine.upscaler import load_upscaler
from reference_data import DATA, assert_close, reference_fixtures

REFERENCE = DATA / "reference_upscaler"
MODELS = ["srvgg_x4", "rrdb_x4", "rrdb_x2"]


# Every test here runs at full float32 matmul precision, against these vectors and inputs.
float32_matmuls, vectors, inputs = reference_fixtures(REFERENCE)


def _upscaler(name, inputs, tile):
    return load_upscaler(REFERENCE / f"{name}.pth", tile=tile, tile_pad=inputs["tile_pad"], pre_pad=inputs["pre_pad"])


@pytest.mark.parametrize("name", MODELS)
def test_the_network_gives_the_official_output(name, vectors, inputs):
    upscaler = _upscaler(name, inputs, tile=0)
    for i in range(len(inputs["pictures"])):
        picture = vectors[f"picture/{i}"]
        # pre_pad 0 and no tiles: the network alone, on the picture as it is (square and not)
        upscaler.pre_pad = 0
        out = upscaler.upscale_float(picture)
        assert out.shape == (picture.shape[0] * upscaler.scale, picture.shape[1] * upscaler.scale, 3)
        assert_close(out, vectors[f"{name}/net/{i}"])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("tiled", [False, True])
def test_the_whole_pipeline_gives_the_official_output(name, tiled, vectors, inputs):
    """Pre-padding, the x2 model's second reflection, tiles with overlap, cropping: as
    RealESRGANer does them, on a picture of odd height cut into several tiles."""
    upscaler = _upscaler(name, inputs, tile=inputs["tile"] if tiled else 0)
    seen = []
    out = upscaler.upscale_float(vectors["picture/tiled"], progress=lambda done, total: seen.append((done, total)))
    assert_close(out, vectors[f"{name}/{'tiled' if tiled else 'whole'}"])
    total = seen[-1][1]
    assert seen == [(i, total) for i in range(1, total + 1)] and (total > 4) == tiled


@pytest.mark.parametrize("name", MODELS)
def test_tiling_changes_no_pixel_more_than_it_does_officially(name, vectors, inputs):
    official = np.abs(vectors[f"{name}/tiled"] - vectors[f"{name}/whole"]).max()
    tiled = _upscaler(name, inputs, tile=inputs["tile"]).upscale_float(vectors["picture/tiled"])
    whole = _upscaler(name, inputs, tile=0).upscale_float(vectors["picture/tiled"])
    tolerance = 1e-4 * np.abs(vectors[f"{name}/whole"]).max()
    assert np.abs(tiled - whole).max() <= official + tolerance
