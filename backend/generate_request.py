"""Validation of a POST /generate body into the engine's request."""
from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from playground import pictures
from playground import request_fields as fields
from playground.grid import Grid, GridError, parse_grid
from playground.request_fields import Bounds, Field, FieldError


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
    # A grid sweep (playground/grid.py): one picture per cell, num_images of them.
    grid: Grid | None = None


def _value(body: dict, field: Field, bounds: Bounds | None = None) -> float | None:
    """A number field as the protocol sends it (a JSON number; an int field an integer), checked
    by its field's rule; null for an optional one (no default: the backend's own applies)."""
    value = body.get(field.name)
    if value is None and field.default is None and not field.required:
        return None
    if field.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{field.name} must be an integer")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{field.name} must be a finite number or null")
    try:
        return field.check(value if field.kind is int else float(value), bounds)
    except FieldError as error:
        raise BadRequest(str(error)) from None


def parse_generate_body(body: Any) -> GenerateBody:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 100:
        raise BadRequest("job_id must be a non-empty string of at most 100 characters")
    text = body.get("text")
    max_text = fields.TEXT.bounds.maximum
    if not isinstance(text, str) or not text.strip() or len(text) > max_text:
        raise BadRequest(f"text must be a non-empty string of at most {max_text} characters")
    grid = _grid(body)
    if grid is None:
        num_images = _value(body, fields.NUM_IMAGES)
    elif body.get("num_images") != grid.size:
        raise BadRequest(f"num_images must be the grid's cells ({grid.size})")
    else:
        num_images = grid.size
    seed = _value(body, fields.SEED)
    # No upper limit here: the engine clips a top-k to its codebook.
    top_k = _value(body, fields.TOP_K, Bounds(1))
    top_p, temperature, condition_scale = (_value(body, field) for field in fields.SAMPLING[1:])
    candidates = _value(body, fields.CANDIDATES, fields.candidate_bounds(num_images))
    rank = body.get("rank")
    if rank is not None and not isinstance(rank, bool):
        raise BadRequest("rank must be true, false or null")
    start = _start(body)
    if grid is not None and (candidates is not None or start[0] is not None or start[1] is not None):
        raise BadRequest("grid makes one picture per cell: no candidates, no start")
    return GenerateBody(job_id, text, num_images, seed, top_k, top_p, temperature, condition_scale,
                        *start, candidates=candidates, rank=rank, grid=grid)


def _grid(body: dict) -> Grid | None:
    if body.get("grid") is None:
        return None
    try:
        return parse_grid(body["grid"])
    except GridError as error:
        raise BadRequest(str(error)) from None


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
    keep_rows = _value(body, fields.KEEP_ROWS)
    extend = body.get("extend")
    if extend not in (None, *fields.EXTEND_CHOICES):
        raise BadRequest('extend must be "down" or null')
    if codes is not None and extend:
        try:
            pictures.check_taller(rows, keep_rows)
        except pictures.BadStart as error:
            raise BadRequest(f"init_codes {error}") from None
    return codes, picture, keep_rows, extend
