"""The library folder: one folder per finished job plus the `library.json` index.

    library.json                   every entry, newest first (what GET /getlibrary returns)
    library.json.lock              the lock every writer (scheduler, frontend) takes
    <queue_id>/job.json            the job's own entry, from which library.json can be rebuilt
    <queue_id>/<image-uuid>.png    the images
    <queue_id>/<uuid>.webp         each image's reveal (its previews, animated), when kept
    .staging/<queue_id>.<claim>/   an attempt's result until its commit is known (add_job)

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
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import filelock
from filelock import FileLock

from playground.queue import UUID_PATTERN

log = logging.getLogger(__name__)

INDEX_NAME = "library.json"
STAGING_DIR = ".staging"  # results written but not yet committed (add_job)
# What became of a staged attempt (recover_staged).
COMMITTED, LOST, PENDING = "committed", "lost", "pending"
JOB_FILE_NAME = "job.json"
_UUID_RE = re.compile(UUID_PATTERN)
_IMAGE_URL_RE = re.compile(rf"library/({UUID_PATTERN})/({UUID_PATTERN})\.png")
_IMAGE_NAME_RE = re.compile(rf"{UUID_PATTERN}\.(png|webp)")
_TOKEN_RE = re.compile(r"[0-9]{1,12}")
REQUIRED_FIELDS = ("queue_id", "text_prompt", "creation_unixtime")


# An entry's lists with one element per generated image, in the same order.
PER_IMAGE_FIELDS = ("clip_scores", "candidate_indices")

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


class Attempt(Protocol):
    """The attempt (a queue claim) whose result is added: the library's writes are fenced by it."""

    token: str  # digits: names its staging folder

    def still_current(self) -> float | None:
        """The queue's time if the job is still this attempt's, else None."""

    def commit(self, urls: list[str]) -> bool:
        """Record the job as done with these images; False if it is no longer this attempt's."""


