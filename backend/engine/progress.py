"""How far loading a model has got: the stage, and the bytes of each file being downloaded.

The loading thread writes it, /health reads it (`snapshot()`), and it logs a line per file at
most every `log_interval` seconds, since the log is where Docker users watch a first start.
"""
from __future__ import annotations

import logging
import threading
import time

from playground.protocol import Stage

log = logging.getLogger(__name__)


class LoadProgress:
    """Thread-safe: one loading thread updates, any request thread reads."""

    def __init__(self, log_interval: float = 5.0):
        self.log_interval = log_interval
        self._lock = threading.Lock()
        self._stage = Stage.STARTING
        self._files: dict[str, dict] = {}  # insertion order is download order
        self._logged: dict[str, tuple[float, int]] = {}  # name -> when and at how many bytes

    def set_stage(self, stage: Stage) -> None:
        if stage not in tuple(Stage):
            raise ValueError(f"unknown loading stage {stage!r}")
        with self._lock:
            self._stage = stage
        log.info("model loading: %s", stage)

    def file(self, name: str, bytes_done: int, bytes_total: int | None) -> None:
        """`name` ("<repo>/<file>") has `bytes_done` of `bytes_total` (None: unknown) on disk."""
        now = time.monotonic()
        with self._lock:
            self._stage = Stage.DOWNLOADING
            self._files[name] = {"name": name, "bytes_done": bytes_done, "bytes_total": bytes_total}
            logged_at, logged_bytes = self._logged.get(name, (None, None))
            finished = bytes_done == bytes_total
            due = logged_bytes != bytes_done and (
                logged_at is None or finished or now - logged_at >= self.log_interval)
            if due:
                self._logged[name] = (now, bytes_done)
        if due:
            log.info("downloading %s: %s", name, describe(bytes_done, bytes_total))

    def snapshot(self) -> dict:
        """{"stage": ..., "files": [{"name", "bytes_done", "bytes_total"}, ...]}: a copy."""
        with self._lock:
            return {"stage": self._stage, "files": [dict(entry) for entry in self._files.values()]}


def describe(bytes_done: int, bytes_total: int | None) -> str:
    """'512 MB of 1.75 GB (29%)'."""
    if not bytes_total:
        return human_bytes(bytes_done)
    return f"{human_bytes(bytes_done)} of {human_bytes(bytes_total)} ({100 * bytes_done // bytes_total}%)"


def human_bytes(count: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            value = count / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{count} B"
