"""POST /upscale: the scheduler asks a backend to enlarge one library picture.

Its answer streams the events of POST /generate (events.py): `started` (seed 0), `progress`
after each tile (`tokens_done`: tiles done, `total_tokens`: the picture's tiles), then `done`
with one PNG in `images` (its text: pictures.upscaled_text), or `cancelled`, `error`,
`stopped` as a generation's; POST /cancel stops it the same way.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from playground.request_fields import UPSCALE_MODEL

MAX_JOB_ID_CHARS = 100
# Base64 of the largest library picture a job may send (a 1024-pixel PNG of ours is far smaller).
MAX_PICTURE_CHARS = 16 * 1024 * 1024
MAX_SOURCE_CHARS = 200


@dataclass(frozen=True)
class UpscaleBody:
    job_id: str  # the attempt's id, as /generate's
    source: str  # the library picture ("library/<queue_id>/<image>.png"), named in the PNG's text
    picture: bytes  # its PNG
    model: str | None  # the upscaler asked for; None: the backend's


def upscale_body(job_id: str, source: str, picture: bytes, model: str | None) -> dict:
    return {"job_id": job_id, "source": source, "picture": base64.b64encode(picture).decode("ascii"),
            "model": model}


def parse_upscale_body(body) -> UpscaleBody:
    """A POST /upscale body (any JSON); ValueError naming the field it breaks."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    job_id, source, picture, model = (body.get(name) for name in ("job_id", "source", "picture", "model"))
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_JOB_ID_CHARS:
        raise ValueError(f"job_id must be a non-empty string of at most {MAX_JOB_ID_CHARS} characters")
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE_CHARS or not source.isprintable():
        raise ValueError(f"source must be a library picture's path of at most {MAX_SOURCE_CHARS} characters")
    if not isinstance(picture, str) or not 0 < len(picture) <= MAX_PICTURE_CHARS:
        raise ValueError(f"picture must be a base64 PNG of at most {MAX_PICTURE_CHARS} characters")
    try:
        data = base64.b64decode(picture, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("picture must be a base64 PNG") from None
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= UPSCALE_MODEL.bounds.maximum):
        raise ValueError(f"model must be null or an upscaler's name of at most {UPSCALE_MODEL.bounds.maximum} characters")
    return UpscaleBody(job_id, source, data, model)
