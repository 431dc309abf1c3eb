"""Pictures as starts of new work: the codes a PNG of ours carries, uploads, taller pictures.

Shared by the frontend (reading a start), the scheduler (stitching taller pictures) and the
backend (writing the codes into each PNG); Pillow only, no JAX and no numpy.

A picture is a grid of VQGAN codes, `ROW` codes a row, row by row (16 rows for a square
picture; a taller picture made by extending has more). `dalle_codes` holds the grid as
base64 of little-endian 16-bit numbers: 684 characters for 256 codes.
"""
from __future__ import annotations

import array
import base64
import binascii
import io
import sys
import warnings

from PIL import Image, PngImagePlugin

CODES_KEY = "dalle_codes"
ROW = 16  # codes per row of the published models' grid (and of the tiny and demo models')
SQUARE = ROW * ROW
MAX_CODE = 2**16 - 1
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_UPLOAD_PIXELS = 4096 * 4096  # a decompression bomb is refused before it is decoded
NOT_A_PICTURE = "is not a PNG, JPEG or WebP picture"
START_SIDE = 256  # an upload is kept as a square of this side; the backend resizes it to its model's


def pack_codes(codes) -> str:
    values = array.array("H", (int(code) for code in codes))
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def unpack_codes(text: str) -> list[int]:
    """The codes of a `dalle_codes` value; ValueError unless whole rows of codes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("dalle_codes is not base64") from None
    if not raw or len(raw) % (2 * ROW):
        raise ValueError(f"dalle_codes must hold whole rows of {ROW} codes")
    values = array.array("H")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def start_codes(grid: list[int], keep_rows: int, extend: str | None) -> list[int]:
    """The 256 codes a continuation starts from: the first square of the grid, or when
    extending down, the grid's last `keep_rows` rows moved to the top (the rows after them are
    drawn anew, so what fills them does not matter)."""
    if not extend:
        return grid[:SQUARE]
    kept = grid[len(grid) - keep_rows * ROW:]
    return kept + [0] * (SQUARE - len(kept))


def taller_codes(grid: list[int], tile: list[int], keep_rows: int) -> list[int]:
    """The grid of a picture extended down by `tile`, whose first `keep_rows` rows repeat the grid's last."""
    return grid + tile[keep_rows * ROW:]


def open_picture(data: bytes) -> Image.Image:
    """An uploaded PNG, JPEG or WebP, decoded; ValueError saying why when it is not one."""
    failures = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            picture = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
        except failures:
            raise ValueError(NOT_A_PICTURE) from None
        if picture.width * picture.height > MAX_UPLOAD_PIXELS:
            raise ValueError(f"has {picture.width}×{picture.height} pixels; at most {MAX_UPLOAD_PIXELS} are allowed")
        try:
            picture.load()
        except failures:
            raise ValueError(NOT_A_PICTURE) from None
    return picture


def text_chunks(picture: Image.Image) -> dict[str, str]:
    """A PNG's text chunks (none for other formats)."""
    return {str(key): str(value) for key, value in getattr(picture, "text", {}).items()}


def square(picture: Image.Image, side: int = START_SIDE) -> Image.Image:
    """The picture's centre square, RGB, resized to side × side."""
    width, height = picture.size
    crop = min(width, height)
    left, top = (width - crop) // 2, (height - crop) // 2
    box = (left, top, left + crop, top + crop)
    return picture.convert("RGB").resize((side, side), Image.Resampling.LANCZOS, box=box)


def png_bytes(picture: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def stitch_below(top: Image.Image, tile: Image.Image, keep_rows: int) -> Image.Image:
    """`top` with the rows of `tile` below its first `keep_rows` code rows appended (`top`
    is scaled to the tile's width first when an upload of another size started it)."""
    top = top.convert("RGB")
    if top.width != tile.width:
        top = top.resize((tile.width, round(top.height * tile.width / top.width)), Image.Resampling.LANCZOS)
    cut = keep_rows * tile.height // ROW
    taller = Image.new("RGB", (tile.width, top.height + tile.height - cut))
    taller.paste(top, (0, 0))
    taller.paste(tile.convert("RGB").crop((0, cut, tile.width, tile.height)), (0, top.height))
    return taller


REVEAL_FRAME_MS = 200
REVEAL_LAST_FRAME_MS = 2000


def reveal_webp(previews: list[bytes], final: bytes) -> bytes:
    """An animated WebP of one image forming: its previews (JPEGs, oldest first), then the
    finished picture at their size, held a while before the loop starts again."""
    frames = [Image.open(io.BytesIO(data)).convert("RGB") for data in previews]
    size = frames[0].size if frames else (256, 256)
    frames.append(Image.open(io.BytesIO(final)).convert("RGB").resize(size, Image.LANCZOS))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], loop=0, quality=80,
                   duration=[REVEAL_FRAME_MS] * (len(frames) - 1) + [REVEAL_LAST_FRAME_MS])
    return buffer.getvalue()
