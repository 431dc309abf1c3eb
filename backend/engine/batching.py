"""Several jobs in one decoding batch: a decoding step costs about the same for one image as
for eight, so jobs that wait together decode together (issue 30).

    runner = BatchRunner(engine, slots=4)
    runner.warm_up()                       # every program it will ever run: no compiles later
    job = runner.submit(request, on_progress=..., on_preview=..., cancel=event)
    result = job.result()                  # GenerationResult, or raises GenerationCancelled
    runner.close()

`submit_group(requests, ...)` submits jobs that join together at one boundary and share one
slot (a grid's cells, grid.py): a 4×4 grid of single pictures decodes as one batch of 16 rows.

`submit` is thread-safe and returns at once; one thread (the runner's own) drives the batch
between chunks of `engine.chunk_steps` steps. At each chunk boundary it
* ends the jobs whose cancel event is set (their rows go idle; the others go on unchanged),
* lets waiting jobs (or groups) join in FIFO order while fewer than `slots` run and their
  images fit the largest batch size (one that does not fit waits, and so do the ones behind it),
* moves the rows to the smallest of `sizes` that holds them (a lone job of 2 images decodes
  in the 2-image program),
then queues the next chunk, one chunk always ahead of the host as in `Engine.generate`.

Each image of a job is one row of the batch (its conditional and unconditional rows in the
cache, as in dallebart.py), with its own position, its prompt's cross-attention keys and
values (the unconditional rows' empty prompt kept once for all: `dallebart.RowPrompts`), its
sampling values (run-time arrays, one per row) and its random key. A job starts
exactly as on its own (`Engine.start_job`: the prompt encoded, a continuation's kept positions
prefilled, image i keyed by `fold_in(key(seed), i)`) in the batch size of its padded image
count, and is copied into free rows; a step at position t draws with `fold_in(that, t)`, so
image i of a job gets the codes it gets alone, whatever the other rows do and whenever it
joined. Rows at the end (position T) or idle compute at T - 1 and write nothing.

Programs: for each batch size, one chunk per last cache block read, one join per job size
that fits, and one move to every other size; `warm_up` compiles them all (shapes are fixed;
every per-job value is an array), so a change in the mix of jobs never compiles.
Per-job callbacks: `on_progress(done, total)` after each of its chunks, `on_preview(K,
codes)` as in `Engine.generate` (previews.PreviewSchedule), on the runner's thread with the
engine's lock held (so `engine.preview_pictures` may be called there).
"""
from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from playground.limits import random_seed

from . import dallebart, preview
from .generator import DecodingState, Engine, GenerationResult, JobStart, _sample
from .request import GenerationCancelled, GenerationRequest

log = logging.getLogger(__name__)

SAMPLING_DTYPES = {"top_k": np.int32, "top_p": np.float32, "temperature": np.float32, "condition_scale": np.float32}


class BatchState(NamedTuple):
    """The decoding state of a batch of jobs: every array has the batch's rows first (the
    cache, cross-attention and mask two rows per image)."""
    decoding: DecodingState
    positions: jax.Array  # [B] int32: the position each image decodes next (T: none)
    cross_kv: list  # per decoder layer, RowPrompts: (keys, values) [B, H, S, hd] of each image's prompt, [1, ...] empty
    encoder_mask: dallebart.RowPrompts  # [B, S] and [1, S]
    sampling: dict  # top_k, top_p, temperature, condition_scale: [B] each


def _pair_rows(rows):
    """Image rows [n] → their cache rows [2n]: 2r (conditional) and 2r + 1 (unconditional)."""
    return jnp.stack([2 * rows, 2 * rows + 1], axis=1).reshape(-1)


def _with_rows(tree, rows, values):
    """Each leaf of `tree` with its rows `rows` set to `values`' leaves (rows out of range: dropped)."""
    return jax.tree_util.tree_map(lambda leaf, new: leaf.at[rows].set(new.astype(leaf.dtype), mode="drop"),
                                  tree, values)


def _images(group: list) -> int:
    return sum(job.request.num_images for job in group)


