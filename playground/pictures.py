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
import re
import sys
import warnings

from PIL import Image, PngImagePlugin

from playground import request_fields
from playground.limits import IMAGE_ROWS as ROW
from playground.limits import MAX_START_ROWS

CODES_KEY = "dalle_codes"
# An upscaled picture's text names the library picture it enlarges (and its upscaler and scale):
# such a picture is not upscaled again.
UPSCALED_FROM_KEY = "upscale_of"
UPSCALE_MODEL_KEY = "upscale_model"
UPSCALE_SCALE_KEY = "upscale_scale"
SQUARE = ROW * ROW
MAX_CODE = 2**16 - 1
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
# What a decode really allocates: one frame (an animation is refused) of at most this many
# pixels, counted as often as the decoder holds a copy (Pillow's WebP decoder keeps two
# canvases of its own beside the picture), and at most MAX_UPLOAD_SIDE lines, so a 1-pixel-wide
# picture cannot spend its pixels on per-line bookkeeping. All from the header, before decoding.
MAX_UPLOAD_SIDE = 4096
MAX_UPLOAD_PIXELS = MAX_UPLOAD_SIDE * MAX_UPLOAD_SIDE
DECODED_COPIES = {"WEBP": 3}
TOO_MANY_PIXELS = (f"has more pixels than allowed: at most {MAX_UPLOAD_SIDE}×{MAX_UPLOAD_SIDE} "
                   f"(a WebP a third of that)")
# Pillow keeps a picture in blocks of this size. Its default, 16 MiB, is below glibc's largest
# mmap threshold, so a freed picture's blocks stayed in the heap of the thread that decoded it;
# blocks this large are mapped and unmapped, and a decode's memory goes back when it is freed.
Image.core.set_block_size(64 * 2**20)
NOT_A_PICTURE = "is not a PNG, JPEG or WebP picture"
START_SIDE = 256  # an upload is kept as a square of this side; the backend resizes it to its model's


class BadStart(ValueError):
    """A start picture its job cannot use: refused before it is queued, and a job that carries
    one anyway fails with this reason (retrying cannot help)."""


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


def open_picture(data: bytes, fit: int | None = None) -> Image.Image:
    """An uploaded PNG, JPEG or WebP, decoded; ValueError saying why when it is not one.
    `fit`: the side the caller needs at most; a JPEG is then decoded at the smallest of
    1/1 … 1/8 scale still that large on both sides (Pillow's draft), not at full size."""
    bombs = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    failures = (OSError, SyntaxError, ValueError, EOFError)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            picture = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
        except bombs:  # Pillow's own limit, far above ours: the header alone says so
            raise ValueError(TOO_MANY_PIXELS) from None
        except failures:
            raise ValueError(NOT_A_PICTURE) from None
        width, height = picture.size
        copies = DECODED_COPIES.get(picture.format, 1)
        if max(width, height) > MAX_UPLOAD_SIDE or width * height * copies > MAX_UPLOAD_PIXELS:
            raise ValueError(f"{TOO_MANY_PIXELS}, not {width}×{height}")
        if getattr(picture, "n_frames", 1) != 1:
            raise ValueError("is animated; a start is a still picture")
        if fit is not None:
            picture.draft("RGB", (fit, fit))  # JPEG only; other formats ignore it
        try:
            picture.load()
        except bombs:
            raise ValueError(TOO_MANY_PIXELS) from None
        except failures:
            raise ValueError(NOT_A_PICTURE) from None
    return picture


def grid_rows(code_count: int) -> int:
    """The rows of a start's grid of `code_count` codes; BadStart unless whole rows, from a
    square (ROW rows) up to MAX_START_ROWS."""
    if code_count % ROW or not SQUARE <= code_count <= MAX_START_ROWS * ROW:
        raise BadStart(f"carries {code_count} codes; a picture has {ROW} to {MAX_START_ROWS} rows of {ROW}")
    return code_count // ROW


def check_start_size(size: tuple[int, int], rows: int | None) -> None:
    """BadStart unless a picture of `size` can start one: at least a pixel per code across, and
    with a grid of `rows` rows of codes, the grid's shape (square codes, within half a code)."""
    width, height = size
    if min(width, height) < ROW:
        raise BadStart(f"is {width}×{height} pixels; a start needs at least {ROW} on each side")
    if rows is not None and 2 * abs(height * ROW - rows * width) > width:
        raise BadStart(f"is {width}×{height} pixels, but its {rows} rows of {ROW} codes make a picture "
                       f"{rows}/{ROW} as tall as wide ({width}×{round(rows * width / ROW)})")


def check_taller(rows: int, keep_rows: int) -> None:
    """BadStart when extending a grid of `rows` rows down (a tile of ROW rows under its last
    `keep_rows`) would pass MAX_START_ROWS."""
    if rows + ROW - keep_rows > MAX_START_ROWS:
        raise BadStart(f"is too tall to extend: {rows} rows of codes and {ROW - keep_rows} more would pass "
                       f"{MAX_START_ROWS}, the most a picture may have")


