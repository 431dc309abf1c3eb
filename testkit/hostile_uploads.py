"""Start pictures and POST /prompt bodies a hostile (or careless) client may send, built in
memory: for the tests, the hostile-uploads scenario and the uploads benchmark.

A header-only PNG declares any size in a few dozen bytes (its pixel data cut short), as a
decompression bomb or a truncated file does; a WebP canvas is a real, valid picture that costs
its full size to decode.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import struct
import zlib
from pathlib import Path

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


# The frontend's peak resident memory while 16 of costliest_png() are uploaded at once, two
# decoded at a time (docs/frontend.md): each decode holds its 64 MiB picture and little else,
# and the process starts at about 45 MiB (about 195 MiB measured; a full-size RGB copy in each
# decode makes it about 313). Held by tests/test_upload_bounds.py and the hostile-uploads scenario.
PEAK_MEMORY_MIB = 280
AT_ONCE = 16


def peak_memory_mib(pid: int) -> float:
    """A process's peak resident memory so far, MiB: VmHWM, the kernel's own high-water mark,
    so no sampling can miss the peak, however busy the machine."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")

BOUNDARY = "b0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def part(head: str, content: bytes) -> bytes:
    """One form part: its header lines (Content-Disposition first), then its content."""
    return f"--{BOUNDARY}\r\n{head}\r\n\r\n".encode() + content + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


PROMPT_PARTS = (part('Content-Disposition: form-data; name="text"', b"x")
                + part('Content-Disposition: form-data; name="num_images"', b"2"))
FILE_HEAD = 'Content-Disposition: form-data; name="init_image_data"; filename="a.png"'


def slowest_bodies(size: int) -> dict[str, tuple[bytes, str]]:
    """POST /prompt bodies of exactly `size` bytes (with their Content-Type), each aimed at a
    different part of the parsing: the number of parts, the search for the boundary, header
    lines, and base64 in lines."""
    end = f"\r\n--{BOUNDARY}--\r\n".encode()

    def filled(head: bytes, unit: bytes) -> bytes:
        room = size - len(head) - len(end)
        return head + (unit * (room // len(unit) + 1))[:room] + end

    def repeated(unit: bytes) -> bytes:
        return (unit * (size // len(unit) + 1))[:size]

    file_head = PROMPT_PARTS + f"--{BOUNDARY}\r\n{FILE_HEAD}\r\nContent-Type: image/png\r\n\r\n".encode()
    wrapped = base64.encodebytes(os.urandom(size // 2)).decode()  # the base64 tool's 76-column lines
    json_body = json.dumps({"text": "x", "num_images": 2, "init_image_data": wrapped}).encode()
    json_body += b" " * (size - len(json_body))  # JSON allows trailing white space
    return {
        "empty parts to the end": (repeated(part('Content-Disposition: form-data; name=""', b"")), FORM),
        "one part of near-boundaries": (filled(file_head, f"\r\n--{BOUNDARY[:-1]}X".encode()), FORM),
        "one part of line breaks": (filled(file_head, b"\r\n"), FORM),
        "parts of 1000-byte headers": (repeated(part(f'Content-Disposition: form-data; name="x"\r\nX-A: {"a" * 1000}'
                                                     f"\r\nX-B: 1\r\nX-C: 1", b"")), FORM),
        "JSON, base64 in 76-column lines": (json_body, "application/json"),
    }
