"""Preview pictures of a job while it runs: the codes drawn so far, the rest grey.

Two ways to draw them, both small (`PREVIEW_SIZE` pixels square):

* `decode`: the VQGAN decodes the whole grid (the codes not drawn yet set to 0) and the
  cells not drawn yet are painted grey. Exact where drawn, but it costs a VQGAN pass: cheap
  on a GPU, a second or more per picture on a CPU.
* `table`: one colour per code (`ColourTable`): one lookup per code, a blurry but true
  picture of the layout and colours at a negligible cost on any machine.

When to draw one (`PreviewSchedule`): every `every` tokens when set (PREVIEW_EVERY_TOKENS),
otherwise at most once per row of codes and only while the previews so far, plus the cost
of one more, stay within `BUDGET` of the time the job has run, so they never cost more than
a tenth of the generation time, whatever the machine.
"""
from __future__ import annotations

import os
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PREVIEW_SIZE = 128
BUDGET = 0.10  # previews may take at most this share of the generation time
GREY = 128
# Codebooks up to this size get an exact table at warm-up: each code decoded on its own (a
# 3×3 grid of itself: smaller grids are dominated by the convolutions' zero padding). The
# demo model's 1161 codes take seconds on a CPU; the published 16384 would take half an hour.
EXACT_TABLE_CODES = 2048
EXACT_GRID_SIDE = 3
SEED_GRIDS = 4  # random code grids decoded at warm-up for a larger codebook


class ColourTable:
    """Each code's colour: the mean of its cell in the pictures decoded so far (exact for a
    small codebook, see above); a code not seen yet gets a linear fit embedding → colour over
    the seen ones, or grey while too few are seen. Every finished job teaches it the codes
    it used, at no cost (the pixels are decoded anyway)."""

    def __init__(self, embedding: np.ndarray):
        self.embedding = np.asarray(embedding, np.float64)
        n_codes = len(self.embedding)
        self.sums = np.zeros((n_codes, 3))
        self.counts = np.zeros(n_codes)
        self._table: np.ndarray | None = None
        self._lock = threading.Lock()

    def learn(self, codes: np.ndarray, pixels: np.ndarray) -> None:
        """codes int [B, side*side], pixels float [B, H, W, 3] in [0, 1] (their decoding)."""
        codes = np.asarray(codes).reshape(len(codes), -1)
        batch, cells = codes.shape
        side = int(round(cells ** 0.5))
        pixels = np.asarray(pixels, np.float64)
        cell = pixels.shape[1] // side
        means = pixels.reshape(batch, side, cell, side, cell, 3).mean(axis=(2, 4)).reshape(-1, 3)
        with self._lock:
            np.add.at(self.sums, codes.reshape(-1), means)
            np.add.at(self.counts, codes.reshape(-1), 1)
            self._table = None

    def learn_exact(self, decode_grids: Callable[[np.ndarray, int], np.ndarray], batch: int = 64) -> None:
        """Every code decoded as a small grid of itself; `decode_grids(codes [B, s*s], s)`
        gives pixels [B, h, w, 3] in [0, 1]."""
        n_codes = len(self.embedding)
        colours = []
        for start in range(0, n_codes, batch):
            codes = np.arange(start, start + batch) % n_codes  # a whole batch: one program
            grids = np.repeat(codes[:, None], EXACT_GRID_SIDE ** 2, axis=1).astype(np.int32)
            colours.append(np.asarray(decode_grids(grids, EXACT_GRID_SIDE), np.float64).mean(axis=(1, 2)))
        with self._lock:
            self.sums = np.concatenate(colours)[:n_codes]
            self.counts = np.ones(n_codes)
            self._table = None

    def save(self, path: Path) -> None:
        """Keep what it knows for the next start, written whole or not at all."""
        with self._lock:
            sums, counts = self.sums.copy(), self.counts.copy()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as file:
            np.savez(file, sums=sums, counts=counts)
        os.replace(partial, path)

    def load(self, path: Path) -> bool:
        """What `save` kept, if it is there and fits this codebook."""
        try:
            with np.load(path) as saved:
                sums, counts = np.asarray(saved["sums"], np.float64), np.asarray(saved["counts"], np.float64)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return False
        if sums.shape != self.sums.shape or counts.shape != self.counts.shape:
            return False
        with self._lock:
            self.sums, self.counts, self._table = sums, counts, None
        return True

    def table(self) -> np.ndarray:
        """uint8 [n_codes, 3]."""
        with self._lock:
            if self._table is None:
                self._table = self._build()
            return self._table

    def _build(self) -> np.ndarray:
        seen = self.counts > 0
        colours = np.full((len(self.counts), 3), GREY / 255)
        colours[seen] = self.sums[seen] / self.counts[seen, None]
        features = np.concatenate([self.embedding, np.ones((len(self.embedding), 1))], axis=1)
        if seen.sum() >= 2 * features.shape[1] and not seen.all():
            weights = np.linalg.lstsq(features[seen], colours[seen], rcond=None)[0]
            colours[~seen] = features[~seen] @ weights
        return np.clip(np.round(255 * colours), 0, 255).astype(np.uint8)


