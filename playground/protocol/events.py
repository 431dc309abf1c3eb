"""POST /generate: the events a backend streams back, one JSON object a line (NDJSON).

    started ──▶ progress … (now and then a preview after one) ──▶ done | cancelled | error | stopped

`progress` comes at least once a second, so silence means a lost backend. `stopped` is the
backend handing the job back because it is stopping on purpose: the scheduler queues it again
without counting an attempt. POST /cancel {"job_id"} answers `cancel_answer`.
"""
from __future__ import annotations

import json
from enum import StrEnum


class Event(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    PREVIEW = "preview"
    DONE = "done"
    CANCELLED = "cancelled"
    ERROR = "error"
    STOPPED = "stopped"


ENDINGS = (Event.DONE, Event.CANCELLED, Event.ERROR, Event.STOPPED)
# Why a stopping backend hands a job back (`stopped`) or refuses one (503).
STOPPING = "the backend is shutting down"


def started_event(seed: int, total_tokens: int) -> dict:
    """`seed`: the one used (a request's 0 replaced by a random one)."""
    return {"event": Event.STARTED, "seed": seed, "total_tokens": total_tokens}


def progress_event(tokens_done: int, total_tokens: int) -> dict:
    return {"event": Event.PROGRESS, "tokens_done": tokens_done, "total_tokens": total_tokens}


def preview_event(tokens_done: int, total_tokens: int, width: int, height: int, images: list[str]) -> dict:
    """Each image as far as its first `tokens_done` codes go: base64 JPEGs."""
    return {"event": Event.PREVIEW, "tokens_done": tokens_done, "total_tokens": total_tokens,
            "format": "jpeg", "width": width, "height": height, "images": images}


def done_event(*, seed: int, model: str, params: dict, images: list[str], timings: dict, codes: list[str] = (),
               candidates: int | None = None, ranked: bool = False, candidate_indices: list[int] | None = None,
               clip_scores: list[float] | None = None, start: dict | None = None,
               cells: list[dict] | None = None) -> dict:
    """The pictures (base64 PNGs) and their packed codes; Best of N: how many candidates were
    generated, which were kept (best first) and their scores; a continuation: its `start`; a
    grid (playground/grid.py): each picture's `cells` values (its swept fields and its seed)."""
    event = {"event": Event.DONE, "seed": seed, "model": model, "params": params, "images": images,
             "codes": list(codes), "timings": timings, "candidates": candidates, "ranked": ranked,
             "candidate_indices": candidate_indices, "clip_scores": clip_scores}
    if start is not None:
        event["start"] = start
    if cells is not None:
        event["cells"] = cells
    return event


def cancelled_event() -> dict:
    return {"event": Event.CANCELLED}


def error_event(message: str) -> dict:
    return {"event": Event.ERROR, "error": message}


def stopped_event() -> dict:
    return {"event": Event.STOPPED, "error": STOPPING}


def parse_event(line: bytes) -> dict:
    """One line of the stream as an event object; ValueError says what else it is."""
    try:
        event = json.loads(line)
    except ValueError:
        raise ValueError(f"a line that is not JSON: {line[:200]!r}") from None
    if not isinstance(event, dict):
        raise ValueError(f"a line that is not an event object: {line[:200]!r}")
    return event


def event_kind(event: dict) -> str | None:
    """Which event it is: an `Event`, or whatever else a backend of another version sent."""
    return event.get("event")


def cancel_answer(cancelled: bool) -> dict:
    """POST /cancel's answer: whether the backend was running that job."""
    return {"cancelled": cancelled}


def was_cancelled(answer) -> bool:
    return isinstance(answer, dict) and bool(answer.get("cancelled"))
