"""Loads the engine in the background so the service answers /health while the model loads,
and says how far loading has got (`progress`: downloads, reading, compiling)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.engine.progress import LoadProgress
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
            self._generate = engine.generate if self.slots == 1 else self._batch_runner(engine).generate
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
    def error(self) -> str | None:
        return self._error

    @property
    def engine(self) -> Any:
        return self._engine

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)