def _image_names(entry: dict) -> list[str]:
    """The file names of an entry's pictures: its images, the taller pictures it made, the reveals."""
    return [url.rsplit("/", 1)[1] for url in [*entry.get("generated_images", []), *entry.get("extended_images", []),
                                               *entry.get("reveal_images", [])]]


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

    def add_job(self, entry: dict, images: list[bytes], extended: list[bytes] = (),
                attempt: Attempt | None = None, reveals: list[bytes] = ()) -> dict | None:
        """Store a finished job's PNGs and entry; returns the entry with `generated_images`
        (and with `extended_images`, the taller pictures of a job that extended a picture, and
        `reveal_images`, each image's previews as an animated WebP, when they were kept).

        With `attempt`, only the attempt that really finishes the job reaches the library: the
        PNGs are first written to `.staging/<queue_id>.<attempt.token>/`, out of sight; then,
        under the library's lock, the attempt is asked whether the job is still its own (None
        is returned if not, and nothing touched), the job is published, and the attempt
        commits. A refused commit (the job was taken over meanwhile) takes the job out again.
        The staging folder stays until the outcome is known, so `recover_staged` can finish
        or undo what a crash interrupted. Adding a queue_id that is already there replaces it.
        """
        missing = [name for name in REQUIRED_FIELDS if name not in entry]
        if missing:
            raise ValueError(f"library entry lacks {', '.join(missing)}")
        queue_id = _check_uuid(entry["queue_id"], "queue_id")
        token = attempt.token if attempt else "0"
        if not _TOKEN_RE.fullmatch(token):
            raise ValueError(f"an attempt's token must be digits, got {token!r}")
        staging = self.root / STAGING_DIR / f"{queue_id}.{token}"
        pngs = {f"{uuid.uuid4()}.png": png for png in [*images, *extended]}
        pngs.update({f"{uuid.uuid4()}.webp": webp for webp in reveals})
        urls = [f"library/{queue_id}/{name}" for name in pngs]
        entry = {**entry, "generated_images": urls[:len(images)]}
        if extended:
            entry["extended_images"] = urls[len(images):len(images) + len(extended)]
        entry.pop("reveal_images", None)  # only the reveals written now: none of an entry given again
        if reveals:
            entry["reveal_images"] = urls[len(images) + len(extended):]
        staging.mkdir(parents=True, exist_ok=True)
        in_doubt = False  # whether the staged folder may describe a published or committed job
        try:
            for name, png in pngs.items():
                _write_atomically(staging / name, png)
            _write_atomically(staging / JOB_FILE_NAME, _dump(entry))
            with self._locked():
                if attempt is not None:
                    now = attempt.still_current()
                    if now is None:
                        return None
                    entry["creation_unixtime"] = now
                # From here on an error (Redis gone mid-commit, a full disk) leaves the folder
                # staged: recover_staged asks the queue what became of the attempt.
                in_doubt = True
                self._publish_locked(staging, entry)
                if attempt is not None and not attempt.commit(entry["generated_images"]):
                    self._unpublish_locked(staging, entry)
                    in_doubt = False
                    return None
                in_doubt = False
                return entry
        finally:
            if not in_doubt:
                shutil.rmtree(staging, ignore_errors=True)

    def _publish_locked(self, staging: Path, entry: dict) -> None:
        """Move a staged job into its folder and the index (replacing an earlier attempt's)."""
        queue_id = entry["queue_id"]
        job_dir = self.root / queue_id
        job_dir.mkdir(exist_ok=True)
        names = _image_names(entry)
        stale = [p for p in job_dir.iterdir() if _IMAGE_NAME_RE.fullmatch(p.name) and p.name not in names]
        for name in names:
            os.replace(staging / name, job_dir / name)
        _write_atomically(job_dir / JOB_FILE_NAME, _dump(entry))
        entries = [e for e in self._read_index_locked() if e.get("queue_id") != queue_id]
        entries.append(entry)
        self._write_index_locked(entries)
        for path in stale:
            path.unlink(missing_ok=True)

    def _unpublish_locked(self, staging: Path, entry: dict) -> None:
        """Take out whatever of `entry` a publish put in place (all of it, or part of it)."""
        queue_id = entry["queue_id"]
        job_dir = self.root / queue_id
        entries = self._read_index_locked()
        listed = next((e for e in entries if e.get("queue_id") == queue_id), None)
        if listed is not None and listed.get("generated_images") == entry["generated_images"]:
            self._delete_job_locked(queue_id, entries)
        for name in _image_names(entry):
            (job_dir / name).unlink(missing_ok=True)
        # A publish cut short after job.json, before the index: its job.json goes too, else a
        # rebuild would list pictures that are gone.
        job_file = job_dir / JOB_FILE_NAME
        try:
            written = json.loads(job_file.read_bytes())
        except (OSError, ValueError):
            written = None
        if isinstance(written, dict) and written.get("generated_images") == entry["generated_images"]:
            job_file.unlink(missing_ok=True)
        if job_dir.is_dir() and not job_dir.is_symlink() and not any(job_dir.iterdir()):
            job_dir.rmdir()

    def recover_staged(self, resolve) -> dict[str, int]:
        """Finish or undo what a crash left in `.staging`. `resolve(queue_id, token)` says
        what became of that attempt: COMMITTED (its job is in the library: the staging
        folder goes), LOST (it never will commit: whatever it published is taken out) or
        PENDING (it may still commit: left alone). Returns how many were kept and undone.

        It never waits for the library's lock: it runs in a scheduler's heartbeat thread, which
        a writer paused inside the lock (SIGSTOP, a slow disk) must not stall past the
        heartbeat's time to live. What it could not look at waits for the next sweep."""
        counts = {"kept": 0, "undone": 0}
        folder = self.root / STAGING_DIR
        if not folder.is_dir():
            return counts
        for staging in sorted(folder.iterdir()):
            queue_id, _, token = staging.name.partition(".")
            if not (_UUID_RE.fullmatch(queue_id) and _TOKEN_RE.fullmatch(token)) or staging.is_symlink():
                continue
            with self._locked(wait=False) as free:
                if not free:
                    break
                if not staging.is_dir():
                    continue
                outcome = resolve(queue_id, token)
                if outcome == PENDING:
                    continue
                if outcome == LOST:
                    try:
                        entry = json.loads((staging / JOB_FILE_NAME).read_bytes())
                    except (OSError, ValueError):
                        entry = None  # cut short while staging: nothing was published
                    if isinstance(entry, dict) and entry.get("queue_id") == queue_id:
                        self._unpublish_locked(staging, entry)
                    counts["undone"] += 1
                else:
                    counts["kept"] += 1
                shutil.rmtree(staging, ignore_errors=True)
        return counts

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
                # Lists that run along generated_images (Best of N) lose the same place.
                generated = entry.get("generated_images") or []
                if relative_url in generated:
                    at = generated.index(relative_url)
                    for name in PER_IMAGE_FIELDS:
                        if isinstance(entry.get(name), list) and len(entry[name]) == len(generated):
                            remaining[name] = entry[name][:at] + entry[name][at + 1:]
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
    def _locked(self, wait: bool = True):
        """Holds the library (yields True). FileLock excludes other processes; the thread lock,
        this process's other threads. With `wait=False` it yields False at once instead of
        waiting for whoever holds it."""
        if not self._thread_lock.acquire(blocking=wait):
            yield False
            return
        try:
            try:
                self._file_lock.acquire(timeout=-1 if wait else 0)
            except filelock.Timeout:
                yield False
                return
            try:
                yield True
            finally:
                self._file_lock.release()
        finally:
            self._thread_lock.release()
