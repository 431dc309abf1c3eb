"""One job: the request's fields, everything known about its run, and its Redis hash."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from playground import request_fields
from playground.limits import IMAGE_TOKENS
from playground.pictures import unpack_codes
from playground.queue.states import FINISHED, QUEUED
from playground.request_fields import ENTRY, GENERATE, JOB, taken_by

BEST_OF_FIELDS = ("candidates", "rank", "ranked", "candidate_indices", "clip_scores")
# What a job does: draws pictures from a prompt, or enlarges a library picture (POST /upscale).
GENERATE_KIND, UPSCALE_KIND = "generate", "upscale"
UPSCALE_FIELDS = tuple(field.name for field in (request_fields.UPSCALE_OF, request_fields.UPSCALE_MODEL,
                                                 request_fields.UPSCALE_AFTER))
# A continuation's fields that its status shows (not the start's codes or picture).
PUBLIC_START_FIELDS = tuple(field.name for field in taken_by(ENTRY, request_fields.START))
# The request as the job keeps it; its model is routed, and stored, by the submit script.
REQUEST_FIELDS = tuple(field for field in taken_by(JOB) if field is not request_fields.MODEL)
# Job ids are lowercase uuids (they name the library's folders), and so are the library's image names.
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# A field the queue works out when asked, never stored in the hash.
_WORKED_OUT = {"stored": False}


@dataclass
class Job:
    """One prompt and everything known about its run, decoded from its Redis hash."""

    id: str
    text: str
    num_images: int
    seed: int
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    condition_scale: float | None = None
    # A continuation (all None for a fresh job): the library image it starts from
    # ("library/<queue_id>/<image>.png", or None for an upload); how its codes were obtained
    # ("codes": read from a PNG of ours, "encoded": the backend's VQGAN encodes init_picture);
    # the start's code grid (pictures.pack_codes) or the picture (base64 PNG); the rows kept;
    # "down" to extend the picture below.
    init_image: str | None = None
    init_source: str | None = None
    init_codes: str | None = None
    init_picture: str | None = None
    keep_rows: int | None = None
    extend: str | None = None
    # Best of N (None: not asked for): candidates to generate, whether CLIP ranks them; once
    # done, whether it did, the kept pictures' candidate indices and their CLIP scores.
    candidates: int | None = None
    rank: bool | None = None
    ranked: bool | None = None
    candidate_indices: list[int] | None = None
    clip_scores: list[float] | None = None
    # An upscale job (None for a generation): the library picture it enlarges and the upscaler
    # asked for (None: the backend's). Its text is the picture's prompt, its num_images 1.
    upscale_of: str | None = None
    upscale_model: str | None = None
    # A generation asking for its pictures to be upscaled this much once it is done (None: not).
    upscale: int | None = None
    # A grid sweep (playground/grid.py): its JSON text; num_images is then its cells.
    grid: str | None = None
    status: str = QUEUED
    created_at: float = 0.0
    started_at: float | None = None
    progress_at: float | None = None  # when its worker last heard from the backend (scripts.PROGRESS)
    finished_at: float | None = None
    attempts: int = 0
    claim: int = 0  # the fencing token of the latest claim (scripts.CLAIM)
    error: str | None = None
    last_error: str | None = None
    worker: str | None = None
    backend: str | None = None
    model: str | None = None
    tokens_done: int = 0
    total_tokens: int = IMAGE_TOKENS  # until the backend's `started` event gives its model's count
    cancel_requested: bool = False
    # Keep the previews: the library stores each image's reveal (an animated WebP of them).
    keep_previews: bool = False
    # The tokens the newest live preview shows (GET /jobs/<id>/preview); None when there is none.
    preview_tokens: int | None = None
    images: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)  # each image's codes (pictures.pack_codes), once done
    process_time_secs: float | None = None
    # Filled in by JobQueue from the queue as a whole, not stored in the hash.
    position: int | None = field(default=None, metadata=_WORKED_OUT)
    eta_secs: float | None = field(default=None, metadata=_WORKED_OUT)
    # Queued with no live backend that can run it: why (eta.unserved_reason).
    unserved: str | None = field(default=None, metadata=_WORKED_OUT)
    # Running, and nothing heard from its backend for this long (eta).
    stalled_secs: float | None = field(default=None, metadata=_WORKED_OUT)

    @classmethod
    def from_request(cls, job_id: str, params: dict) -> Job:
        """A new job of a validated request (its fields by their job names; the model it must
        run on, None: any backend)."""
        values = {field.name: _of_kind(field.kind, params.get(field.name)) for field in taken_by(JOB)}
        return cls(id=job_id, **{**values, "model": values["model"] or None,
                                 "keep_previews": bool(values["keep_previews"])})

    @classmethod
    def from_hash(cls, raw: dict) -> Job:
        """The job its Redis hash holds: each stored field decoded by its type; absent or "" is
        the field's default."""
        h = raw if isinstance(next(iter(raw), ""), str) else {k.decode(): v.decode() for k, v in raw.items()}
        values = {}
        for stored in _STORED:
            text = h.get(stored.name)
            if text not in (None, ""):
                values[stored.name] = _decode(stored.type, text)
        return cls(**values)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def kind(self) -> str:
        """UPSCALE_KIND for a job that enlarges a library picture, else GENERATE_KIND: an upscale is
        told apart by the picture it enlarges, so every other part of a job (its claim, progress,
        cancel, attempts) stays one code path."""
        return GENERATE_KIND if self.upscale_of is None else UPSCALE_KIND

    @property
    def attempt_id(self) -> str:
        """The backend's name for this attempt at the job: a late /cancel from a worker that has
        lost the job cannot stop the attempt that took it over."""
        return f"{self.id}.{self.claim}"

    def params(self) -> dict:
        """The generation request as the backend protocol names it."""
        params = {"job_id": self.attempt_id}
        for sent in taken_by(GENERATE):
            value = getattr(self, sent.name)
            # The sampling values go as null for the backend's own; a fresh job's body has no start.
            if value is not None or sent in request_fields.SAMPLING or (sent is request_fields.EXTEND
                                                                        and self.keep_rows is not None):
                params[sent.name] = value
        if self.init_codes is not None:
            # Codes are the start; a picture beside them is only for the scheduler's stitching.
            params["init_codes"] = unpack_codes(self.init_codes)
            params.pop(request_fields.INIT_PICTURE.name, None)
        if self.grid is not None:
            params[request_fields.GRID.name] = json.loads(self.grid)
        return params

    def to_status(self) -> dict:
        """The public view: /queue_status elements and the per-job status of the API.

        `position` is 0 for a running job, 1 for the next queued one, and so on; None once
        finished. `eta_secs` is the estimated seconds until the job is done (None when no
        speed has been measured yet or no worker is alive).
        """
        return {
            "queue_id": self.id,
            "kind": self.kind,
            "text": self.text,
            "num_images": self.num_images,
            "seed": self.seed,
            **{sampling.name: getattr(self, sampling.name) for sampling in request_fields.SAMPLING},
            "status": self.status,
            "position": self.position,
            "progress": {"tokens_done": self.tokens_done, "total_tokens": self.total_tokens},
            "preview_tokens": self.preview_tokens,
            "keep_previews": self.keep_previews,
            "eta_secs": None if self.eta_secs is None else round(self.eta_secs, 1),
            "unserved": self.unserved,
            "stalled_secs": None if self.stalled_secs is None else round(self.stalled_secs, 1),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "backend": self.backend,
            "model": self.model,
            "images": self.images,
            "codes": self.codes,
            **{name: getattr(self, name) for name in PUBLIC_START_FIELDS},
            **{name: getattr(self, name) for name in BEST_OF_FIELDS},
            **{name: getattr(self, name) for name in UPSCALE_FIELDS},
            "grid": None if self.grid is None else json.loads(self.grid),
        }


