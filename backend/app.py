"""The backend service: /health, /generate (streamed NDJSON progress, then the PNGs) and /cancel.

It holds one model and renders one prompt at a time, or up to BACKEND_SLOTS decoded together;
the scheduler decides what comes next.
Creating the app imports no JAX: the model loads in the background (`ModelHolder`), so /health
answers from the first second.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Response, jsonify, request

from backend.config import Config
from backend.device import check_device
from backend.engine.progress import LoadProgress
from backend.generate_request import BadRequest, parse_generate_body
from backend.generation_run import GenerationRun, StreamedRun
from backend.model_holder import ModelHolder
from backend.upscale_run import UpscaleRun
from playground import grid as grids
from playground import pictures
from playground.backend_registry import Announcer, BackendRegistry
from playground.limits import MAX_UPSCALE_SIDE, random_seed
from playground.protocol import (
    STOPPING,
    BackendStatus,
    Stage,
    cancel_answer,
    error_report,
    loading_report,
    ready_report,
)
from playground.protocol.upscale import parse_upscale_body
from playground.writable import ensure_writable


def default_loader(config: Config) -> Callable[[LoadProgress], Any]:
    def load(progress: LoadProgress) -> Any:
        # Both checks fail at once with one clear line (on /health and in the log), before a
        # download starts: a cache folder the backend cannot write, a GPU that is not there.
        ensure_writable(config.cache_dir, "MODEL_CACHE_DIR", {"MODEL_CACHE_HOST_PATH": config.cache_host_path})
        devices = check_device(config.device, os.environ.get("JAX_PLATFORMS", ""))  # imports JAX
        from backend.engine import load_engine  # JAX is imported here, in the loading thread

        engine = load_engine(config.model, cache_dir=config.cache_dir, devices=devices, progress=progress,
                             endpoint=config.hub_endpoint)
        engine.preview_every = config.preview_every_tokens
        progress.set_stage(Stage.COMPILING)
        engine.warm_up(config.warm_up_batch_sizes)
        engine.rank_with(load_ranker(config, engine, progress))
        engine.upscaler = load_upscale_model(config, progress)
        return engine

    return load


def load_upscale_model(config: Config, progress: LoadProgress) -> Any:
    """The upscaler of upscale jobs (UPSCALE_MODEL); None for none. Each picture size compiles
    on its first use (a 256-pixel picture: one tile)."""
    if config.upscale_model is None:
        return None
    from backend.engine import esrgan
    from backend.engine.upscaler_choice import resolve_upscaler
    from backend.engine.upscaler import load_upscaler

    path, published = resolve_upscaler(config.upscale_model, config.cache_dir, progress, config.hub_endpoint)
    progress.set_stage(Stage.READING)
    return load_upscaler(path, expected=esrgan.PUBLISHED[published] if published else None)


def load_ranker(config: Config, engine: Any, progress: LoadProgress) -> Any:
    """The CLIP model that ranks candidates (CLIP_MODEL), on the engine's first device in
    half precision on an accelerator, float32 on a CPU; None for none."""
    from backend.engine.clip import load_clip
    from backend.engine.models import default_clip, resolve_clip

    found = resolve_clip(config.clip_model or default_clip(config.model), config.cache_dir, progress,
                         config.hub_endpoint)
    if found is None:
        return None
    name, folder = found
    progress.set_stage(Stage.READING)
    device = engine.devices[0]
    clip = load_clip(folder, name, dtype="float32" if device.platform == "cpu" else "float16", device=device)
    progress.set_stage(Stage.COMPILING)
    clip.warm_up()
    return clip


def ndjson(run: StreamedRun):
    events = run.events()
    try:
        for event in events:
            yield json.dumps(event, separators=(",", ":")) + "\n"
    finally:
        events.close()  # the WSGI server closes us when the client goes away: pass it on


def error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


class BackendApi:
    """The routes over one model: up to `config.slots` generations at once (decoded together
    when more than one), the others answer while they run."""

    def __init__(self, config: Config, holder: ModelHolder):
        self.config = config
        self.holder = holder
        self._runs_lock = threading.Lock()
        self._runs: dict[str, StreamedRun] = {}  # job id -> its run (a generation, an upscale), one per slot taken
        self._upscaling = threading.Lock()  # the upscaler runs one picture at a time
        self.announcer: Announcer | None = None  # set when the backend announces itself in Redis
        self.stopping = False

    def health(self) -> Response:
        response = jsonify(self.report())
        if self.holder.status != BackendStatus.READY:
            response.status_code = 503
        return response

    def report(self) -> dict:
        """What /health answers (its status and model are also what the backend announces in Redis)."""
        holder = self.holder
        status = holder.status
        if status == BackendStatus.LOADING:
            # The stage and each downloaded file's bytes, for the UI and the log.
            body = loading_report(holder.model_name, holder.progress.snapshot())
        elif status == BackendStatus.ERROR:
            body = error_report(holder.model_name, holder.error)
        else:
            runs = list(self._runs)
            body = ready_report(
                holder.model_name,
                devices=[str(device) for device in getattr(holder.engine, "devices", [])],
                slots=self.config.slots, busy=len(runs) >= self.config.slots,
                job_id=runs[0] if len(runs) == 1 else None, load_secs=holder.load_secs,
                image_tokens=holder.engine.total_tokens, image_codes=holder.engine.num_codes,
                grid_cells_max=holder.grid_cells_max,
                ranks=self.clip is not None, clip_model=self.clip.name if self.clip is not None else None,
                upscale_model=self.upscaler.name if self.upscaler is not None else None)
        if self.announcer is not None:
            body["announce"] = self.announcer.state()
        return body

    @property
    def clip(self) -> Any:
        return getattr(self.holder.engine, "clip", None)

    @property
    def upscaler(self) -> Any:
        return getattr(self.holder.engine, "upscaler", None)

    def _unready(self) -> Response | None:
        if self.stopping:  # 503: the scheduler tries again elsewhere, no attempt counted
            return error(503, STOPPING)
        if self.holder.status != BackendStatus.READY:
            return error(503, f"model {self.holder.model_name} is {self.holder.status}: "
                              f"{self.holder.error or 'try again soon'}")
        return None

    def generate(self) -> Response:
        refused = self._unready()
        if refused is not None:
            return refused
        try:
            body = parse_generate_body(request.get_json(silent=True))
        except BadRequest as exc:
            return error(400, str(exc))
        if body.grid is not None and body.grid.size > self.holder.grid_cells_max:
            return error(400, f"grid has {body.grid.size} cells; this backend makes at most "
                              f"{self.holder.grid_cells_max} together")
        return self._stream(body.job_id, lambda: GenerationRun(
            self.holder.engine, self.holder.generate, body, body.seed or random_seed(),
            self.config.progress_interval_secs, self._finished, chunk_delay_secs=self.config.test_chunk_delay_secs,
            generate_group=self.holder.generate_group, together=grids.cells_together(self.holder.slots)))

    def upscale(self) -> Response:
        """An upscale job (playground/protocol/upscale.py): one picture, enlarged by this
        backend's upscaler, in a slot as a generation."""
        refused = self._unready()
        if refused is not None:
            return refused
        upscaler = self.upscaler
        try:
            body = parse_upscale_body(request.get_json(silent=True))
        except ValueError as exc:
            return error(400, str(exc))
        if upscaler is None:
            return error(400, "model: this backend upscales nothing (its UPSCALE_MODEL is none)")
        if body.model is not None and body.model != upscaler.name:
            return error(400, f"model: this backend upscales with {upscaler.name}, not {body.model[:100]!r}")
        try:
            picture = pictures.open_picture(body.picture)
        except ValueError as exc:  # its words follow the field's name: "is not a PNG, …"
            return error(400, f"picture {exc}")
        if max(picture.size) > MAX_UPSCALE_SIDE:
            picture.close()
            return error(400, f"picture is {picture.size[0]}×{picture.size[1]}; at most {MAX_UPSCALE_SIDE} "
                              f"pixels on a side are upscaled")
        return self._stream(body.job_id, lambda: UpscaleRun(upscaler, self._upscaling, body.job_id, body.source,
                                                            picture, self.config.progress_interval_secs,
                                                            self._finished, self.config.test_tile_delay_secs))

    def _stream(self, job_id: str, make_run: Callable[[], StreamedRun]) -> Response:
        """Start the run in a free slot and stream its events; 409 when none is free."""
        with self._runs_lock:
            if len(self._runs) >= self.config.slots:
                return error(409, "busy with another job" if self.config.slots == 1 else "every slot is busy")
            if job_id in self._runs:
                return error(409, f"job {job_id} is already running")
            # A local name: a run that fails at once may have finished (and left the runs)
            # before its stream is built.
            run = make_run()
            self._runs[job_id] = run
        try:
            run.start()
        except BaseException:
            self._finished(run)  # else its slot would stay taken for ever
            raise
        return Response(ndjson(run), mimetype="application/x-ndjson", headers={"Cache-Control": "no-store"})

    def hand_back(self) -> None:
        """Stopping on purpose (SIGTERM): take no new job, hand the running one back at once
        (it ends with `stopped`, so the scheduler counts no attempt), and leave Redis."""
        self.stopping = True
        for run in list(self._runs.values()):
            run.hand_back()
        if self.announcer is not None:
            self.announcer.stop.set()  # withdraws the announcement: the scheduler lets go at once

    def _finished(self, run: StreamedRun) -> None:
        with self._runs_lock:
            if self._runs.get(run.job_id) is run:
                del self._runs[run.job_id]

    def cancel(self) -> Response:
        body = request.get_json(silent=True)
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if not isinstance(job_id, str):
            return error(400, "job_id must be a string")
        run = self._runs.get(job_id)
        if run is None:
            return jsonify(cancel_answer(False))
        run.cancel.set()
        return jsonify(cancel_answer(True))


def create_app(config: Config, loader: Callable[[LoadProgress], Any] | None = None) -> Flask:
    app = Flask(__name__)
    holder = ModelHolder(config.model, loader or default_loader(config), config.slots).start()
    api = BackendApi(config, holder)
    app.extensions["model_holder"] = holder
    app.extensions["backend_api"] = api
    if config.redis_url and config.advertise_url:
        registry = BackendRegistry(redis.Redis.from_url(config.redis_url, socket_timeout=5), config.redis_prefix)
        api.announcer = Announcer(registry, config.advertise_url, api.report).start()
    app.add_url_rule("/health", view_func=api.health, methods=["GET"])
    app.add_url_rule("/generate", view_func=api.generate, methods=["POST"])
    app.add_url_rule("/upscale", view_func=api.upscale, methods=["POST"])
    app.add_url_rule("/cancel", view_func=api.cancel, methods=["POST"])
    app.register_error_handler(404, lambda _exc: error(404, "not found"))
    app.register_error_handler(405, lambda _exc: error(405, "method not allowed"))
    return app