class BatchJob:
    """One submitted request; `result()` waits for its images."""

    def __init__(self, request: GenerationRequest, on_progress, on_preview, cancel):
        self.request = request
        self.on_progress = on_progress
        self.on_preview = on_preview
        self.cancel = cancel or threading.Event()
        self.seed = request.seed or random_seed()
        self.rows: list[int] = []  # its images' batch rows, image i in rows[i]
        self.group: list[BatchJob] = [self]  # the jobs that joined with it and share its slot
        self.done = 0  # positions decoded (dispatched) so far
        self.previews: preview.PreviewSchedule | None = None
        self.timings: dict = {}
        self.started = 0.0
        self._finished = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def _finish(self, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._finished.set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._finished.wait(timeout):
            raise TimeoutError("the job is still running")
        if self._error is not None:
            raise self._error
        return self._result


class BatchRunner:
    """Up to `slots` jobs decoding together on one engine (see the module's doc)."""

    def __init__(self, engine: Engine, slots: int, sizes: tuple[int, ...] | None = None):
        if len(engine.devices) > 1:
            raise ValueError("a batch of jobs runs on one device")
        self.engine = engine
        self.slots = slots
        self.sizes = tuple(sorted(sizes or self._default_sizes(engine)))
        self._chunks: dict[tuple[int, int], Callable] = {}  # by (batch size, last cache block read)
        self._joins: dict[tuple[int, int], Callable] = {}  # by (job's padded size, batch size)
        self._moves: dict[tuple[int, int], Callable] = {}  # by (from size, to size)
        self._empties: dict[int, Callable] = {}  # by batch size
        self._state: BatchState | None = None
        self._rows: list[BatchJob | None] = []  # the job of each batch row
        self._active: list[BatchJob] = []
        self._pending: collections.deque[list[BatchJob]] = collections.deque()  # groups joining together
        self._condition = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @staticmethod
    def _default_sizes(engine: Engine) -> tuple[int, ...]:
        base = max(2, engine.batch_multiple)
        return (base, 2 * base, 4 * base, 8 * base)

    @property
    def max_rows(self) -> int:
        return self.sizes[-1]

    # -- the caller's side

    def submit(self, request: GenerationRequest, on_progress=None, cancel: threading.Event | None = None,
               on_preview=None) -> BatchJob:
        return self.submit_group([request], [on_progress], cancel, [on_preview])[0]

    def submit_group(self, requests: list[GenerationRequest], on_progress: list | None = None,
                     cancel: threading.Event | None = None, on_preview: list | None = None) -> list[BatchJob]:
        """Jobs that join together, at one boundary, and take one slot (a grid's cells): they
        wait, in the queue's order, until all their images fit. Their callbacks: one per job."""
        for request in requests:
            request.validate()
            self.engine.check_continuation(request)
        if sum(request.num_images for request in requests) > self.max_rows:
            raise ValueError(f"num_images must be at most {self.max_rows} in a batch, all together")
        cancel = cancel or threading.Event()
        none = [None] * len(requests)
        group = [BatchJob(request, progress, preview, cancel)
                 for request, progress, preview in zip(requests, on_progress or none, on_preview or none)]
        with self._condition:
            if self._closed:
                raise RuntimeError("the batch runner is closed")
            self._pending.append(group)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
                self._thread.start()
            self._condition.notify()
        return group

    def generate(self, request: GenerationRequest, on_progress=None, cancel=None, on_preview=None) -> GenerationResult:
        return self.submit(request, on_progress, cancel, on_preview).result()

    def generate_group(self, requests: list[GenerationRequest], on_progress=None, cancel=None,
                       on_preview=None) -> list[GenerationResult]:
        group = self.submit_group(requests, on_progress, cancel, on_preview)
        try:
            return [job.result() for job in group]
        except BaseException:
            group[0].cancel.set()  # one failed or was cancelled: the others stop too
            raise

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()

    def warm_up(self, continuations: bool = True) -> None:
        """Compile every program the runner can use, so no job waits for a compile (without
        `continuations`, a continuation's prefill is compiled when the first one comes)."""
        engine = self.engine
        with engine._lock:
            for size in self.sizes:
                self._empty_program(size)
                for last in range(engine.cache_blocks):
                    self._chunk_program(size, last)
                for job_size in self.sizes:
                    if job_size <= size:
                        self._join_program(job_size, size)
                for other in self.sizes:
                    if other != size:
                        self._move_program(size, other)
                programs = engine.preparation(size)
                if continuations:
                    engine._compile_prefill(programs)
                for rows in engine._vqgan_pieces(size):
                    engine._vqgan_program(rows)
            if engine.preview_every != 0 and engine.preview_method == "table":
                engine.prepare_colour_table()

    # -- programs

    def _job_size(self, num_images: int) -> int:
        return next(size for size in self.sizes if size >= num_images)

    def _state_shape(self, batch: int) -> BatchState:
        engine, config = self.engine, self.engine.config
        heads = config.decoder_attention_heads
        text = lambda rows: jax.ShapeDtypeStruct((rows, heads, config.max_text_length, config.d_model // heads),  # noqa: E731
                                                 engine.cache_dtype)
        mask = lambda rows: jax.ShapeDtypeStruct((rows, config.max_text_length), jnp.int32)  # noqa: E731
        program = engine.preparation(batch).prepared[0][1]
        decoding = jax.tree_util.tree_map(lambda info: jax.ShapeDtypeStruct(info.shape, info.dtype), program)
        return BatchState(
            decoding=decoding, positions=jax.ShapeDtypeStruct((batch,), jnp.int32),
            cross_kv=[dallebart.RowPrompts((text(batch),) * 2, (text(1),) * 2)] * config.decoder_layers,
            encoder_mask=dallebart.RowPrompts(mask(batch), mask(1)),
            sampling={name: jax.ShapeDtypeStruct((batch,), dtype) for name, dtype in SAMPLING_DTYPES.items()})

    def _chunk_program(self, batch: int, last: int) -> Callable:
        if (batch, last) not in self._chunks:
            chunk = jax.jit(functools.partial(self._chunk_fn, steps=self.engine.chunk_steps, last=last),
                            donate_argnames="state")
            self._chunks[(batch, last)] = chunk.lower(self.engine.params, self._state_shape(batch)).compile()
        return self._chunks[(batch, last)]

    def _chunk_fn(self, params, state: BatchState, *, steps: int, last: int):
        """`steps` steps of every row, each at its own position; cache blocks up to `last` read."""
        engine = self.engine
        total = engine.total_tokens
        rows = jnp.arange(state.positions.shape[0])

        def step(_, state: BatchState) -> BatchState:
            decoding = state.decoding
            both_rows = jnp.broadcast_to(decoding.tokens[:, None], (decoding.tokens.shape[0], 2))
            read = [layer[:last + 1] for layer in decoding.cache]
            logits, written = dallebart.decode_rows_step(params, engine.config, both_rows, state.positions, read,
                                                         state.cross_kv, state.encoder_mask)
            cache = [new + layer[last + 1:] for new, layer in zip(written, decoding.cache)]
            step_keys = jax.vmap(jax.random.fold_in)(decoding.keys, jnp.minimum(state.positions, total - 1))
            drawn = _sample(logits, step_keys, state.sampling, engine.num_codes)
            codes = decoding.codes.at[rows, state.positions].set(drawn, mode="drop")
            return state._replace(decoding=decoding._replace(cache=cache, tokens=drawn, codes=codes),
                                  positions=state.positions + 1)

        state = jax.lax.fori_loop(0, steps, step, state)
        return state, state.decoding.codes + 0

    def _join_program(self, job_size: int, batch: int) -> Callable:
        if (job_size, batch) not in self._joins:
            engine = self.engine
            (cross_kv, decoding), text = engine.preparation(job_size).prepared
            strip = lambda tree: jax.tree_util.tree_map(lambda i: jax.ShapeDtypeStruct(i.shape, i.dtype), tree)  # noqa: E731
            scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)  # noqa: E731
            start = JobStart(strip(cross_kv), jax.ShapeDtypeStruct(text.shape, text.dtype), strip(decoding),
                             scalar(jnp.int32))
            sampling = {name: scalar(dtype) for name, dtype in SAMPLING_DTYPES.items()}
            rows = jax.ShapeDtypeStruct((job_size,), jnp.int32)
            join = jax.jit(self._join_fn, donate_argnames="state")
            self._joins[(job_size, batch)] = join.lower(self._state_shape(batch), start, sampling, rows).compile()
        return self._joins[(job_size, batch)]

    @staticmethod
    def _join_fn(state: BatchState, start: JobStart, sampling, rows):
        """A started job's rows copied into batch rows `rows` (those out of range: its padding).
        Its two encoder rows: the prompt's, copied to each of its images, and the empty prompt's,
        the same for every job."""
        pairs = _pair_rows(rows)
        job_size = rows.shape[0]
        per_row = lambda value: jnp.broadcast_to(value, (job_size,))  # noqa: E731
        tiled = lambda array: jnp.tile(array[:1], (job_size,) + (1,) * (array.ndim - 1))  # noqa: E731
        text = lambda cross, new: dallebart.RowPrompts(  # noqa: E731
            _with_rows(cross.conditional, rows, jax.tree_util.tree_map(tiled, new)),
            jax.tree_util.tree_map(lambda array: array[1:], new))
        decoding = state.decoding
        decoding = decoding._replace(
            cache=[tuple(tuple(cached.at[pairs].set(new, mode="drop") for cached, new in zip(block, new_block))
                         for block, new_block in zip(layer, new_layer))
                   for layer, new_layer in zip(decoding.cache, start.state.cache)],
            **{name: getattr(decoding, name).at[rows].set(getattr(start.state, name), mode="drop")
               for name in ("tokens", "codes", "keys")})
        return BatchState(
            decoding=decoding,
            positions=state.positions.at[rows].set(start.first, mode="drop"),
            cross_kv=[text(layer, new) for layer, new in zip(state.cross_kv, start.cross_kv)],
            encoder_mask=text(state.encoder_mask, start.encoder_mask),
            sampling={name: state.sampling[name].at[rows].set(per_row(value), mode="drop")
                      for name, value in sampling.items()})

    def _move_program(self, old: int, new: int) -> Callable:
        if (old, new) not in self._moves:
            rows = jax.ShapeDtypeStruct((new,), jnp.int32)
            move = jax.jit(functools.partial(self._move_fn, total=self.engine.total_tokens))
            self._moves[(old, new)] = move.lower(self._state_shape(old), rows).compile()
        return self._moves[(old, new)]

    @staticmethod
    def _move_fn(state: BatchState, rows, *, total: int):
        """The state in another batch size: new row r is old row rows[r]; -1: an idle row."""
        kept = jnp.maximum(rows, 0)
        pairs = _pair_rows(kept)
        take = lambda index: lambda leaf: jnp.take(leaf, index, axis=0)  # noqa: E731
        decoding = state.decoding
        decoding = decoding._replace(
            cache=jax.tree_util.tree_map(take(pairs), decoding.cache),
            **{name: take(kept)(getattr(decoding, name)) for name in ("tokens", "codes", "keys")})
        return BatchState(
            decoding=decoding,
            positions=jnp.where(rows >= 0, take(kept)(state.positions), total),
            cross_kv=[layer._replace(conditional=jax.tree_util.tree_map(take(kept), layer.conditional))
                      for layer in state.cross_kv],
            encoder_mask=state.encoder_mask._replace(conditional=take(kept)(state.encoder_mask.conditional)),
            sampling=jax.tree_util.tree_map(take(kept), state.sampling))

    def _empty_program(self, batch: int) -> Callable:
        """Makes the state of a batch with every row idle."""
        if batch not in self._empties:
            shapes = self._state_shape(batch)

            def empty():
                state = jax.tree_util.tree_map(lambda shape: jnp.zeros(shape.shape, shape.dtype), shapes)
                return state._replace(
                    positions=jnp.full((batch,), self.engine.total_tokens, jnp.int32),
                    sampling={name: jnp.ones((batch,), dtype) for name, dtype in SAMPLING_DTYPES.items()})

            self._empties[batch] = jax.jit(empty).lower().compile()
        return self._empties[batch]

    # -- the runner's thread

    def _loop(self) -> None:
        in_flight: collections.deque = collections.deque()
        while True:
            with self._condition:
                while not (self._pending or self._active or in_flight or self._closed):
                    self._condition.wait()
                if self._closed and not (self._active or in_flight):
                    for group in self._pending:
                        for job in group:
                            job._finish(error=GenerationCancelled())
                    return
            try:
                with self.engine._lock:
                    self._boundary()
                    if self._active:
                        in_flight.append(self._dispatch())
                    if len(in_flight) > 1 or (in_flight and not self._active):
                        self._report(*in_flight.popleft())
            except Exception as error:  # e.g. out of memory: every job of the batch fails, the runner lives on
                log.exception("the batch failed")
                for job in self._active + [job for record in in_flight for job, _, _ in record[1]]:
                    if not job.finished:
                        job._finish(error=error)
                self._active, self._rows, self._state = [], [], None
                in_flight.clear()

    def _boundary(self) -> None:
        """Cancelled jobs leave, waiting ones join, the rows move to the size that holds them."""
        for job in [job for job in self._active if job.cancel.is_set()]:
            self._leave(job)
            job._finish(error=GenerationCancelled())
        joining = []
        with self._condition:
            while self._pending and self._pending[0][0].cancel.is_set():  # a group shares its cancel
                for job in self._pending.popleft():
                    job._finish(error=GenerationCancelled())
            used = sum(len(job.rows) for job in self._active)
            running = len({id(job.group) for job in self._active})
            while self._pending and running < self.slots and used + _images(self._pending[0]) <= self.max_rows:
                group = self._pending.popleft()
                for job in group:
                    job.group = group
                used += _images(group)
                running += 1
                joining.extend(group)
        self._resize(used)
        for job in joining:
            self._join(job)

    def _resize(self, used: int) -> None:
        """The rows in the smallest batch size holding `used` images, the jobs' rows first."""
        if used == 0:
            self._state, self._rows = None, []
            return
        size = next(size for size in self.sizes if size >= used)
        if size == len(self._rows):
            return
        if self._state is None:
            self._state, self._rows = self._empty_program(size)(), [None] * size
            return
        order = [row for job in self._active for row in job.rows]
        index = np.full(size, -1, np.int32)
        index[:len(order)] = order
        self._state = self._move_program(len(self._rows), size)(self._state, index)
        self._rows = [None] * size
        at = 0
        for job in self._active:
            job.rows = list(range(at, at + len(job.rows)))
            for row in job.rows:
                self._rows[row] = job
            at += len(job.rows)

    def _join(self, job: BatchJob) -> None:
        engine, request = self.engine, job.request
        job.started = time.perf_counter()
        job_size = self._job_size(request.num_images)
        start = engine.start_job(request, engine.preparation(job_size), job.seed, job.timings)
        free = [row for row, owner in enumerate(self._rows) if owner is None]
        job.rows = free[:request.num_images]
        for row in job.rows:
            self._rows[row] = job
        rows = np.full(job_size, len(self._rows), np.int32)  # the padding: out of range, dropped
        rows[:len(job.rows)] = job.rows
        sampling = request.sampling()
        values = {name: np.asarray(min(sampling[name], 2**31 - 1) if name == "top_k" else sampling[name], dtype)
                  for name, dtype in SAMPLING_DTYPES.items()}
        self._state = self._join_program(job_size, len(self._rows))(
            self._state, start._replace(first=np.int32(start.first)), values, rows)
        job.done = start.first
        if job.on_preview is not None and engine.preview_every != 0:
            every = engine.preview_every and -(-engine.preview_every // engine.chunk_steps) * engine.chunk_steps
            job.previews = preview.PreviewSchedule(job.on_preview, engine.total_tokens, request.num_images, every,
                                                   min_spacing=engine.row_length, first=start.first)
        self._active.append(job)

    def _leave(self, job: BatchJob) -> None:
        self._active.remove(job)
        for row in job.rows:
            self._rows[row] = None

    def _dispatch(self):
        """Queue the next chunk; the jobs it ends leave their rows at once (the chunk's codes
        are kept in its marker)."""
        engine = self.engine
        block = engine.total_tokens // engine.cache_blocks
        last = max(min(job.done + engine.chunk_steps - 1, engine.total_tokens - 1) // block for job in self._active)
        self._state, marker = self._chunk_program(len(self._rows), last)(engine.params, self._state)
        record = []
        for job in list(self._active):
            job.done += engine.chunk_steps
            record.append((job, job.done, tuple(job.rows)))
            if job.done >= engine.total_tokens:
                self._leave(job)
        return marker, record

    def _report(self, marker, record) -> None:
        codes = np.asarray(marker)  # waits for the chunk
        for job, done, rows in record:
            if job.finished:
                continue
            job_codes = codes[list(rows)]
            if job.on_progress is not None:
                job.on_progress(done, self.engine.total_tokens)
            if job.previews is not None:
                job.previews.offer(done, job_codes)
            if done >= self.engine.total_tokens:
                self._finish(job, job_codes)

    def _finish(self, job: BatchJob, codes: np.ndarray) -> None:
        engine = self.engine
        if job.cancel.is_set():
            job._finish(error=GenerationCancelled())
            return
        tokens_done = time.perf_counter()
        pixels = engine.decode_images(codes)
        if engine.preview_method == "table":
            engine.colours.learn(codes, pixels)
        timings = {"tokens_secs": tokens_done - job.started, "vqgan_secs": time.perf_counter() - tokens_done,
                   **job.timings}
        if job.previews is not None:
            timings.update(previews=job.previews.count, preview_secs=job.previews.spent)
        from PIL import Image

        images = [Image.fromarray(np.round(p * 255).astype(np.uint8), "RGB") for p in pixels]
        job._finish(GenerationResult(images=images, seed=job.seed, params=job.request.sampling(),
                                     timings=timings, codes=codes))
