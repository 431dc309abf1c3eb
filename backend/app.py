"""The backend service: /health, /generate (streamed NDJSON progress, then the PNGs) and /cancel.

It holds one model and renders one prompt at a time; the scheduler decides what comes next.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request

from backend.config import Config
from backend.generate_request import BadRequest, parse_generate_body
from backend.generation_run import GenerationRun
from backend.model_holder import ModelHolder
from playground.limits import random_seed


def default_loader(config: Config) -> Callable[[], Any]:
    def load() -> Any:
        from backend.engine import load_engine  # JAX is imported here, not at app creation

        engine = load_engine(config.model, cache_dir=config.cache_dir)
        engine.warm_up(config.warm_up_batch_sizes)
        return engine

    return load


def ndjson(run: GenerationRun):
    events = run.events()
    try:
        for event in events:
            yield json.dumps(event, separators=(",", ":")) + "\n"
    finally:
        events.close()  # the WSGI server closes us when the client goes away: pass it on


def create_app(config: Config, loader: Callable[[], Any] | None = None) -> Flask:
    app = Flask(__name__)
    holder = ModelHolder(config.model, loader or default_loader(config)).start()
    busy = threading.Lock()
    current: dict[str, GenerationRun | None] = {"run": None}
    app.extensions["model_holder"] = holder

    def error(status: int, message: str) -> Response:
        response = jsonify({"error": message})
        response.status_code = status
        return response

    @app.get("/health")
    def health() -> Response:
        status = holder.status
        run = current["run"]
        body = {"status": status, "model": holder.model_name, "error": holder.error}
        if status == "ready":
            body.update(
                devices=[str(device) for device in getattr(holder.engine, "devices", [])],
                # What the scheduler and the frontend need of the model: its image's
                # tokens and the codebook that limits top-k.
                image_tokens=holder.engine.total_tokens,
                image_codes=holder.engine.num_codes,
                busy=busy.locked(),
                job_id=run.job_id if run else None,
                load_secs=holder.load_secs,
            )
            return jsonify(body)
        response = jsonify(body)
        response.status_code = 503
        return response

    @app.post("/generate")
    def generate() -> Response:
        if holder.status != "ready":
            return error(503, f"model {holder.model_name} is {holder.status}: {holder.error or 'try again soon'}")
        try:
            body = parse_generate_body(request.get_json(silent=True))
        except BadRequest as exc:
            return error(400, str(exc))
        if not busy.acquire(blocking=False):
            return error(409, "busy with another job")

        def finished() -> None:
            current["run"] = None
            busy.release()

        seed = body.seed or random_seed()
        run = GenerationRun(holder.engine, body, seed, config.progress_interval_secs, finished)
        current["run"] = run
        run.start()
        return Response(ndjson(run), mimetype="application/x-ndjson", headers={"Cache-Control": "no-store"})

    @app.post("/cancel")
    def cancel() -> Response:
        body = request.get_json(silent=True)
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if not isinstance(job_id, str):
            return error(400, "job_id must be a string")
        run = current["run"]
        if run is None or run.job_id != job_id:
            return jsonify({"cancelled": False})
        run.cancel.set()
        return jsonify({"cancelled": True})

    @app.errorhandler(404)
    def not_found(_exc) -> Response:
        return error(404, "not found")

    @app.errorhandler(405)
    def method_not_allowed(_exc) -> Response:
        return error(405, "method not allowed")

    return app
