"""The library folder: one folder per finished job plus the `library.json` index.

    library.json                   every entry, newest first (what GET /getlibrary returns)
    library.json.lock              the lock every writer (scheduler, frontend) takes
    <queue_id>/job.json            the job's own entry, from which library.json can be rebuilt
    <queue_id>/<image-uuid>.png    the images
    <queue_id>/<uuid>.webp         each image's reveal (its previews, animated), when kept
    .staging/<queue_id>.<claim>/   an attempt's result until it is published (add_job)

Every write of a JSON file goes to a temporary file that then replaces the old one, so a
reader or a crash never sees half a file; every change of library.json happens under the
lock, so a delete racing a job's completion cannot drop either change. Adding a job reads
only library.json and the job's own folder, never the whole library.
"""
from __future__ import annotations

import base64
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

from playground import pictures
from playground.queue import UUID_PATTERN, Job
from playground.request_fields import (ENTRY, SAMPLING, START, TEXT, UPSCALE_AFTER, UPSCALE_MODEL, UPSCALE_OF,
                                       taken_by)

log = logging.getLogger(__name__)

INDEX_NAME = "library.json"
STAGING_DIR = ".staging"  # results written but not yet committed (add_job)
# What became of a staged attempt (recover_staged).
COMMITTED, LOST, PENDING = "committed", "lost", "pending"
UNFENCED_TOKEN = "0"  # names the staging folder of a write made without a queue claim (no claim is 0)
JOB_FILE_NAME = "job.json"
_UUID_RE = re.compile(UUID_PATTERN)
_IMAGE_URL_RE = re.compile(rf"library/({UUID_PATTERN})/({UUID_PATTERN})\.png")
_IMAGE_NAME_RE = re.compile(rf"{UUID_PATTERN}\.(png|webp)")
_TOKEN_RE = re.compile(r"[0-9]{1,12}")
REQUIRED_FIELDS = ("queue_id", "text_prompt", "creation_unixtime")
UPSCALE_SCALE = "upscale_scale"  # an upscale job's entry: how many times larger its picture is
UPSCALE_JOBS = "upscale_jobs"  # a job's entry that asked `upscale`: the upscale job of each picture, in order


# An entry's lists with one element per generated image, in the same order.
PER_IMAGE_FIELDS = ("clip_scores", "candidate_indices", "cells")
SHEET_IMAGE = "sheet_image"  # a grid job's entry: its labelled sheet (playground/grid.py), no picture of its own


def job_entry(job: Job, done: dict, image_count: int, model: str | None, backend_url: str,
              process_time_secs: float, upscale_jobs: list[str] = ()) -> dict:
    """A finished job's entry (before add_job gives its pictures and the commit its time): its
    request by the entry's names, with the values the backend says it used (`done`, the
    protocol's done event); a continuation's start; Best of N's choice; the kept previews; the
    upscale jobs its commit queues (`upscale_jobs`, one per picture)."""
    used = done.get("params") or {}
    entry = {
        "queue_id": job.id,
        TEXT.library_name: job.text,
        "creation_unixtime": 0.0,  # set to the queue's time of the commit
        "process_time_secs": round(process_time_secs, 3),
        "seed": int(done.get("seed", job.seed)),
        "num_images": image_count,
        **{field.library_name: used.get(field.name, getattr(job, field.name)) for field in SAMPLING},
        "model": done.get("model") or model,
        "backend": backend_url,
        "secs_per_image": round(process_time_secs / max(1, image_count), 3),
    }
    if job.keep_rows is not None:
        entry.update({field.library_name: getattr(job, field.name) for field in taken_by(ENTRY, START)})
        entry["init_source"] = (done.get("start") or {}).get("source", job.init_source)
    if done.get("candidate_indices") is not None:  # Best of N: which candidates, their scores
        entry.update(candidates=done.get("candidates"), ranked=bool(done.get("ranked")),
                     candidate_indices=done["candidate_indices"], clip_scores=done.get("clip_scores"))
    if job.keep_previews:
        entry["keep_previews"] = True  # the option, in the job's folder with its reveals
    if upscale_jobs:
        entry.update({UPSCALE_AFTER.library_name: job.upscale, UPSCALE_JOBS: list(upscale_jobs)})
    if job.grid is not None:  # a grid sweep: its axes, and each picture's own values (with its seed)
        entry.update(grid=json.loads(job.grid), cells=done.get("cells"))
    if job.upscale_of is not None:  # an upscale: its picture, and the upscaler that enlarged it how much
        entry.update({UPSCALE_OF.library_name: job.upscale_of, UPSCALE_MODEL.library_name: done.get("model"),
                      UPSCALE_SCALE: (done.get("params") or {}).get("scale")})
    return entry


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

    def commit(self, urls: list[str]) -> float | None:
        """Record the job as done with these images, in one atomic step with the check that the
        job is still this attempt's; the queue's time of it, or None if refused (taken over,
        or cancelled at the last moment)."""


