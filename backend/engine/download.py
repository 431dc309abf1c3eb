"""Files of a Hugging Face hub repository into the hub's cache layout: resumable, with progress.

huggingface_hub's own downloader writes into a process-unique temporary file and deletes it
when a transfer fails, so an interrupted 10 GB download starts over. Here the hub client only
answers the metadata (`hf_hub_url`, `get_hf_file_metadata`: commit, etag, size, where the
bytes are; HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE as everywhere else), and the transfer is
ours: plain HTTP, appending to `blobs/<etag>.part` with `Range` requests, so what reached the
disk survives a crash or a restart. For xet-backed repositories the resolve URL redirects to a
bridge that serves the file over plain HTTP with Range, so xet (and its HF_XET_* settings) is
not used for these files.

The layout is the hub client's, so `try_to_load_from_cache`, `hf download` and `hf cache`
share it with us:

    <hub_cache>/models--<org>--<name>/blobs/<etag>               the file
                                     /blobs/<etag>.part          a download under way
                                     /snapshots/<commit>/<file>  -> ../../blobs/<etag>
                                     /refs/<branch>              the commit a branch was at
                                     /.no_exist/<commit>/<file>  the repository lacks the file
    <hub_cache>/.locks/models--<org>--<name>/<etag>.lock         one downloader per file
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import requests
from filelock import FileLock, Timeout

from .progress import LoadProgress, human_bytes

log = logging.getLogger(__name__)

COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")  # the hub's etag of an LFS file is its sha256
CHUNK_BYTES = 256 * 1024  # what a crash can lose of a transfer; also the progress step
# Once a transfer is under way the hub was reachable, so a failure is likely a passing one: an
# attempt that brought bytes is retried at once from where it stopped; attempts that bring none
# wait longer each time (2, 4, 8, 16, 30, 30 s) before the download gives up (its bytes kept).
RETRIES_WITHOUT_PROGRESS = 6
MAX_RETRY_WAIT_SECS = 30
CONNECT_TIMEOUT_SECS = 10
READ_TIMEOUT_SECS = 60


class DownloadError(Exception):
    """A file could not be downloaded; the message says what happened in a user's words."""


class NotInRepository(DownloadError):
    """The repository (at that revision) has no such file."""


class DiskFull(DownloadError):
    """The cache's disk has no room for the file."""


def download_repo(repo: str, revision: str | None, files, hub_cache: Path, *, optional=(),
                  progress: LoadProgress | None = None, endpoint: str | None = None,
                  token: str | bool | None = None, retry_delay: float = 2.0) -> Path:
    """The snapshot folder of `repo` at `revision` (None: main) holding `files` and those of
    `optional` the repository has; files already in the cache are used without asking the hub."""
    return RepoDownload(repo, revision, Path(hub_cache), progress or LoadProgress(), endpoint, token,
                        retry_delay).run(tuple(files), tuple(optional))


