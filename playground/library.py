"""The library folder: one folder per finished job plus the `library.json` index.

    library.json                   every entry, newest first (what GET /getlibrary returns)
    library.json.lock              the lock every writer (scheduler, frontend) takes
    <queue_id>/job.json            the job's own entry, from which library.json can be rebuilt
    <queue_id>/<image-uuid>.png    the images

Every write of a JSON file goes to a temporary file that then replaces the old one, so a
reader or a crash never sees half a file; every change of library.json happens under the
lock, so a delete racing a job's completion cannot drop either change. Adding a job reads
only library.json and the job's own folder, never the whole library.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from playground.queue import UUID_PATTERN

log = logging.getLogger(__name__)

INDEX_NAME = "library.json"
JOB_FILE_NAME = "job.json"
_UUID_RE = re.compile(UUID_PATTERN)
_IMAGE_URL_RE = re.compile(rf"library/({UUID_PATTERN})/({UUID_PATTERN})\.png")
_IMAGE_NAME_RE = re.compile(rf"{UUID_PATTERN}\.png")
REQUIRED_FIELDS = ("queue_id", "text_prompt", "creation_unixtime")


def _check_uuid(value: str, what: str) -> str:
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise ValueError(f"{what} must be a lowercase uuid, got {value!r}")
    return value


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _created(entry: dict) -> float:
    value = entry.get("creation_unixtime")
    return value if isinstance(value, (int, float)) else 0.0


def _dump(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class LibraryStore:
    """Reads and changes the library folder; safe across threads and processes."""

    def __init__(self, library_dir: Path | str):
        self.root = Path(library_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / INDEX_NAME
        self._file_lock = FileLock(str(self.root / f"{INDEX_NAME}.lock"))
        self._thread_lock = threading.RLock()
        self._cache_key: tuple | None = None
        self._cache_entries: list[dict] = []
        self._cache_json: bytes = b"[]"

    # -- reading -------------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """Every entry, newest first (shared with the cache: do not modify).
        Reloaded only when library.json changed on disk."""
        self._refresh()
        return self._cache_entries

    def entries_json(self) -> bytes:
        """`entries()` serialized as JSON (UTF-8), ready to send."""
        self._refresh()
        return self._cache_json

    def _stat_key(self) -> tuple | None:
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        key = self._stat_key()
        if key == self._cache_key:
            return
        with self._thread_lock:
            key = self._stat_key()
            if key == self._cache_key:
                return
            if key is None:
                self._set_cache(None, [], b"[]")
                return
            data = self.index_path.read_bytes()
            entries = self._parse_index(data)
            if entries is None:
                log.warning("%s is not a valid library index; rebuilding it from the job folders",
                            self.index_path)
                try:
                    self.rebuild()
                except OSError:
                    log.exception("could not rebuild %s; showing an empty library", self.index_path)
                    self._set_cache(key, [], b"[]")
                return
            newest_first = sorted(entries, key=_created, reverse=True)
            if newest_first != entries:  # e.g. the original playground's file, oldest first
                entries, data = newest_first, _dump(newest_first)
            self._set_cache(key, entries, data)

    def _set_cache(self, key: tuple | None, entries: list[dict], data: bytes) -> None:
        self._cache_entries, self._cache_json, self._cache_key = entries, data, key

    @staticmethod
    def _parse_index(data: bytes) -> list[dict] | None:
        try:
            entries = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return None
        return entries

    def _read_index_locked(self) -> list[dict]:
        """The current entries, for a writer holding the lock (a missing or bad file reads as
        the job folders' entries, so a write never drops what a rebuild would recover)."""
        key = self._stat_key()
        if key is not None and key == self._cache_key:
            return list(self._cache_entries)
        if key is not None:
            entries = self._parse_index(self.index_path.read_bytes())
            if entries is not None:
                return entries
        return self._entries_from_job_files()

    def _write_index_locked(self, entries: list[dict]) -> None:
        entries.sort(key=_created, reverse=True)
        data = _dump(entries)
        _write_atomically(self.index_path, data)
        self._set_cache(self._stat_key(), entries, data)

    # -- writing -------------------------------------------------------------------------

    def add_job(self, entry: dict, images: list[bytes], extended: list[bytes] = ()) -> dict:
        """Store a finished job's PNGs and entry; returns the entry with `generated_images`
        (and with `extended_images`, the taller pictures of a job that extended a picture).

        Adding a queue_id that is already there replaces it (a job re-run after a crash
        between writing its files and being marked done is stored once).
        """
        missing = [name for name in REQUIRED_FIELDS if name not in entry]
        if missing:
            raise ValueError(f"library entry lacks {', '.join(missing)}")
        queue_id = _check_uuid(entry["queue_id"], "queue_id")
        job_dir = self.root / queue_id
        job_dir.mkdir(exist_ok=True)
        # PNGs left by an earlier, interrupted attempt at the same job.
        stale = [p for p in job_dir.iterdir() if _IMAGE_NAME_RE.fullmatch(p.name)]

        def write(png: bytes) -> str:
            name = f"{uuid.uuid4()}.png"
            _write_atomically(job_dir / name, png)
            return f"library/{queue_id}/{name}"

        entry = {**entry, "generated_images": [write(png) for png in images]}
        if extended:
            entry["extended_images"] = [write(png) for png in extended]
        _write_atomically(job_dir / JOB_FILE_NAME, _dump(entry))
        with self._locked():
            entries = [e for e in self._read_index_locked() if e.get("queue_id") != queue_id]
            entries.append(entry)
            self._write_index_locked(entries)
        for path in stale:
            path.unlink(missing_ok=True)
        return entry

    def delete_image(self, relative_url: str) -> bool:
        """Delete one image given as `library/<queue_id>/<image-uuid>.png`.

        Raises ValueError for any other form; returns False when there is no such image.
        Deleting a job's last image deletes the job.
        """
        match = _IMAGE_URL_RE.fullmatch(relative_url) if isinstance(relative_url, str) else None
        if not match:
            raise ValueError("path must look like library/<queue_id>/<image-uuid>.png")
        queue_id = match.group(1)
        path = self.root / queue_id / f"{match.group(2)}.png"
        with self._locked():
            # Neither the file nor its job folder may lead out of the library.
            if path.parent.is_symlink() or path.is_symlink() or not path.is_file():
                return False
            entries = self._read_index_locked()
            index = next((i for i, e in enumerate(entries) if e.get("queue_id") == queue_id), None)
            if index is not None:
                entry = entries[index]
                remaining = {name: [url for url in entry[name] if url != relative_url]
                             for name in ("generated_images", "extended_images") if name in entry}
                if not any(remaining.values()):
                    return self._delete_job_locked(queue_id, entries)
                # A new dict: the cached entries stay as they were until the file is replaced.
                entries[index] = {**entry, **remaining}
                _write_atomically(self.root / queue_id / JOB_FILE_NAME, _dump(entries[index]))
                self._write_index_locked(entries)
            path.unlink(missing_ok=True)
            return True

    def delete_job(self, queue_id: str) -> bool:
        """Delete a job's entry and its files; False when there is no such job."""
        _check_uuid(queue_id, "queue_id")
        with self._locked():
            return self._delete_job_locked(queue_id, self._read_index_locked())

    def _delete_job_locked(self, queue_id: str, entries: list[dict]) -> bool:
        """True only when something of the job was removed: a folder that the library did not
        write (no job.json, no images of ours) is not a job and stays as it is."""
        job_dir = self.root / queue_id
        kept = [e for e in entries if e.get("queue_id") != queue_id]
        removed = len(kept) != len(entries)
        on_disk = job_dir.is_dir() and not job_dir.is_symlink()
        # job.json first, so a crash part-way can never bring the job back in a rebuild.
        if on_disk and (job_dir / JOB_FILE_NAME).is_file():
            (job_dir / JOB_FILE_NAME).unlink()
            removed = True
        if len(kept) != len(entries):
            self._write_index_locked(kept)
        if on_disk:
            for path in job_dir.iterdir():
                if _IMAGE_NAME_RE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed = True
            if removed:
                try:
                    job_dir.rmdir()
                except OSError:
                    log.warning("left %s in place: it holds files the library did not write", job_dir)
        return removed

    # -- recovery ------------------------------------------------------------------------

    def rebuild(self, force: bool = False) -> bool:
        """Recreate library.json from the job folders when it is missing or invalid
        (or always, with force). Entries only in the old index are kept. True if rewritten."""
        with self._locked():
            existing = None
            if self.index_path.exists():
                existing = self._parse_index(self.index_path.read_bytes())
                if existing is not None and not force:
                    return False
            by_id = {e.get("queue_id"): e for e in existing or []}
            by_id.update((e["queue_id"], e) for e in self._entries_from_job_files())
            if existing is None and not by_id and not self.index_path.exists():
                return False  # a new, empty library: nothing to rebuild
            self._write_index_locked(list(by_id.values()))
            return True

    def _entries_from_job_files(self) -> list[dict]:
        entries = []
        for job_file in self.root.glob(f"*/{JOB_FILE_NAME}"):
            if not _UUID_RE.fullmatch(job_file.parent.name):
                continue
            try:
                entry = json.loads(job_file.read_bytes())
            except (OSError, ValueError):
                log.warning("skipping unreadable %s", job_file)
                continue
            if isinstance(entry, dict) and entry.get("queue_id") == job_file.parent.name:
                entries.append(entry)
        return entries

    @contextmanager
    def _locked(self):
        # FileLock excludes other processes; the thread lock, this process's other threads.
        with self._thread_lock, self._file_lock:
            yield
