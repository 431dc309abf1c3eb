"""One /upscale call: the upscaler enlarges a picture in its own thread while the response
streams a progress line per tile (playground/protocol/upscale.py)."""
from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from backend.engine.request import GenerationCancelled
from backend.generation_run import StreamedRun
from backend.png import encode_png
from playground import pictures
from playground.protocol import done_event

class UpscaleRun(StreamedRun):
    """`picture`: the decoded library picture; `lock`: held while the upscaler runs (one call
    at a time per instance, whatever the slots)."""

    def __init__(self, upscaler: Any, lock: threading.Lock, job_id: str, source: str, picture: Image.Image,
                 progress_interval: float, on_finish: Callable[[StreamedRun], None], tile_delay_secs: float = 0.0):
        super().__init__(job_id, 0, 1, progress_interval, on_finish)
        self.upscaler, self._lock, self.source, self.picture = upscaler, lock, source, picture
        self._tile_delay_secs = tile_delay_secs

    def _on_tile(self, done: int, total: int) -> None:
        self._tokens_done, self._total_tokens = done, total
        if self._tile_delay_secs:
            self.cancel.wait(self._tile_delay_secs)
        if self.cancel.is_set():
            raise GenerationCancelled()

    def _work(self) -> dict:
        started = time.monotonic()
        try:
            chunks = pictures.text_chunks(self.picture)
            rgb = np.asarray(self.picture.convert("RGB"))
            with self._lock:
                if self.cancel.is_set():
                    raise GenerationCancelled()
                big = self.upscaler.upscale(rgb, progress=self._on_tile)
        finally:
            self.picture.close()
        upscaled = time.monotonic()
        height, width = big.shape[:2]
        text = pictures.upscaled_text(chunks, self.source, self.upscaler.name, self.upscaler.scale, (width, height))
        png = base64.b64encode(encode_png(big, text)).decode("ascii")
        return done_event(
            seed=0, model=self.upscaler.name, params={"scale": self.upscaler.scale}, images=[png],
            timings={"upscale_secs": upscaled - started, "png_secs": time.monotonic() - upscaled,
                     "total_secs": time.monotonic() - started})