def table_previews(table: np.ndarray, codes: np.ndarray, side: int, size: int = PREVIEW_SIZE) -> np.ndarray:
    """uint8 [B, size, size, 3]: each drawn code's colour in its cell, the cells not drawn
    yet grey. `codes` int [B, K], the first K codes of each image (row-major)."""
    batch, done = codes.shape
    cells = np.full((batch, side * side, 3), GREY, np.uint8)
    cells[:, :done] = table[np.clip(codes, 0, len(table) - 1)]
    cells = cells.reshape(batch, side, side, 3)
    # Smoothly scaled within the drawn rows; the grey below stays a plain grey.
    return np.stack([np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR)) for grid in cells])


def decoded_previews(pixels: np.ndarray, done: int, side: int, size: int = PREVIEW_SIZE) -> np.ndarray:
    """uint8 [B, size, size, 3] from full decoded pixels float [B, H, W, 3] in [0, 1] of a
    grid whose first `done` codes are drawn: the other cells grey, then scaled down."""
    batch, height, width, _ = pixels.shape
    out = np.round(np.asarray(pixels) * 255).astype(np.uint8)
    cell_h, cell_w = height // side, width // side
    rows, rest = divmod(done, side)
    out[:, rows * cell_h + (cell_h if rest else 0):] = GREY  # the rows not started
    if rest:  # the row being drawn: its cells after the last drawn one
        out[:, rows * cell_h:(rows + 1) * cell_h, rest * cell_w:] = GREY
    if (height, width) == (size, size):
        return out
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for image in out])


class PreviewSchedule:
    """Decides at each chunk's end whether to hand out the codes so far, and times the handing.

    `every`: a fixed spacing in tokens (checked at chunk ends); None: at most one per
    `min_spacing` tokens, within `BUDGET` of the time since `started`.
    """

    def __init__(self, callback: Callable[[int, np.ndarray], None], total: int, num_images: int,
                 every: int | None, min_spacing: int, first: int = 0, clock=time.perf_counter):
        self.callback = callback
        self.total = total
        self.num_images = num_images
        self.every = every
        self.min_spacing = min_spacing
        self.clock = clock
        self.started = clock()
        self.last = first  # a continuation's kept rows are not news
        self.spent = 0.0
        self.last_cost = 0.0
        self.count = 0

    def due(self, done: int) -> bool:
        if done >= self.total:
            return False  # the finished pictures follow at once
        if self.every:
            return done - self.last >= self.every
        if done - self.last < self.min_spacing:
            return False
        return self.spent + self.last_cost <= BUDGET * (self.clock() - self.started)

    def offer(self, done: int, codes) -> None:
        """`codes`: the whole code array after `done` tokens (device or host, [B', T])."""
        if not self.due(done):
            return
        began = self.clock()
        self.callback(done, np.asarray(codes)[:self.num_images, :done])
        self.last_cost = self.clock() - began
        self.spent += self.last_cost
        self.last = done
        self.count += 1
