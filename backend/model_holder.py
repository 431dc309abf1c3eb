"""Loads the engine in the background so the service answers /health while the model loads,
and says how far loading has got (`progress`: downloads, reading, compiling)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.engine.progress import LoadProgress
from playground.limits import MAX_GRID_CELLS
from playground.protocol import BackendStatus, Stage
from playground.writable import StartupError

log = logging.getLogger(__name__)


class ModelHolder:
    """Owns the engine: loading until the loader returns, then ready, or error with a reason.
    With more than one slot it also owns the batch runner that decodes their jobs together,
    compiled before the backend says ready.

    The loader is called with the holder's `LoadProgress` and reports into it.
    """

    def __init__(self, model_name: str, loader: Callable[[LoadProgress], Any], slots: int = 1):
        self.model_name = model_name
        self._loader = loader
        self.slots = slots
        self.progress = LoadProgress()
        self._engine: Any = None
        self._generate: Callable | None = None
        self._generate_group: Callable | None = None
        self.grid_cells_max = MAX_GRID_CELLS  # the most cells of a grid it makes (a batch runner's rows)
        self._error: str | None = None
        self._ready = threading.Event()
        self.load_secs: float | None = None

    def start(self) -> "ModelHolder":
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        return self

    def _load(self) -> None:
        started = time.monotonic()
        try:
            engine = self._loader(self.progress)
            if self.slots == 1:
                self._generate, self._generate_group = engine.generate, _one_after_another(engine.generate)
            else:
                runner = self._batch_runner(engine)
                self._generate, self._generate_group = runner.generate, runner.generate_group
                self.grid_cells_max = min(MAX_GRID_CELLS, runner.max_rows)
            self._engine = engine
        except StartupError as exc:  # its message says it all: one line, no traceback
            log.error("loading model %s failed: %s", self.model_name, exc)
            self._error = str(exc)
        except Exception as exc:  # any loading failure is reported by /health, not a crash
            log.exception("loading model %s failed", self.model_name)
            self._error = f"{type(exc).__name__}: {exc}"
        else:
            self.load_secs = time.monotonic() - started
            log.info("model %s ready after %.1f s", self.model_name, self.load_secs)
        finally:
            self._ready.set()

    @property
    def status(self) -> BackendStatus:
        if not self._ready.is_set():
            return BackendStatus.LOADING
        return BackendStatus.ERROR if self._error else BackendStatus.READY

    def _batch_runner(self, engine: Any) -> Any:
        from backend.engine.batching import BatchRunner  # imports JAX: in the loading thread

        self.progress.set_stage(Stage.COMPILING)
        runner = BatchRunner(engine, self.slots)
        runner.warm_up()
        return runner

    @property
    def generate(self) -> Callable:
        """`Engine.generate`'s signature: the engine's own with one slot, else the batch runner's."""
        return self._generate

    @property
    def generate_group(self) -> Callable:
        """Several requests as one job (a grid's cells): `(requests, on_progress=[...], cancel,
        on_preview=[...])` -> their results. Decoded together by the batch runner; with one
        slot, one after another."""
        return self._generate_group

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def engine(self) -> Any:
        return self._engine

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)


def _one_after_another(generate: Callable) -> Callable:
    def generate_group(requests, on_progress=None, cancel=None, on_preview=None) -> list:
        none = [None] * len(requests)
        return [generate(request, on_progress=progress, cancel=cancel, on_preview=preview)
                for request, progress, preview in zip(requests, on_progress or none, on_preview or none)]

    return generate_group
