"""The routes: Part 1 of API.md exactly as the original playground, Part 2 additions, pages.

Handlers take a `Request` and return a `Response`; they raise `ValidationError` for bad input
(the server answers 400 naming the field) and let Redis errors through (the server answers 503).
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs

import redis

from frontend.config import Config
from frontend.files import FileCache, resolve_inside, safe_relative_parts
from frontend.library_view import LibraryView
from frontend.openapi import OpenApiDocument
from frontend.responses import Response, error_response, json_response
from frontend.routing import Request, Router
from frontend.validation import (
    check_grid,
    ValidationError,
    check_number,
    parse_form_data,
    parse_json_object,
    route_model,
    route_upscaler,
    validate_prompt,
    validate_start,
    validate_upscale,
)
from playground import grid as grids
from playground.library import LibraryStore
from playground.limits import IMAGE_CODES, IMAGE_TOKENS, MAX_TEXT_LENGTH, public_limits
from playground.protocol import BackendStatus
from playground.queue import DONE, RUNNING, UUID_PATTERN, JobNotFound, JobQueue, QueueFull
from playground.queue.job import GENERATE_KIND, UPSCALE_KIND
from playground.request_fields import TEXT, TOP_K, UPSCALE_AFTER, UPSCALE_OF, Bounds

PAGES = {"/": "index.html", "/index.html": "index.html",
         "/advanced.html": "advanced.html", "/library.html": "library.html"}
IMAGE_URL = re.compile(rf"/?library/({UUID_PATTERN})/({UUID_PATTERN})\.png")
# Library PNGs are written once under a fresh uuid and never change.
IMMUTABLE = "public, max-age=31536000, immutable"
MAX_QUERY_FIELDS = 20
MAX_IMAGE_INDEX = 255
SERVED_MODELS_RECHECK_SECS = 5.0


def backend_report(worker: dict) -> dict:
    """One backend as its worker last saw it; while it loads, also what it is doing; once ready,
    whether it ranks Best of N candidates with CLIP."""
    alive = worker["alive"]
    status = worker["backend_status"] if alive else BackendStatus.UNKNOWN
    loading = (worker.get("loading") or {}) if status == BackendStatus.LOADING else {}
    return {"url": worker["backend_url"], "status": status, "model": worker["model"],
            "error": worker["backend_error"], "worker": worker["id"],
            "stage": loading.get("stage"), "files": loading.get("files") or [],
            "ranks": worker.get("ranks") if alive else None}


def backend_reports(workers: list[dict]) -> list[dict]:
    """One report per backend, from the worker of its first slot, with how many slots it has
    workers for."""
    slots: dict[str, list[dict]] = {}
    for worker in workers:
        slots.setdefault(worker["backend_url"], []).append(worker)
    return [{**backend_report(min(serving, key=lambda w: len(w["id"]))), "slots": len(serving)}
            for serving in slots.values()]


class Api:
    def __init__(self, config: Config, queue: JobQueue, store: LibraryStore,
                 openapi: OpenApiDocument | None = None):
        self.config = config
        self.queue = queue
        self.store = store
        self.library = LibraryView(store)
        self.openapi = openapi or OpenApiDocument.load()
        self.files = FileCache()
        self.router = self._routes()
        self._served: dict[str, int | None] = {}
        self._upscalers: set[str] = set()  # the upscalers the live backends serve
        self._any_ready = False  # whether a live backend is ready (and has said its upscaler)
        self._grid_cells_max: dict[str, int] = {}  # each model's largest grid its ready backends make
        # Start pictures are decoded here, a few at a time: the memory of decodes arriving
        # together is bounded, and stays with these threads rather than every connection's.
        self._decoder = ThreadPoolExecutor(config.decodes_at_once, thread_name_prefix="picture-decode")
        self._served_checked = float("-inf")

    @classmethod
    def from_config(cls, config: Config) -> "Api":
        # Bounded waits: a dead Redis makes requests fail fast with 503 rather than hang.
        client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=2, socket_timeout=5,
                                      health_check_interval=30)
        return cls(config, JobQueue(client, max_queued=config.max_queued_jobs, prefix=config.redis_prefix),
                   LibraryStore(config.library_dir))

    def close(self) -> None:
        self.queue.redis.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def _routes(self) -> Router:
        uuid = {"queue_id": UUID_PATTERN, "job_id": UUID_PATTERN, "image_id": UUID_PATTERN}
        router = Router()
        # Part 1: the original playground's API.
        router.add("POST", "/prompt", self.submit_prompt, changes_state=True)
        router.add("GET", "/queue_status", self.queue_status)
        router.add("GET", "/getlibrary", self.get_library)
        router.add("GET", "/library/{queue_id}/{image_id}.png", self.library_image, params=uuid)
        router.add("POST", "/deleteimage", self.delete_image_by_path, changes_state=True)
        for page in PAGES:
            router.add("GET", page, self.page)
        # Part 2: additions.
        router.add("DELETE", "/library/{queue_id}/{image_id}.png", self.delete_image, changes_state=True,
                   params=uuid)
        router.add("GET", "/library/{queue_id}/{image_id}.webp", self.library_reveal, params=uuid)
        router.add("POST", "/upscale", self.submit_upscale, changes_state=True)
        router.add("GET", "/jobs/{job_id}", self.job_status, params=uuid)
        router.add("GET", "/jobs/{job_id}/preview", self.job_preview, params=uuid)
        router.add("POST", "/jobs/{job_id}/cancel", self.cancel_job, changes_state=True, params=uuid)
        router.add("DELETE", "/jobs/{job_id}", self.delete_job, changes_state=True, params=uuid)
        router.add("GET", "/health", self.health)
        router.add("GET", "/limits", self.limits)
        router.add("GET", "/openapi.yaml", lambda request: Response(200, self.openapi.yaml_bytes, "application/yaml"))
        router.add("GET", "/openapi.json", lambda request: Response(200, self.openapi.json_bytes, "application/json"))
        return router

    # -- Part 1 ----------------------------------------------------------------------------

    def submit_prompt(self, request: Request) -> Response:
        if request.body is None:
            return error_response(411, "POST /prompt needs a JSON body and its Content-Length")
        content_type = request.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):  # e.g. curl -F init_image_data=@photo.jpg
            body = parse_form_data(request.body, content_type)
        else:
            body = parse_json_object(request.body)
        served = self._served_models()
        params = validate_prompt(body)
        params["model"] = route_model(params["model"], served, self.config.default_model)
        image_codes = served.get(params["model"]) or IMAGE_CODES  # the chosen model's codebook
        if params["top_k"] is not None:
            check_number(TOP_K, params["top_k"], Bounds(1, image_codes), note=f" for model {params['model']}")
        if params[UPSCALE_AFTER.name] is not None:
            route_upscaler(None, self._upscalers, self._any_ready, field=UPSCALE_AFTER.public_name)
        if params["grid"] is not None:
            check_grid(grids.parse_grid(params["grid"]), image_codes, params["model"],
                       self._grid_cells_max.get(params["model"]) if self._any_ready else None)
        params.update(validate_start(body, self._library_png, self.config.max_upload_bytes, image_codes,
                                     decode=lambda work: self._decoder.submit(work).result()))
        return self._queued(params)

    def _queued(self, params: dict) -> Response:
        try:
            job = self.queue.submit(params)
        except QueueFull as full:
            return error_response(429, str(full), {"Retry-After": "30"})
        return json_response({"queue_id": job.id}, headers={"Location": f"/jobs/{job.id}"})

    def _served_models(self) -> dict[str, int | None]:
        """The models the live backends serve, each with its codebook (the top-k limit; None
        until reported), looked up at most every few seconds. Without Redis the last known
        stand, so a bad body still gets its 400 (and a good one the submit's 503)."""
        now = time.monotonic()
        if now - self._served_checked > SERVED_MODELS_RECHECK_SECS:
            try:
                workers = self.queue.health()["workers"]
            except redis.RedisError:
                return self._served
            served: dict[str, int | None] = {}
            for worker in workers:
                if worker["alive"] and worker["model"]:
                    served[worker["model"]] = max(worker["image_codes"] or 0, served.get(worker["model"]) or 0) or None
            ready = [worker for worker in workers if worker["alive"] and worker["backend_status"] == BackendStatus.READY]
            self._upscalers = {worker["upscale_model"] for worker in ready if worker.get("upscale_model")}
            self._grid_cells_max = {}  # each model's: the largest of its ready backends' (0: none makes grids)
            for worker in ready:
                if worker["model"]:
                    self._grid_cells_max[worker["model"]] = max(worker.get("grid_cells_max") or 0,
                                                                self._grid_cells_max.get(worker["model"], 0))
            self._any_ready = bool(ready)
            self._served, self._served_checked = served, now
        return self._served

    def submit_upscale(self, request: Request) -> Response:
        """An upscale of a library picture, queued as a job like any other (docs/upscaler.md)."""
        body = parse_json_object(request.body or b"")
        with self.queue.upscaling():
            params = validate_upscale(body, self.library.entry, self._library_png, self._upscaled)
            self._served_models()
            params["upscale_model"] = route_upscaler(params["upscale_model"], self._upscalers, self._any_ready)
            return self._queued(params)

    def _upscaled(self, picture: str) -> str | None:
        """A picture's upscale: done (its picture in the library), or queued or running (its job),
        so that a second click queues no second upscale of it."""
        made = self.library.upscale_of(picture)
        if made is not None:
            return made
        waiting = next((job for job in self.queue.unfinished() if job.upscale_of == picture), None)
        return None if waiting is None else f"job {waiting.id} ({waiting.status})"

    def queue_status(self, request: Request) -> Response:
        return json_response([job.to_status() for job in self.queue.unfinished()])

    def get_library(self, request: Request) -> Response:
        fields = _query_fields(request.query)
        if not fields.keys() & {"offset", "limit", "q", "sort"}:
            page = self.library.whole(gzipped=_accepts_gzip(request.headers.get("Accept-Encoding", "")))
        else:
            offset = _int_field(fields, "offset", 0, 10**9) or 0
            limit = _int_field(fields, "limit", 1, self.config.max_page_size)
            query = fields.get("q", "")
            if len(query) > MAX_TEXT_LENGTH:
                raise ValidationError("q", f"is longer than {MAX_TEXT_LENGTH} characters")
            sort = fields.get("sort", "") or "newest"
            if sort not in ("newest", "score"):
                raise ValidationError("sort", f"must be newest or score, not {sort[:40]!r}")
            page = self.library.page(offset, limit, query, sort)
        headers = {"X-Total-Count": str(page.total), "Vary": "Accept-Encoding"}
        if page.gzipped:
            headers["Content-Encoding"] = "gzip"
        return Response(200, page.body, headers=headers)

    def library_image(self, request: Request) -> Response:
        path = self._library_file(request.params["queue_id"], request.params["image_id"])
        content = self.files.read(path) if path else None
        if content is None:
            return error_response(404, "no such image")
        return Response(200, content.body, content.content_type, {"Cache-Control": IMMUTABLE})

    def library_reveal(self, request: Request) -> Response:
        """An image's reveal (its previews, animated), kept when the job asked for it."""
        path = resolve_inside(self.config.library_dir, [request.params["queue_id"], f"{request.params['image_id']}.webp"])
        content = self.files.read(path) if path else None
        if content is None:
            return error_response(404, "no such reveal")
        return Response(200, content.body, content.content_type,
                        {"Cache-Control": IMMUTABLE, "Content-Disposition": "attachment; filename=reveal.webp"})

    def delete_image_by_path(self, request: Request) -> Response:
        """The original UI's double-click delete: {"path": "library/<queue_id>/<image>.png"}."""
        body = parse_json_object(request.body or b"")
        path = body.get("path")
        found = IMAGE_URL.fullmatch(path) if isinstance(path, str) else None
        if not found:
            raise ValidationError("path", "must look like library/<queue_id>/<image-uuid>.png")
        return self._delete_image(found.group(1), found.group(2))

    def page(self, request: Request) -> Response:
        return self.static_file("/" + PAGES[request.path])

    # -- Part 2 ----------------------------------------------------------------------------

    def delete_image(self, request: Request) -> Response:
        return self._delete_image(request.params["queue_id"], request.params["image_id"])

    def job_status(self, request: Request) -> Response:
        job_id = request.params["job_id"]
        job = self.queue.get(job_id)
        # Looked at before the entry: a publish lists the entry before its staging folder goes.
        publishing = job is not None and job.status == DONE and self.library.store.publishing(job_id, str(job.claim))
        entry = self.library.entry(job_id) if job is None or job.status == DONE else None
        if job is None:
            if entry is None:
                return error_response(404, f"no job {job_id}")
            # Finished long ago: Redis forgot it, the library remembers.
            return json_response(_status_from_entry(entry))
        status = job.to_status()
        if entry is not None:  # done, and still in the library
            status["result"] = entry
        elif publishing:
            # Committed in the queue, its pictures not yet in the library: never "done" without
            # them, so it shows as running, all its tokens drawn, until they are there.
            status.update(status=RUNNING, finished_at=None, images=[], codes=[])
        return json_response(status)

    def job_preview(self, request: Request) -> Response:
        """The newest live preview of one image of a running job (a small JPEG), or 404."""
        image = _int_field(_query_fields(request.query), "image", 0, MAX_IMAGE_INDEX) or 0
        found = self.queue.preview(request.params["job_id"], image)
        if found is None:
            return error_response(404, "no preview of this job (not running, or none yet)")
        tokens, picture = found
        # It changes as the job runs: never cached; the tokens say which one this is.
        return Response(200, picture, "image/jpeg", {"Cache-Control": "no-store", "X-Preview-Tokens": str(tokens)})

    def cancel_job(self, request: Request) -> Response:
        job_id = request.params["job_id"]
        before = self.queue.record(job_id)
        if before is None:
            if self.library.entry(job_id) is not None:
                return error_response(409, f"the job is already {DONE}", status=DONE)
            return error_response(404, f"no job {job_id}")
        if before.finished:
            return error_response(409, f"the job is already {before.status}", status=before.status)
        try:
            job = self.queue.cancel(job_id)
        except JobNotFound:
            return error_response(404, f"no job {job_id}")
        return json_response(job.to_status())

    def delete_job(self, request: Request) -> Response:
        job_id = request.params["job_id"]
        job = self.queue.record(job_id)
        if job is not None and not job.finished:
            return error_response(409, f"the job is {job.status}; cancel it first", status=job.status)
        # The store never follows a symlinked job folder: it only drops the index entry then.
        deleted = self.store.delete_job(job_id)
        if not deleted and job is None:
            return error_response(404, f"no job {job_id}")
        return json_response({"queue_id": job_id, "deleted": deleted})

    def limits(self, request: Request) -> Response:
        return json_response(public_limits(self._served_models(), self.config.max_upload_bytes))

    def health(self, request: Request) -> Response:
        report = {"frontend": {"status": "ok"}}
        try:
            self.queue.redis.ping()
            scheduler = self.queue.health()
        except redis.RedisError as exc:
            report["redis"] = {"status": "error", "error": f"{exc.__class__.__name__}: {exc}"}
            report["scheduler"] = {"status": "unknown", "workers": []}
            report["backends"] = []
            return json_response({"status": "error", **report}, 503)
        report["redis"] = {"status": "ok"}
        workers = scheduler["workers"]
        report["scheduler"] = {"status": "ok" if scheduler["alive_workers"] else "error",
                               "alive_workers": scheduler["alive_workers"],
                               "queued": scheduler["queued"], "workers": workers}
        # What a job may name as its `model`, the default first.
        models = scheduler["models"]
        report["models"] = sorted(models, key=lambda model: model != self.config.default_model)
        report["backends"] = backend_reports(workers)
        healthy = bool(workers) and all(w["alive"] and w["backend_status"] == BackendStatus.READY for w in workers)
        return json_response({"status": "ok" if healthy else "degraded", **report}, 200 if healthy else 503)

    # -- files -----------------------------------------------------------------------------

    def static_file(self, url_path: str) -> Response:
        """A file of the static folder (the UI's pages, scripts, styles), or 404."""
        parts = safe_relative_parts(url_path)
        path = resolve_inside(self.config.static_dir, parts) if parts else None
        content = self.files.read(path) if path else None
        if content is None:
            return error_response(404, "not found")
        # Revalidated on every load, so a changed UI is picked up at once.
        return Response(200, content.body, content.content_type, {"Cache-Control": "no-cache"})

    def _library_png(self, queue_id: str, image_id: str) -> bytes | None:
        path = self._library_file(queue_id, image_id)
        content = self.files.read(path) if path else None
        return None if content is None else content.body

    def _library_file(self, queue_id: str, image_id: str) -> Path | None:
        """The PNG's path if it is a regular file really inside the library (no symlink out)."""
        return resolve_inside(self.config.library_dir, [queue_id, f"{image_id}.png"])

    def _delete_image(self, queue_id: str, image_id: str) -> Response:
        url = f"library/{queue_id}/{image_id}.png"
        # The store refuses a symlinked file; a symlinked job folder is refused here.
        if self._library_file(queue_id, image_id) is None or not self.store.delete_image(url):
            return error_response(404, f"no image {url}")
        return json_response({"success": True, "deleted": url})


def _query_fields(query: str) -> dict[str, str]:
    """The query's fields, the last value of each; bad encoding is replaced, not fatal."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS, errors="replace")
    except ValueError:
        raise ValidationError(None, f"at most {MAX_QUERY_FIELDS} query parameters are accepted") from None
    return {name: values[-1] for name, values in parsed.items()}


def _int_field(fields: dict[str, str], name: str, minimum: int, maximum: int) -> int | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    if not (len(raw) <= 12 and raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= maximum:
        raise ValidationError(name, f"must be an integer from {minimum} to {maximum}")
    return int(raw)


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.lower().split(","):
        name, _, parameters = item.partition(";")
        if name.strip() == "gzip":
            return parameters.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _status_from_entry(entry: dict) -> dict:
    """The per-job status of a job known only from its library entry."""
    images = entry.get("generated_images") or []
    return {
        "queue_id": entry.get("queue_id"),
        "kind": UPSCALE_KIND if entry.get(UPSCALE_OF.library_name) else GENERATE_KIND,
        "text": entry.get(TEXT.library_name),
        "num_images": entry.get("num_images", len(images)),
        "seed": entry.get("seed"),
        "status": DONE,
        "position": None,
        "progress": {"tokens_done": IMAGE_TOKENS, "total_tokens": IMAGE_TOKENS},
        "eta_secs": None,
        "unserved": None,
        "stalled_secs": None,
        "error": None,
        "images": images,
        "result": entry,
    }
