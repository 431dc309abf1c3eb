"""PNG encoding with the generation settings stored as text chunks.

Latin-1 values go into tEXt chunks and anything else into UTF-8 iTXt chunks (Pillow picks),
so a prompt in any script survives the round trip.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, PngImagePlugin

# zlib level 1 takes a third of the time of Pillow's default 6 on a 256x256 picture
# (about 6 ms against 18 ms) for a file about 15% larger.
COMPRESS_LEVEL = 1
# zlib releases the GIL, so the pictures of one job are encoded side by side.
_ENCODERS = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="png")


def encode_png(image: Image.Image | np.ndarray, metadata: dict[str, str]) -> bytes:
    """Encode an RGB image (PIL image or uint8 array [H, W, 3]) as PNG bytes with `metadata`."""
    picture = _as_rgb_image(image)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        _check_key(key)
        if not isinstance(value, str):
            raise TypeError(f"metadata value for {key!r} must be a string, got {type(value).__name__}")
        info.add_text(key, value)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, compress_level=COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_pngs(images, metadata: list[dict[str, str]]) -> list[bytes]:
    """`encode_png` for several pictures at once, in parallel (8 pictures of 256x256 on a
    2-core machine: 22 ms against 36 ms one after another)."""
    return list(_ENCODERS.map(encode_png, images, metadata))


def read_png_metadata(data: bytes) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as picture:
            picture.load()  # text chunks after the image data are read only now
            return {str(key): str(value) for key, value in picture.text.items()}
    except (OSError, SyntaxError) as error:  # Pillow's ways of saying "not a valid PNG"
        raise ValueError(f"not a PNG image: {error}") from error


def _as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image array must be uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
    return Image.fromarray(array, mode="RGB")


def _check_key(key: str) -> None:
    # The PNG specification: a keyword is 1-79 Latin-1 characters, no leading/trailing space.
    if not isinstance(key, str) or not 1 <= len(key) <= 79 or key != key.strip():
        raise ValueError(f"invalid PNG text key {key!r}: 1-79 characters without outer spaces")
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"invalid PNG text key {key!r}: must be Latin-1") from None