def upscale_request(picture: str, text: str, model: str | None = None) -> dict:
    """The request of an upscale job of a library picture (a validated POST /upscale, or a picture
    of a job that asked for `upscale`): one picture, under its prompt."""
    return {"text": text, "num_images": 1, "seed": 0, request_fields.UPSCALE_OF.name: picture,
            request_fields.UPSCALE_MODEL.name: model}


def queued_job(job: Job) -> dict:
    """A new job (Job.from_request) as the queue's scripts queue it (scripts._QUEUE_JOB): its id,
    the model it must run on ("": any backend) and its hash's fields, flat."""
    return {"id": job.id, "model": job.model or "",
            "fields": [item for pair in encode_job_fields(job).items() for item in pair]}


def encode_job_fields(job: Job) -> dict[str, str]:
    """The Redis hash of a new job: its request and where its run starts; None is left out."""
    names = ("id", *(field.name for field in REQUEST_FIELDS), "status", "attempts", "tokens_done", "total_tokens")
    return {name: _encode(getattr(job, name)) for name in names if getattr(job, name) is not None}


_STORED = [stored for stored in dataclasses.fields(Job) if stored.metadata.get("stored", True)]


def _of_kind(kind: type, value):
    """A request's value as its field's kind (a number may come as another kind of number)."""
    return kind(value) if value is not None and kind in (int, float) else value


def _encode(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def _decode(annotation: str, text: str):
    """A hash value as the type Job's field is annotated with ("int | None", "list[str]", ...)."""
    kind = annotation.removesuffix(" | None")
    if kind == "bool":
        return text == "1"
    if kind.startswith("list["):
        return json.loads(text)
    return {"int": int, "float": float, "str": str}[kind](text)