class RepoDownload:
    """Brings one repository's files at one commit into the cache."""

    def __init__(self, repo: str, revision: str | None, hub_cache: Path, progress: LoadProgress,
                 endpoint: str | None, token, retry_delay: float):
        from huggingface_hub import constants

        self.repo = repo
        self.revision = revision or "main"
        self.hub_cache = hub_cache
        self.storage = hub_cache / f"models--{repo.replace('/', '--')}"
        self.progress = progress
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token
        self.retry_delay = retry_delay
        # Once known, every file is asked for at this commit, so all land in one snapshot folder
        # even if the branch moves meanwhile.
        self.commit = self.revision if COMMIT_HASH.match(self.revision) else self._read_ref()

    def run(self, files: tuple[str, ...], optional: tuple[str, ...]) -> Path:
        from huggingface_hub import constants

        missing = [name for name in files if not self._cached(name)]
        missing_optional = [name for name in optional if not self._cached(name)]
        offline = constants.HF_HUB_OFFLINE
        if missing and offline:
            raise DownloadError("offline: HF_HUB_OFFLINE is set")
        for name in missing:
            self._fetch(name)
        for name in [] if offline else missing_optional:
            try:
                self._fetch(name)
            except DownloadError as error:  # only a nicety (hashtag splitting): go on without it
                log.warning("skipping optional file %s/%s: %s", self.repo, name, error)
        return self.storage / "snapshots" / self.commit

    # ------------------------------------------------------------ the cache

    def _read_ref(self) -> str | None:
        try:
            return (self.storage / "refs" / self.revision).read_text().strip() or None
        except OSError:
            return None

    def _cached(self, name: str) -> bool:
        """True if the file is in the cache, or the cache knows the repository lacks it."""
        from huggingface_hub import try_to_load_from_cache

        if self.commit is None:
            return False
        return try_to_load_from_cache(self.repo, name, cache_dir=self.hub_cache, revision=self.commit) is not None

    def _link(self, name: str, blob: Path) -> None:
        """snapshots/<commit>/<name> -> the blob: a relative symlink, as the hub client makes, or a
        copy where the file system has no symlinks."""
        pointer = self.storage / "snapshots" / self.commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(pointer):
            return
        staged = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}")
        try:
            os.symlink(os.path.relpath(blob, pointer.parent), staged)
        except OSError:
            shutil.copyfile(blob, staged)
        os.replace(staged, pointer)

    def _write_ref(self) -> None:
        if self.revision == self.commit:
            return
        ref = self.storage / "refs" / self.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        staged = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}")
        staged.write_text(self.commit)
        os.replace(staged, ref)

    def _mark_absent(self, name: str, commit: str | None) -> None:
        # The hub client's marker: try_to_load_from_cache answers "not in the repository" from now on.
        if commit or self.commit:
            marker = self.storage / ".no_exist" / (commit or self.commit) / name
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    # ------------------------------------------------------------ one file

    def _metadata(self, name: str):
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import HfHubHTTPError

        url = hf_hub_url(self.repo, name, revision=self.commit or self.revision, endpoint=self.endpoint)
        try:
            metadata = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        except HfHubHTTPError as error:
            response = error.response
            status = getattr(response, "status_code", None)
            if status == 404 and response.headers.get("X-Error-Code") == "EntryNotFound":
                self._mark_absent(name, response.headers.get("X-Repo-Commit"))
                raise NotInRepository(f"{self.repo}@{self.revision} has no {name}") from error
            hint = " (a private or gated repository needs HF_TOKEN)" if status in (401, 403) else ""
            raise DownloadError(f"HTTP {status} from {url}{hint}") from error
        except Exception as error:  # connection refused, DNS, timeouts, proxies: the network
            raise DownloadError(f"cannot reach {self.endpoint} ({type(error).__name__}: {error})") from error
        if not metadata.commit_hash or not metadata.etag:
            raise DownloadError(f"{url} did not answer like a Hugging Face hub (no commit or ETag): "
                                f"check HF_ENDPOINT and proxies")
        return url, metadata

    def _fetch(self, name: str) -> None:
        url, metadata = self._metadata(name)
        if self.commit is None:
            self.commit = metadata.commit_hash
        self._write_ref()
        blob = self.storage / "blobs" / metadata.etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        label = f"{self.repo}/{name}"
        if not blob.is_file():
            with self._blob_lock(metadata.etag, label, metadata.size):
                if not blob.is_file():  # else another process finished it while we waited
                    self._download_blob(name, label, url, metadata, blob)
        self._link(name, blob)

    def _blob_lock(self, etag: str, label: str, size: int | None):
        """The blob's lock (the hub client's lock file too), taken; while another process holds
        it, its progress is reported from the size of its `.part` file."""
        path = self.hub_cache / ".locks" / self.storage.name / f"{etag}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        part = _part_of(self.storage / "blobs" / etag)
        while True:
            try:
                return lock.acquire(timeout=1)  # a context manager that releases it
            except Timeout:
                self.progress.file(label, _size(part), size)

    def _download_blob(self, name: str, label: str, url: str, metadata, blob: Path) -> None:
        part = _part_of(blob)
        # The hub client writes `<etag>.<random>.incomplete` under this same lock, so any there now
        # were left by a killed `hf download` or an older playground: gigabytes nobody will resume.
        for stale in blob.parent.glob(f"{blob.name}.*.incomplete"):
            stale.unlink(missing_ok=True)
        for _attempt in (1, 2):
            self._transfer(name, label, url, metadata, part)
            if _verified(part, metadata.etag):
                os.replace(part, blob)
                return
            # Corrupt (a broken lock on a network file system, a disk error): never load it.
            log.warning("%s: the downloaded bytes do not match their sha256; downloading it again", label)
            part.unlink()
        raise DownloadError(f"{label} arrived twice with a sha256 other than {metadata.etag}")

    def _transfer(self, name: str, label: str, url: str, metadata, part: Path) -> None:
        """Make `part` hold all of the file's bytes, resuming from what it already holds."""
        etag, failures, retrying = metadata.etag, 0, False
        while True:
            have = _size(part)
            try:
                if retrying:  # a signed CDN address may have expired: ask where the bytes are again
                    url, metadata = self._metadata(name)
                    if metadata.etag != etag:
                        raise DownloadError(f"{label} changed on the hub while downloading")
                total = metadata.size
                if total is not None and have > total:  # not this file's beginning: start over
                    part.unlink()
                    have = 0
                if total is not None and have == total:
                    return
                self.progress.file(label, have, total)
                _check_free_space(part.parent, (total or 0) - have)
                total = self._get(metadata.location, url, label, part, have, total)
                if total is None or _size(part) == total:
                    self.progress.file(label, _size(part), total)
                    return
                raise DownloadError(f"the connection closed after {_size(part)} of {total} bytes")
            except (DiskFull, NotInRepository):
                raise
            except DownloadError as error:
                if _size(part) > have:
                    failures = 0  # it moved: resume at once
                else:
                    failures += 1
                    if failures > RETRIES_WITHOUT_PROGRESS:
                        kept = (f" ({human_bytes(have)} are kept in the cache; the next start resumes there)"
                                if have else "")
                        raise DownloadError(f"{error}{kept}") from error
                    time.sleep(min(self.retry_delay * 2 ** (failures - 1), MAX_RETRY_WAIT_SECS))
                log.info("%s: %s; trying again from %s", label, error, human_bytes(_size(part)))
                retrying = True

    def _get(self, location: str, url: str, label: str, part: Path, have: int, total: int | None) -> int | None:
        """One GET of the bytes from `have` on, appended to `part`; returns the file's size."""
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=self.token)
        if _origin(location) != _origin(url):
            headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub
        headers["Accept-Encoding"] = "identity"  # byte offsets must be the file's
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with requests.get(location, headers=headers, stream=True,
                              timeout=(CONNECT_TIMEOUT_SECS, READ_TIMEOUT_SECS)) as response:
                status = response.status_code
                if status == 416 or (status == 206 and _range_start(response) != have):
                    part.unlink(missing_ok=True)  # the server disagrees about what we hold: start over
                    raise DownloadError(f"HTTP {status} for bytes {have}- of {label}")
                if status not in (200, 206):
                    raise DownloadError(f"HTTP {status} from {location}")
                if status == 200 and have:
                    log.info("%s: the server ignored the Range request; downloading from the start", label)
                    have = 0
                if total is None:
                    total = _size_from(response)
                with open(part, "ab" if have else "wb") as file:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        file.write(chunk)
                        have += len(chunk)
                        self.progress.file(label, have, total)
        except requests.RequestException as error:  # refused, reset, cut short, timed out
            raise DownloadError(f"the transfer from {_origin_text(location)} failed "
                                f"({type(error).__name__}: {error})") from error
        except OSError as error:
            if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise DiskFull(f"the disk is full at {part.parent} after {human_bytes(have)} of {label} "
                               f"(free some space and start again: the download resumes)") from error
            raise
        return total


def _part_of(blob: Path) -> Path:
    return blob.with_name(blob.name + ".part")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _verified(part: Path, etag: str) -> bool:
    """An LFS file's etag is its sha256: check it. Other etags (git hashes of small files) are
    not checked; their size was."""
    if not SHA256.match(etag):
        return True
    digest = hashlib.sha256()
    with open(part, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest() == etag


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskFull(f"the disk at {folder} has {human_bytes(free)} free; {human_bytes(needed)} more are "
                            f"needed (free some space and start again: the download resumes)")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def _range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _size_from(response: requests.Response) -> int | None:
    if response.status_code == 206:
        match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None
