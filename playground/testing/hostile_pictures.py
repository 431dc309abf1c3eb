"""Start pictures a hostile (or careless) client may upload, built in memory: for the tests,
the hostile-input scenario and the uploads benchmark.

A header-only PNG declares any size in a few dozen bytes (its pixel data cut short), as a
decompression bomb or a truncated file does; a WebP canvas is a real, valid picture that costs
its full size to decode.
"""
from __future__ import annotations

import functools
import io
import math
import struct
import zlib

from PIL import Image

from playground import pictures


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, rows: int | None = None) -> bytes:
    """A PNG declaring width × height (RGB, 8 bits), whose pixel data is cut short; with
    `rows`, it carries that many rows of codes, as a PNG of ours does."""
    text = b"" if rows is None else _chunk(b"tEXt", pictures.CODES_KEY.encode() + b"\0"
                                           + pictures.pack_codes(range(rows * pictures.ROW)).encode())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + text + _chunk(b"IDAT", zlib.compress(b"\0" * 64))[:-4])


def png(width: int, height: int, rows: int | None = None) -> bytes:
    """A whole PNG of width × height; with `rows`, carrying that many rows of codes."""
    text = None if rows is None else {pictures.CODES_KEY: pictures.pack_codes(range(rows * pictures.ROW))}
    return pictures.png_bytes(Image.new("RGB", (width, height), (40, 90, 160)), text)


# The largest WebP allowed: its decoder holds three copies of it.
WEBP_SIDE = math.isqrt(pictures.MAX_UPLOAD_PIXELS // pictures.DECODED_COPIES["WEBP"])


@functools.cache
def webp_canvas(side: int = WEBP_SIDE) -> bytes:
    """A valid lossless WebP of side × side in one colour: a few hundred bytes that decode to
    side² pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, format="WEBP", lossless=True, quality=0)
    return buffer.getvalue()


@functools.cache
def costliest_png() -> bytes:
    """The costliest picture to decode that the limits let through: the most pixels, with
    alpha (squaring it makes an RGB copy), in one colour: about 75 kB."""
    buffer = io.BytesIO()
    side = pictures.MAX_UPLOAD_SIDE
    Image.new("RGBA", (side, side), (200, 30, 30, 128)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def animated_png(frames: int = 3) -> bytes:
    buffer = io.BytesIO()
    images = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(frames)]
    images[0].save(buffer, format="PNG", save_all=True, append_images=images[1:])
    return buffer.getvalue()
