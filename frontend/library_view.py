"""GET /getlibrary's answers from prepared bytes: the whole library, pages, and text search.

Each entry is serialized once per change of the library (the store hands out the same list
until library.json changes), so a page of a 10,000-job library is a slice and a join, and the
whole library is the index file's own bytes (gzipped once per change for clients that accept
it: 10,000 jobs are ~7 MB of JSON, ~1 MB gzipped).
"""
from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass

from playground.library import LibraryStore
from playground.request_fields import UPSCALE_OF
from frontend.responses import json_bytes


GZIP_MIN_BYTES = 16 * 1024


@dataclass(frozen=True)
class LibraryPage:
    body: bytes
    total: int
    gzipped: bool = False


@dataclass(frozen=True)
class _Snapshot:
    source: list  # the store's entries list these were made from
    encoded: list[bytes]
    prompts: list[str]  # lower-cased text_prompt, for the case-insensitive filter
    by_score: list[int]  # entry positions, best CLIP score first, unscored ones last (newest first)
    by_id: dict[str, dict]
    upscaled: dict[str, str]  # a picture -> the upscale job's picture made of it


class LibraryView:
    def __init__(self, store: LibraryStore):
        self.store = store
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        self._gzipped: tuple[bytes, bytes] = (b"", b"")  # (source, compressed)
        self._gzip_lock = threading.Lock()

    def whole(self, gzipped: bool = False) -> LibraryPage:
        total = len(self.store.entries())
        data = self.store.entries_json()
        if not gzipped or len(data) < GZIP_MIN_BYTES:
            return LibraryPage(data, total)
        with self._gzip_lock:
            if self._gzipped[0] is not data:
                # Level 1: a tenth of level 9's time for nearly the same size on JSON.
                self._gzipped = (data, gzip.compress(data, compresslevel=1, mtime=0))
            return LibraryPage(self._gzipped[1], total, gzipped=True)

    def page(self, offset: int = 0, limit: int | None = None, query: str = "", sort: str = "newest") -> LibraryPage:
        """Entries matching `query` (case-insensitive substring of the prompt), newest first
        (or, with sort "score", by their best picture's CLIP score), from `offset`, at most
        `limit` of them; `total` counts all that match."""
        snapshot = self._current()
        order = snapshot.by_score if sort == "score" else range(len(snapshot.encoded))
        needle = query.casefold()
        encoded = [snapshot.encoded[i] for i in order if not needle or needle in snapshot.prompts[i]]
        end = None if limit is None else offset + limit
        return LibraryPage(b"[" + b",".join(encoded[offset:end]) + b"]", len(encoded))

    def entry(self, queue_id: str) -> dict | None:
        return self._current().by_id.get(queue_id)

    def upscale_of(self, picture: str) -> str | None:
        """The picture an upscale job made of `picture` ("library/<queue_id>/<image>.png"), if any."""
        return self._current().upscaled.get(picture)

    def _current(self) -> _Snapshot:
        entries = self.store.entries()
        snapshot = self._snapshot
        if snapshot is not None and snapshot.source is entries:
            return snapshot
        with self._lock:
            if self._snapshot is None or self._snapshot.source is not entries:
                self._snapshot = _Snapshot(
                    source=entries,
                    encoded=[json_bytes(entry) for entry in entries],
                    prompts=[str(entry.get("text_prompt", "")).casefold() for entry in entries],
                    by_score=sorted(range(len(entries)), key=lambda i: _score_key(entries[i], i)),
                    by_id={entry.get("queue_id"): entry for entry in entries},
                    upscaled={entry[UPSCALE_OF.library_name]: (entry.get("generated_images") or [""])[0]
                              for entry in entries if isinstance(entry.get(UPSCALE_OF.library_name), str)},
                )
            return self._snapshot


def _score_key(entry: dict, position: int) -> tuple:
    """Sort key: the entry's best CLIP score, highest first; entries without one after all
    scored ones, in library order."""
    scores = entry.get("clip_scores")
    numbers = [s for s in scores if isinstance(s, (int, float)) and not isinstance(s, bool)] if isinstance(scores, list) else []
    return (0, -max(numbers), position) if numbers else (1, 0.0, position)