def check_start(code_count: int | None, size: tuple[int, int], keep_rows: int, extend: str | None) -> None:
    """BadStart unless a start picture of `size` carrying `code_count` codes (None: a picture
    to encode) can start a job that keeps `keep_rows` rows, extending it down or not."""
    rows = None if code_count is None else grid_rows(code_count)
    check_start_size(size, rows)
    if rows is not None and extend:
        check_taller(rows, keep_rows)


def text_chunks(picture: Image.Image) -> dict[str, str]:
    """A PNG's text chunks (none for other formats)."""
    return {str(key): str(value) for key, value in getattr(picture, "text", {}).items()}


def square(picture: Image.Image, side: int = START_SIDE) -> Image.Image:
    """The picture's centre square, RGB, resized to side × side. A large picture is first
    reduced by a whole factor (box averages, as Pillow's reducing_gap does; down to twice the
    side at least), a band of rows at a time: no full-size copy is ever made."""
    width, height = picture.size
    crop = min(width, height)
    left, top = (width - crop) // 2, (height - crop) // 2
    factor = crop // (2 * side)
    if factor < 2:
        rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
        return rgb.resize((side, side), Image.Resampling.LANCZOS, box=(left, top, left + crop, top + crop))
    reduced = Image.new("RGB", (crop // factor, crop // factor))
    band = factor * _BAND_ROWS
    for y in range(0, reduced.height * factor, band):
        rows = (left, top + y, left + reduced.width * factor, top + min(y + band, reduced.height * factor))
        reduced.paste(picture.crop(rows).convert("RGB").reduce(factor), (0, y // factor))
    return reduced.resize((side, side), Image.Resampling.LANCZOS)


_BAND_ROWS = 32  # rows of the reduced picture made at a time by square()


def png_bytes(picture: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def parameters_text(chunks: dict[str, str], size: tuple[int, int] | None, steps: int) -> str:
    """The A1111-style `parameters` text that other image tools' PNG-info readers show, made
    from a picture's own text chunks (png_metadata's), its size and the tokens drawn."""
    top_k, top_p, temperature, condition_scale = (chunks[field.library_name] for field in request_fields.SAMPLING)
    values = [f"Steps: {steps}", "Sampler: DALL-E top-k/top-p", f"Seed: {chunks['seed']}", f"Top k: {top_k}",
              f"Top p: {top_p}", f"Temperature: {temperature}", f"CFG scale: {condition_scale}"]
    if size is not None:
        values.append(f"Size: {size[0]}x{size[1]}")
    values.append(f"Model: {chunks['model']}")
    if "clip_score" in chunks:
        values.append(f"CLIP score: {chunks['clip_score']}")
        values.append(f"Best of: {chunks['candidates']}")
    if "keep_rows" in chunks:
        values.append(f"Kept rows: {chunks['keep_rows']}")
    return f"{chunks['prompt']}\n{', '.join(values)}"


def upscaled_text(chunks: dict[str, str], source: str, model: str, scale: int, size: tuple[int, int]) -> dict[str, str]:
    """The text of an upscaled picture, from its source's own text chunks: what the source says
    (its prompt, seed, values), less its codes (they draw the small picture, not this one), and
    which picture (`source`), upscaler and scale made it; its `parameters` text says so too."""
    text = {key: value for key, value in chunks.items() if key not in (CODES_KEY, "parameters")}
    text.update({UPSCALED_FROM_KEY: source, UPSCALE_MODEL_KEY: model, UPSCALE_SCALE_KEY: str(scale)})
    upscale = f"Size: {size[0]}x{size[1]}, Upscale: x{scale} ({model})"
    own = re.sub(r", Size: [0-9]+x[0-9]+", "", chunks.get("parameters", ""))
    text["parameters"] = f"{own}, {upscale}" if own else upscale  # not a picture of ours: the upscale alone
    return text


def taller_pictures(start: bytes, grid: list[int], tiles: list[bytes], codes: list[str], keep_rows: int) -> list[bytes]:
    """Each new tile of a job that extended `start` (its PNG, JPEG or WebP, whose code grid is
    `grid`) below it: the start picture, then the tile's rows under the kept ones. Each PNG
    carries the taller grid's codes, so it can be extended again, and the tile's text with the
    taller size. A start that does not fit its grid (or would grow too tall) raises BadStart
    before anything is allocated for it."""
    try:
        rows = grid_rows(len(grid))
        check_taller(rows, keep_rows)  # before the picture is decoded
        top = open_picture(start)
        check_start_size(top.size, rows)
    except ValueError as exc:
        raise BadStart(f"the start picture {exc}") from None
    taller = []
    for png, packed in zip(tiles, codes):
        tile = open_picture(png)
        picture = stitch_below(top, tile, keep_rows)
        tile_codes = unpack_codes(packed)
        metadata = text_chunks(tile)
        metadata[CODES_KEY] = pack_codes(taller_codes(grid, tile_codes, keep_rows))
        if "parameters" in metadata:
            metadata["parameters"] = parameters_text(metadata, picture.size, len(tile_codes))
        taller.append(png_bytes(picture, metadata))
    return taller


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


def reveals(previews: list[list[bytes]], finals: list[bytes]) -> list[bytes]:
    """Each finished picture's reveal (reveal_webp): `previews` holds each preview event's
    pictures, which may lack the last images."""
    return [reveal_webp([kept[index] for kept in previews if index < len(kept)], png)
            for index, png in enumerate(finals)]


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
