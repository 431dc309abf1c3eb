"""One /generate call: the engine runs in its own thread while the response streams its progress."""
from __future__ import annotations

import base64
import dataclasses
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from backend import ranking
from backend.engine import GenerationCancelled, GenerationRequest
from backend.generate_request import GenerateBody
from backend.png import encode_pngs
from playground import pictures, request_fields
from playground.protocol import (
    cancelled_event,
    done_event,
    error_event,
    preview_event,
    progress_event,
    started_event,
    stopped_event,
)

log = logging.getLogger(__name__)

PREVIEW_QUALITY = 80  # JPEG: a 128-pixel preview is about 3 kB


def png_metadata(body: GenerateBody, seed: int, params: dict, model: str, index: int,
                 codes=None, size: tuple[int, int] | None = None, steps: int = 256,
                 clip_score: float | None = None, candidates: int | None = None,
                 cell: int | None = None) -> dict[str, str]:
    """What a PNG says about itself, so the file alone tells how to make it again: our own
    fields, its codes (`dalle_codes`, to start new work from it exactly) and an A1111-style
    `parameters` text that the PNG-info readers of other image tools show."""
    metadata = {
        "prompt": body.text,
        "seed": str(seed),
        "image_index": str(index),
        **{field.library_name: str(params.get(field.name)) for field in request_fields.SAMPLING},
        "model": model,
        "software": "dalle-playground",
    }
    if body.keep_rows is not None:
        metadata.update(keep_rows=str(body.keep_rows), extend=body.extend or "")
    if clip_score is not None:  # `image_index` is then the candidate's index among `candidates`
        metadata.update(clip_score=str(clip_score), candidates=str(candidates))
    if cell is not None:  # a grid's cell, drawn as image 0 of a job of its own values
        metadata["grid_cell"] = str(cell)
    if codes is not None:
        metadata[pictures.CODES_KEY] = pictures.pack_codes(codes)
    metadata["parameters"] = pictures.parameters_text(metadata, size, steps)
    return metadata


def preview_of(engine: Any, done: int, codes, total_tokens: int) -> dict:
    """The preview event of the first `done` codes of every image: small JPEGs."""
    images = []
    for pixels in engine.preview_pictures(codes):
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
        images.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    height, width = pixels.shape[:2]
    return preview_event(done, total_tokens, width, height, images)


def cells_so_far(cell_codes: list) -> tuple[int, np.ndarray]:
    """A grid's cells' codes as one preview: each cell's preview schedule keeps its own time (the
    last cell's pays for the decoding, so it is due less often), so at the last cell's turn the
    others may hold fewer tokens. All are cut to the fewest: (that count, codes [cells, count])."""
    shown = min(len(codes) for codes in cell_codes)
    return shown, np.stack([np.asarray(codes)[:shown] for codes in cell_codes])


