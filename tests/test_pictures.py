"""playground.pictures' bounds on decoding a start picture (issue 35): decoded no larger than
needed, squared without a full-size copy, and the same centre square as before."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageStat

from playground import pictures


def _jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def test_a_large_jpeg_is_decoded_at_the_draft_scale_the_start_needs():
    data = _jpeg((4096, 3072))
    assert pictures.open_picture(data).size == (4096, 3072)
    # 1/8 scale still covers 256 on both sides; 1/16 does not exist, 1/8 of 3072 is 384.
    assert pictures.open_picture(data, fit=pictures.START_SIDE).size == (512, 384)
    assert pictures.open_picture(_jpeg((600, 300)), fit=pictures.START_SIDE).size == (600, 300)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "I;16", "1", "CMYK"])
@pytest.mark.parametrize("size", [(4096, 3000), (1030, 4000), (600, 500), (40, 30)])
def test_square_gives_the_centre_square_in_rgb_from_any_mode_and_size(mode, size):
    square = pictures.square(Image.new(mode, size))
    assert square.size == (pictures.START_SIDE, pictures.START_SIDE) and square.mode == "RGB"


def test_square_reduces_a_large_picture_band_by_band_to_the_same_picture():
    """The reduced path looks like Pillow's own reducing resize of the centre square (noise, the
    hardest case: a row or two at the edge is dropped where the factor does not divide)."""
    picture = Image.effect_noise((3000, 2000), 80).convert("RGB")
    expected = picture.resize((256, 256), Image.Resampling.LANCZOS, box=(500, 0, 2500, 2000), reducing_gap=2.0)
    difference = ImageChops.difference(pictures.square(picture), expected)
    assert max(high for _, high in difference.getextrema()) <= 24
    assert max(ImageStat.Stat(difference).mean) < 4  # levels of 255, on average
