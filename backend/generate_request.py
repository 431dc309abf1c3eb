"""Validation of a POST /generate body into the engine's request."""
from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from playground import pictures
from playground.limits import MAX_CANDIDATES, MAX_IMAGES, MAX_KEEP_ROWS, MAX_SEED, MAX_TEXT_LENGTH


class BadRequest(ValueError):
    """The body is not a valid generation request; the message names the field."""


@dataclass(frozen=True)
class GenerateBody:
    job_id: str
    text: str
    num_images: int
    seed: int
    top_k: int | None
    top_p: float | None
    temperature: float | None
    condition_scale: float | None
    # A continuation: the start as a code grid (whole rows, maybe taller than square) or as
    # a picture to encode, the rows kept, and whether to extend the picture down.
    init_codes: tuple[int, ...] | None = None
    init_picture: Image.Image | None = None
    keep_rows: int | None = None
    extend: str | None = None
    # Best of N: how many candidates to generate (num_images … MAX_CANDIDATES), and whether
    # CLIP keeps the best num_images (None: when this backend has CLIP).
    candidates: int | None = None
    rank: bool | None = None


def _integer(body: dict, name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    return value


def _optional_number(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number or null")
    return float(value)


def parse_generate_body(body: Any) -> GenerateBody:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 100:
        raise BadRequest("job_id must be a non-empty string of at most 100 characters")
    text = body.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_LENGTH:
        raise BadRequest(f"text must be a non-empty string of at most {MAX_TEXT_LENGTH} characters")
    num_images = _integer(body, "num_images")
    if not 1 <= num_images <= MAX_IMAGES:
        raise BadRequest(f"num_images must be between 1 and {MAX_IMAGES}")
    seed = _integer(body, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise BadRequest(f"seed must be between 0 and {MAX_SEED}")

    top_k = body.get("top_k")
    if top_k is not None:
        top_k = _integer(body, "top_k")
        if top_k < 1:
            raise BadRequest("top_k must be at least 1")
    top_p = _optional_number(body, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise BadRequest("top_p must be greater than 0 and at most 1")
    temperature = _optional_number(body, "temperature")
    if temperature is not None and temperature <= 0:
        raise BadRequest("temperature must be greater than 0")
    condition_scale = _optional_number(body, "condition_scale")
    if condition_scale is not None and condition_scale < 0:
        raise BadRequest("condition_scale must be at least 0")
    candidates = body.get("candidates")
    if candidates is not None:
        candidates = _integer(body, "candidates")
        if not num_images <= candidates <= MAX_CANDIDATES:
            raise BadRequest(f"candidates must be between num_images ({num_images}) and {MAX_CANDIDATES}")
    rank = body.get("rank")
    if rank is not None and not isinstance(rank, bool):
        raise BadRequest("rank must be true, false or null")
    return GenerateBody(job_id, text, num_images, seed, top_k, top_p, temperature, condition_scale,
                        *_start(body), candidates=candidates, rank=rank)


def _start(body: dict) -> tuple:
    codes, picture = body.get("init_codes"), body.get("init_picture")
    if codes is None and picture is None:
        for name in ("keep_rows", "extend"):
            if body.get(name) is not None:
                raise BadRequest(f"{name} needs init_codes or init_picture")
        return None, None, None, None
    if codes is not None and picture is not None:
        raise BadRequest("give init_codes or init_picture, not both")
    if codes is not None:
        if not isinstance(codes, list):
            raise BadRequest(f"init_codes must be a list of whole rows of {pictures.ROW} codes")
        try:
            rows = pictures.grid_rows(len(codes))
        except pictures.BadStart as error:
            raise BadRequest(f"init_codes {error}") from None
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= pictures.MAX_CODE for c in codes):
            raise BadRequest(f"init_codes must be integers from 0 to {pictures.MAX_CODE}")
        codes = tuple(codes)
    else:
        try:
            picture = pictures.open_picture(base64.b64decode(picture, validate=True))
            pictures.check_start_size(picture.size, None)
        except (TypeError, ValueError, binascii.Error) as error:
            raise BadRequest(f"init_picture must be a base64 PNG, JPEG or WebP picture ({error})") from None
    keep_rows = _integer(body, "keep_rows")
    if not 1 <= keep_rows <= MAX_KEEP_ROWS:
        raise BadRequest(f"keep_rows must be between 1 and {MAX_KEEP_ROWS}")
    extend = body.get("extend")
    if extend not in (None, "down"):
        raise BadRequest('extend must be "down" or null')
    if codes is not None and extend:
        try:
            pictures.check_taller(rows, keep_rows)
        except pictures.BadStart as error:
            raise BadRequest(f"init_codes {error}") from None
    return codes, picture, keep_rows, extend