class StreamedRun:
    """One job of the backend (a generation, an upscale): its work runs in a thread of its own
    (`_run`, which sets `_outcome`, the last event) while `events` streams started, progress
    (`_tokens_done` of `_total_tokens`, the work's units), previews and that last event."""

    def __init__(self, job_id: str, seed: int, total: int, progress_interval: float,
                 on_finish: Callable[["StreamedRun"], None]):
        self.job_id = job_id
        self.seed = seed
        self.progress_interval = progress_interval
        self.cancel = threading.Event()
        self._handed_back = threading.Event()
        self._on_finish = on_finish
        self._finished = threading.Event()
        self._tokens_done = 0
        self._total_tokens = total
        self._outcome: dict | None = None
        self._preview: dict | None = None  # the newest preview event, sent at the next tick

    def start(self) -> "StreamedRun":
        threading.Thread(target=self._run, name=f"run-{self.job_id}", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            self._outcome = self._work()
        except GenerationCancelled:
            self._outcome = stopped_event() if self._handed_back.is_set() else cancelled_event()
        except Exception as exc:  # e.g. out of memory: reported to the scheduler, the service lives on
            log.exception("job %s failed", self.job_id)
            self._outcome = error_event(f"{type(exc).__name__}: {exc}")
        finally:
            self._finished.set()
            self._on_finish(self)

    def _work(self) -> dict:
        """The job's work, in the run's thread: its `done` event. GenerationCancelled when
        `cancel` stopped it."""
        raise NotImplementedError

    def hand_back(self) -> None:
        """The backend is stopping: end the stream with `stopped` at its next tick (within
        a progress interval, whatever the work is doing) and stop the work."""
        self._handed_back.set()
        self.cancel.set()

    def events(self) -> Iterator[dict]:
        """The NDJSON events; a client that goes away (GeneratorExit) cancels the run."""
        try:
            yield started_event(self.seed, self._total_tokens)
            sent = None
            while not self._finished.wait(self.progress_interval):
                if self._handed_back.is_set():
                    yield stopped_event()
                    return
                yield progress_event(self._tokens_done, self._total_tokens)
                preview = self._preview
                if preview is not sent:  # only the newest: one that was overtaken is never sent
                    sent = preview
                    yield preview
            yield self._outcome
        finally:
            if not self._finished.is_set() and not self._handed_back.is_set():
                log.info("client of job %s went away: cancelling", self.job_id)
                self.cancel.set()


class GenerationRun(StreamedRun):
    def __init__(self, engine: Any, generate: Callable, body: GenerateBody, seed: int, progress_interval: float,
                 on_finish: Callable[[StreamedRun], None], chunk_delay_secs: float = 0.0,
                 generate_group: Callable | None = None, together: bool = False):
        super().__init__(body.job_id, seed, engine.total_tokens, progress_interval, on_finish)
        self.engine = engine
        self._generate = generate  # the engine's, or its batch runner's (BACKEND_SLOTS > 1)
        # A grid's cells: the holder's generate_group; `together`: decoded in one batch.
        self._generate_group = generate_group
        self._together = together
        self.body = body
        self._chunk_delay_secs = chunk_delay_secs
        self._cells_done: list[int] = []
        self._cell_previews: dict[int, Any] = {}

    def _on_progress(self, done: int, total: int) -> None:
        self._tokens_done, self._total_tokens = done, total
        if self._chunk_delay_secs:
            time.sleep(self._chunk_delay_secs)

    def _on_preview(self, done: int, codes) -> None:
        # The engine times this call against its previews' budget, so the encoding counts too.
        try:
            # Best of N: the first num_images candidates stand for the job (which are kept is
            # known only once CLIP has scored them at the end).
            self._preview = preview_of(self.engine, done, codes[:self.body.num_images], self._total_tokens)
        except Exception:  # a preview that cannot be drawn must not cost the job its pictures
            log.exception("job %s: no preview at %d tokens", self.job_id, done)

    def _work(self) -> dict:
        if self.body.grid is not None:
            return self._grid_work()
        started = time.monotonic()
        start = self._start()
        plan = ranking.plan(self.engine, self.body.num_images, self.body.candidates, self.body.rank)
        request = GenerationRequest(
            text=self.body.text,
            num_images=plan.generate,
            seed=self.seed,
            top_k=self.body.top_k,
            top_p=self.body.top_p,
            temperature=self.body.temperature,
            condition_scale=self.body.condition_scale,
            init_codes=None if start is None else tuple(
                pictures.start_codes(start["codes"], self.body.keep_rows, self.body.extend)),
            keep_rows=self.body.keep_rows,
        )
        result = self._generate(request, on_progress=self._on_progress, cancel=self.cancel,
                                on_preview=self._on_preview)
        choice = ranking.choose(self.engine, plan, self.body.text, result.images)
        png_started = time.monotonic()
        scores = choice.scores or [None] * len(choice.indices)
        metadata = [png_metadata(self.body, result.seed, result.params, self.engine.model_name, index,
                                 result.codes[index], result.images[index].size, self.engine.total_tokens,
                                 score, plan.generate)
                    for index, score in zip(choice.indices, scores)]
        kept = [result.images[index] for index in choice.indices]
        images = [base64.b64encode(png).decode("ascii") for png in encode_pngs(kept, metadata)]
        timings = dict(result.timings)
        if plan.ranked:
            timings["rank_secs"] = choice.secs
        timings["png_secs"] = time.monotonic() - png_started
        timings["total_secs"] = time.monotonic() - started
        return done_event(
            seed=result.seed, model=self.engine.model_name, params=result.params, images=images,
            codes=[pictures.pack_codes(result.codes[index]) for index in choice.indices], timings=timings,
            # Best of N: how many were generated, which were kept (best first), their scores.
            candidates=plan.generate, ranked=plan.ranked, candidate_indices=choice.indices,
            clip_scores=choice.scores, start=start)

    def _cell_bodies(self) -> list[GenerateBody]:
        """Each cell's request: the job's, with the cell's values (its seed 0: the job's)."""
        return [dataclasses.replace(self.body, num_images=1, grid=None, **values)
                for values in self.body.grid.cells()]

    def _grid_work(self) -> dict:
        """A grid sweep: one picture per cell, the cells decoded together (with a batch runner)
        or one after another; progress is the cells' together, a cancel stops them all."""
        started = time.monotonic()
        bodies = self._cell_bodies()
        count = len(bodies)
        self._cells_done = [0] * count
        requests = [GenerationRequest(text=body.text, num_images=1, seed=body.seed or self.seed, top_k=body.top_k,
                                      top_p=body.top_p, temperature=body.temperature,
                                      condition_scale=body.condition_scale) for body in bodies]
        previews = ([lambda done, codes, cell=cell: self._on_cell_preview(cell, done, codes) for cell in range(count)]
                    if self._together else None)  # one after another: no previews
        results = self._generate_group(
            requests, on_progress=[lambda done, total, cell=cell: self._on_cell_progress(cell, done, total)
                                   for cell in range(count)],
            cancel=self.cancel, on_preview=previews)
        png_started = time.monotonic()
        metadata = [png_metadata(body, request.seed, result.params, self.engine.model_name, 0, result.codes[0],
                                 result.images[0].size, self.engine.total_tokens, cell=cell)
                    for cell, (body, request, result) in enumerate(zip(bodies, requests, results))]
        pngs = encode_pngs([result.images[0] for result in results], metadata)
        swept = {axis.field.name for axis in (self.body.grid.x, self.body.grid.y) if axis is not None}
        timings = {"tokens_secs": max(result.timings.get("tokens_secs", 0.0) for result in results),
                   "png_secs": time.monotonic() - png_started, "total_secs": time.monotonic() - started}
        return done_event(
            seed=self.seed, model=self.engine.model_name,
            params={name: value for name, value in results[0].params.items() if name not in swept},
            images=[base64.b64encode(png).decode("ascii") for png in pngs],
            codes=[pictures.pack_codes(result.codes[0]) for result in results], timings=timings,
            cells=[{**values, "seed": request.seed} for values, request in zip(self.body.grid.cells(), requests)])

    def _on_cell_progress(self, cell: int, done: int, total: int) -> None:
        self._cells_done[cell] = done
        self._tokens_done, self._total_tokens = sum(self._cells_done) // len(self._cells_done), total
        if self._chunk_delay_secs and cell == 0:
            time.sleep(self._chunk_delay_secs)

    def _on_cell_preview(self, cell: int, done: int, codes) -> None:
        """Decoded together, the cells offer their previews one after another at each boundary:
        the last one's completes the picture of them all."""
        self._cell_previews[cell] = codes[0]
        if cell == len(self._cells_done) - 1 and len(self._cell_previews) == len(self._cells_done):
            shown, together = cells_so_far([self._cell_previews[k] for k in range(cell + 1)])
            if shown <= (self._preview or {}).get("tokens_done", 0):
                return  # nothing new in every cell yet
            try:
                self._preview = preview_of(self.engine, shown, together, self._total_tokens)
            except Exception:  # as _on_preview: a preview never costs the job its pictures
                log.exception("job %s: no preview at %d tokens", self.job_id, shown)

    def _start(self) -> dict | None:
        """The code grid a continuation starts from, and how it was obtained: given, or the
        uploaded picture encoded by the VQGAN (which may read its encoder's weights now)."""
        if self.body.init_codes is not None:
            return {"source": "codes", "codes": list(self.body.init_codes)}
        if self.body.init_picture is not None:
            return {"source": "encoded", "codes": self.engine.encode_picture(self.body.init_picture).tolist()}
        return None
