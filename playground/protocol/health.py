"""GET /health of a backend: its status, what it is doing while it loads, what it serves.

    loading ──▶ ready      (200; every other status answers 503)
       └──────▶ error      (the model cannot load; `error` says why)

The backend builds its report here (`loading_report`, `ready_report`, `error_report`); the
scheduler's worker reads it with `parse_health` and publishes the status in its heartbeat,
adding two of its own: unreachable (it could not ask) and unknown (not asked yet, or the
worker is gone).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from playground.limits import MAX_GRID_CELLS

# Bounds on what a loading backend's /health may put into Redis and the UI.
MAX_LOADING_FILES = 16
MAX_NAME_CHARS = 200
MAX_STAGE_CHARS = 40
# Jobs a backend may run at once (its `slots`, BACKEND_SLOTS): the scheduler runs a worker for
# each, so a wrong answer must not start hundreds.
MAX_SLOTS = 16
MAX_UPSCALE_MODEL_CHARS = 200  # as request_fields.UPSCALE_MODEL's bound: the name a job may ask for


class BackendStatus(StrEnum):
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"
    UNREACHABLE = "unreachable"  # said by the scheduler: /health did not answer
    UNKNOWN = "unknown"  # said by the scheduler: not asked yet, or its worker is gone


class Stage(StrEnum):
    """What a loading backend is doing (`stage`); a ready or failed one says its status there."""

    STARTING = "starting"
    DOWNLOADING = "downloading"  # `files`: each download's bytes
    READING = "reading"
    COMPILING = "compiling"


def loading_report(model: str, progress: dict) -> dict:
    """`progress`: {"stage": Stage, "files": [{"name", "bytes_done", "bytes_total"}, ...]}."""
    return {"status": BackendStatus.LOADING, "model": model, "error": None, **progress}


def error_report(model: str, error: str | None) -> dict:
    return {"status": BackendStatus.ERROR, "model": model, "error": error, "stage": BackendStatus.ERROR}


def ready_report(model: str, *, devices: list[str] = (), slots: int = 1, busy: bool = False,
                 job_id: str | None = None, load_secs: float | None = None, image_tokens: int | None = None,
                 image_codes: int | None = None, ranks: bool | None = None, clip_model: str | None = None,
                 upscale_model: str | None = None, grid_cells_max: int | None = None) -> dict:
    """A ready backend: its devices, how many jobs it runs at once (`slots`), whether all of
    them are taken (`busy`) and by which job (`job_id`, with one slot), what the scheduler and
    the frontend need of its model (tokens per image; the codebook, which bounds top-k), and
    whether it ranks Best of N candidates with CLIP, with which; the upscaler it runs upscale jobs
    with (None: none); the most cells of a grid sweep it makes (`grid_cells_max`, playground/grid.py)."""
    return {"status": BackendStatus.READY, "model": model, "error": None, "stage": BackendStatus.READY,
            "devices": list(devices), "slots": slots, "busy": busy, "job_id": job_id, "load_secs": load_secs,
            "image_tokens": image_tokens, "image_codes": image_codes, "ranks": ranks, "clip_model": clip_model,
            "upscale_model": upscale_model, "grid_cells_max": grid_cells_max}


@dataclass(frozen=True)
class Health:
    """A /health answer as the scheduler reads it."""

    status: str  # a BackendStatus, or whatever another version of the backend says
    model: str | None = None
    error: str | None = None
    image_codes: int | None = None
    ranks: bool | None = None  # said by a ready backend only
    upscale_model: str | None = None  # the upscaler of a ready backend (None: it upscales nothing)
    busy: bool = False  # no free slot: still running jobs (ones their clients hung up on, or others')
    slots: int = 1  # jobs it runs at once: the scheduler serves it with a worker for each
    grid_cells_max: int | None = None  # the most cells of a grid sweep it makes (None: it makes none)
    loading: dict | None = None  # while loading: `loading_state`

    @property
    def idle(self) -> bool:
        """Ready for a job now."""
        return self.status == BackendStatus.READY and not self.busy

    @classmethod
    def unreachable(cls, error: str) -> Health:
        return cls(BackendStatus.UNREACHABLE, error=error)


def parse_health(body) -> Health:
    """A /health body (any JSON) as the scheduler reads it; a missing status counts as error."""
    if not isinstance(body, dict):
        return Health(BackendStatus.ERROR, error=f"unexpected /health answer: {body!r}")
    status = body.get("status")
    if not isinstance(status, str):  # it goes into the worker's heartbeat in Redis as it is
        status = BackendStatus.ERROR
    return Health(status=status, model=body.get("model"), error=body.get("error"),
                  image_codes=body.get("image_codes"),
                  ranks=body["ranks"] if isinstance(body.get("ranks"), bool) else None,
                  upscale_model=_upscale_model(body.get("upscale_model")),
                  busy=bool(body.get("busy")), slots=_slots(body.get("slots")),
                  grid_cells_max=_grid_cells_max(body.get("grid_cells_max")),
                  loading=loading_state(body) if status == BackendStatus.LOADING else None)


def _upscale_model(value) -> str | None:
    """A backend's `upscale_model` as the heartbeat may publish it: a short printable name, or None."""
    return value if isinstance(value, str) and 0 < len(value) <= MAX_UPSCALE_MODEL_CHARS and value.isprintable() else None


def _grid_cells_max(value) -> int | None:
    """A backend's `grid_cells_max`: None when it does not say (one from before grids), bounded."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return min(value, MAX_GRID_CELLS)


def _slots(value) -> int:
    """A backend's `slots`: 1 when it does not say (one from before slots existed), bounded."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return min(max(value, 1), MAX_SLOTS)


def loading_state(health: dict) -> dict:
    """What a loading backend is doing, from its /health body: the stage and each download's
    bytes; unknown or malformed parts dropped."""
    stage, entries = health.get("stage"), health.get("files")
    files = []
    for entry in entries[:MAX_LOADING_FILES] if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        done, total = entry.get("bytes_done"), entry.get("bytes_total")
        files.append({"name": entry["name"][:MAX_NAME_CHARS],
                      "bytes_done": done if isinstance(done, int) and done >= 0 else 0,
                      "bytes_total": total if isinstance(total, int) and total > 0 else None})
    return {"stage": stage[:MAX_STAGE_CHARS] if isinstance(stage, str) else None, "files": files}