def _image_names(entry: dict) -> list[str]:
    """The file names of an entry's pictures: its images, the taller pictures it made, the reveals."""
    sheet = [entry[SHEET_IMAGE]] if isinstance(entry.get(SHEET_IMAGE), str) else []
    return [url.rsplit("/", 1)[1] for url in [*entry.get("generated_images", []), *entry.get("extended_images", []),
                                               *entry.get("reveal_images", []), *sheet]]


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
                attempt: Attempt | None = None, reveals: list[bytes] = (), sheet: bytes | None = None) -> dict | None:
        """Store a finished job's PNGs and entry; returns the entry with `generated_images`
        (and with `extended_images`, the taller pictures of a job that extended a picture, and
        `reveal_images`, each image's previews as an animated WebP, when they were kept; and
        `sheet_image`, a grid job's labelled sheet).

        With `attempt`, the queue is the commit point: the PNGs are first written to
        `.staging/<queue_id>.<attempt.token>/`, out of sight; then, under the library's lock,
        the attempt commits (the claim check and "done" are one step in Redis) and only a
        commit that went through is published, before the lock is let go. A refused commit
        (the job was taken over, or cancelled) returns None with nothing ever visible, however
        long the writer was paused anywhere on the way. A commit whose answer was lost, or a
        publish cut short, leaves the staging folder for `recover_staged` to settle. Adding a
        queue_id that is already there replaces it.
        """
        missing = [name for name in REQUIRED_FIELDS if name not in entry]
        if missing:
            raise ValueError(f"library entry lacks {', '.join(missing)}")
        queue_id = _check_uuid(entry["queue_id"], "queue_id")
        token = attempt.token if attempt else UNFENCED_TOKEN
        if not _TOKEN_RE.fullmatch(token):
            raise ValueError(f"an attempt's token must be digits, got {token!r}")
        staging = self.root / STAGING_DIR / f"{queue_id}.{token}"
        pngs = {f"{uuid.uuid4()}.png": png for png in [*images, *extended]}
        pngs.update({f"{uuid.uuid4()}.webp": webp for webp in reveals})
        if sheet is not None:
            pngs[f"{uuid.uuid4()}.png"] = sheet
        urls = [f"library/{queue_id}/{name}" for name in pngs]
        entry = {**entry, "generated_images": urls[:len(images)]}
        if extended:
            entry["extended_images"] = urls[len(images):len(images) + len(extended)]
        entry.pop("reveal_images", None)  # only the reveals written now: none of an entry given again
        if reveals:
            entry["reveal_images"] = urls[len(images) + len(extended):len(images) + len(extended) + len(reveals)]
        entry.pop(SHEET_IMAGE, None)
        if sheet is not None:
            entry[SHEET_IMAGE] = urls[-1]
        if attempt is None:
            # Unfenced (tools, tests): staged inside the lock, so the staging sweep, which looks
            # only while it holds the lock, never sees it half-written.
            with self._locked():
                self._stage(staging, pngs, entry)
                return self._commit_and_publish_locked(staging, entry, None)
        # Fenced: staged first, without holding up the other writers; the sweep leaves the
        # folder alone while its claim still runs.
        self._stage(staging, pngs, entry)
        with self._locked():
            return self._commit_and_publish_locked(staging, entry, attempt)

    def _stage(self, staging: Path, files: dict[str, bytes], entry: dict) -> None:
        staging.mkdir(parents=True, exist_ok=True)
        try:
            for name, data in files.items():
                _write_atomically(staging / name, data)
            _write_atomically(staging / JOB_FILE_NAME, _dump(entry))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _commit_and_publish_locked(self, staging: Path, entry: dict, attempt: Attempt | None) -> dict | None:
        """Commit, then publish. The staging folder goes before the lock is let go unless its
        outcome is in doubt, so a sweep never takes a live writer's folder for a crash's."""
        if attempt is not None:
            # An error here leaves the folder: Redis may have committed with its answer lost.
            committed_at = attempt.commit(entry["generated_images"])
            if committed_at is None:
                shutil.rmtree(staging, ignore_errors=True)
                return None
            entry["creation_unixtime"] = committed_at
        try:
            self._publish_locked(staging, entry)
        except OSError:
            if attempt is None:
                raise
            # Done in the queue: the result stays staged, and a sweep finishes publishing it.
            log.exception("job %s: committed, but its publishing failed; a sweep will finish it", entry["queue_id"])
            return entry
        shutil.rmtree(staging, ignore_errors=True)
        return entry

    def picture(self, url: str) -> bytes | None:
        """A library picture's bytes ("library/<queue_id>/<image>.png"), None when it is gone."""
        try:
            return (self.root / url.removeprefix("library/")).read_bytes()
        except OSError:
            return None

    def published_picture(self, url: str, resolve) -> bytes | None:
        """A library picture an upscale job enlarges. One queued by its source job's commit may be
        on its way still: the commit is made under the lock and published before it is let go,
        so its writer is waited for; a publish a crash cut short is finished (recover_staged,
        `resolve` as there). None when it is gone."""
        picture = self.picture(url)
        if picture is None:
            with self._locked():
                pass
            self.recover_staged(resolve)
            picture = self.picture(url)
        return picture

    def start_picture(self, job: Job) -> bytes | None:
        """The picture a continuation started from: the library's file, or the upload (None
        when the file was deleted from the library since the job was queued)."""
        if job.init_image is None:
            try:
                return base64.b64decode(job.init_picture or "", validate=True)
            except ValueError as exc:  # binascii.Error is one
                raise pictures.BadStart(f"the start picture {exc}") from None
        try:
            return (self.root / job.init_image.removeprefix("library/")).read_bytes()
        except OSError as exc:
            log.warning("job %s: no start picture to extend (%s)", job.id, exc)
            return None

    def publishing(self, queue_id: str, token: str) -> bool:
        """Whether a result staged under this claim is still on its way into the library (a
        committed one is published under the same lock hold, or by a later sweep)."""
        return (self.root / STAGING_DIR / f"{queue_id}.{token}").is_dir()

    def _publish_locked(self, staging: Path, entry: dict) -> None:
        """Move a staged job into its folder and the index (replacing what was there). Doing it
        again after an interruption finishes it: what was moved already is not looked for."""
        queue_id = entry["queue_id"]
        job_dir = self.root / queue_id
        job_dir.mkdir(exist_ok=True)
        names = _image_names(entry)
        stale = [p for p in job_dir.iterdir() if _IMAGE_NAME_RE.fullmatch(p.name) and p.name not in names]
        for name in names:
            if (staging / name).is_file() or not (job_dir / name).is_file():
                os.replace(staging / name, job_dir / name)
        _write_atomically(job_dir / JOB_FILE_NAME, _dump(entry))
        entries = [e for e in self._read_index_locked() if e.get("queue_id") != queue_id]
        entries.append(entry)
        self._write_index_locked(entries)
        for path in stale:
            path.unlink(missing_ok=True)

    def recover_staged(self, resolve) -> dict[str, int]:
        """Finish or undo what a crash left in `.staging`. `resolve(queue_id, token)` says
        what became of that attempt, with the queue's time of its commit: COMMITTED (the
        queue has it done: it is published, or its publishing finished, and the folder goes),
        LOST (it never will commit: the folder goes) or PENDING (it may still commit: left
        alone). An unfenced write's folder seen here was left by a crash (its writer holds the
        lock from staging to the end); it is published if its staging was complete. Returns how
        many were published and how many removed.

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
                if token == UNFENCED_TOKEN:  # a complete staging is its own commit
                    entry = self._staged_entry(staging, queue_id)
                    outcome, committed_at = (COMMITTED, entry["creation_unixtime"]) if entry else (LOST, None)
                else:
                    outcome, committed_at = resolve(queue_id, token)
                    if outcome == PENDING:
                        continue
                    # Only a committed result is read: a running claim's folder is left unread.
                    entry = self._staged_entry(staging, queue_id) if outcome == COMMITTED else None
                if outcome == COMMITTED and entry is not None:
                    self._publish_locked(staging, {**entry, "creation_unixtime": committed_at})
                    counts["kept"] += 1
                else:
                    counts["undone"] += 1
                shutil.rmtree(staging, ignore_errors=True)
        return counts

    @staticmethod
    def _staged_entry(staging: Path, queue_id: str) -> dict | None:
        try:
            entry = json.loads((staging / JOB_FILE_NAME).read_bytes())
        except (OSError, ValueError):
            return None  # cut short while staging
        return entry if isinstance(entry, dict) and entry.get("queue_id") == queue_id else None

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
                if relative_url == entry.get(SHEET_IMAGE):  # a grid's sheet: its pictures stay
                    remaining[SHEET_IMAGE] = None
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
