"""One job: the request's fields, everything known about its run, and its Redis hash."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from playground.limits import IMAGE_TOKENS
from playground.pictures import unpack_codes
from playground.queue.states import FINISHED, QUEUED

SAMPLING_PARAMS = ("top_k", "top_p", "temperature", "condition_scale")
BEST_OF_FIELDS = ("candidates", "rank", "ranked", "candidate_indices", "clip_scores")
# A continuation's fields, stored only when set: "" in the hash is None.
PUBLIC_START_FIELDS = ("init_image", "init_source", "keep_rows", "extend")
START_FIELDS = ("init_image", "init_source", "init_codes", "init_picture", "keep_rows", "extend")
# Job ids are lowercase uuids (they name the library's folders), and so are the library's image names.
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _float_or_none(raw: str | None) -> float | None:
    return float(raw) if raw not in (None, "") else None


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw not in (None, "") else None


def _bool_or_none(raw: str | None) -> bool | None:
    return None if raw in (None, "") else raw == "1"


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
    position: int | None = None
    eta_secs: float | None = None
    unserved: str | None = None  # queued with no live backend that can run it: why (eta.unserved_reason)
    stalled_secs: float | None = None  # running, and nothing heard from its backend for this long (eta)

    @classmethod
    def from_hash(cls, raw: dict) -> Job:
        h = raw if isinstance(next(iter(raw), ""), str) else {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=h["id"],
            text=h["text"],
            num_images=int(h["num_images"]),
            seed=int(h["seed"]),
            top_k=_int_or_none(h.get("top_k")),
            top_p=_float_or_none(h.get("top_p")),
            temperature=_float_or_none(h.get("temperature")),
            condition_scale=_float_or_none(h.get("condition_scale")),
            init_image=h.get("init_image") or None,
            init_source=h.get("init_source") or None,
            init_codes=h.get("init_codes") or None,
            init_picture=h.get("init_picture") or None,
            keep_rows=_int_or_none(h.get("keep_rows")),
            extend=h.get("extend") or None,
            candidates=_int_or_none(h.get("candidates")),
            rank=_bool_or_none(h.get("rank")),
            ranked=_bool_or_none(h.get("ranked")),
            candidate_indices=json.loads(h["candidate_indices"]) if h.get("candidate_indices") else None,
            clip_scores=json.loads(h["clip_scores"]) if h.get("clip_scores") else None,
            status=h.get("status", QUEUED),
            created_at=float(h.get("created_at") or 0),
            started_at=_float_or_none(h.get("started_at")),
            progress_at=_float_or_none(h.get("progress_at")),
            finished_at=_float_or_none(h.get("finished_at")),
            attempts=int(h.get("attempts") or 0),
            claim=int(h.get("claim") or 0),
            error=h.get("error") or None,
            last_error=h.get("last_error") or None,
            worker=h.get("worker") or None,
            backend=h.get("backend") or None,
            model=h.get("model") or None,
            tokens_done=int(h.get("tokens_done") or 0),
            total_tokens=int(h.get("total_tokens") or IMAGE_TOKENS),
            cancel_requested=h.get("cancel_requested") == "1",
            preview_tokens=_int_or_none(h.get("preview_tokens")),
            keep_previews=h.get("keep_previews") == "1",
            images=json.loads(h.get("images") or "[]"),
            codes=json.loads(h.get("codes") or "[]"),
            process_time_secs=_float_or_none(h.get("process_time_secs")),
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def attempt_id(self) -> str:
        """The backend's name for this attempt at the job: a late /cancel from a worker that has
        lost the job cannot stop the attempt that took it over."""
        return f"{self.id}.{self.claim}"

    def params(self) -> dict:
        """The generation request as the backend protocol names it."""
        params = {"job_id": self.attempt_id, "text": self.text, "num_images": self.num_images, "seed": self.seed,
                  **{name: getattr(self, name) for name in SAMPLING_PARAMS}}
        if self.candidates is not None:
            params["candidates"] = self.candidates
        if self.rank is not None:
            params["rank"] = self.rank
        if self.keep_rows is not None:  # a fresh job's body stays as it always was
            params.update(keep_rows=self.keep_rows, extend=self.extend)
            if self.init_codes is not None:
                params["init_codes"] = unpack_codes(self.init_codes)
            else:
                params["init_picture"] = self.init_picture
        return params

    def to_status(self) -> dict:
        """The public view: /queue_status elements and the per-job status of the API.

        `position` is 0 for a running job, 1 for the next queued one, and so on; None once
        finished. `eta_secs` is the estimated seconds until the job is done (None when no
        speed has been measured yet or no worker is alive).
        """
        return {
            "queue_id": self.id,
            "text": self.text,
            "num_images": self.num_images,
            "seed": self.seed,
            **{name: getattr(self, name) for name in SAMPLING_PARAMS},
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
        }


def encode_job_fields(job: Job) -> dict[str, str]:
    """The Redis hash of a new job (only the fields set at submission)."""
    return {
        "id": job.id,
        "text": job.text,
        "num_images": str(job.num_images),
        "seed": str(job.seed),
        **{name: "" if getattr(job, name) is None else repr(getattr(job, name)) for name in SAMPLING_PARAMS},
        "status": job.status,
        "attempts": "0",
        "tokens_done": "0",
        "total_tokens": str(IMAGE_TOKENS),
        **{name: str(getattr(job, name)) for name in START_FIELDS if getattr(job, name) is not None},
        **({"keep_previews": "1"} if job.keep_previews else {}),
        **({"candidates": str(job.candidates)} if job.candidates is not None else {}),
        **({"rank": "1" if job.rank else "0"} if job.rank is not None else {}),
    }
