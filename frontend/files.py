"""Serving files from one folder only: URL paths are checked before and after resolving.

A request path is refused (None) when, after one percent-decoding, it holds `..` or `.`
segments, hidden names, backslashes, NUL or other control characters, a `%` (double
encoding), a drive letter, or when the resolved file (symlinks followed) is not a regular
file inside the folder.
"""
from __future__ import annotations

import mimetypes
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".yaml": "application/yaml",
}
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\%:]")


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.types_map.get(suffix) or "application/octet-stream"


def safe_relative_parts(url_path: str) -> list[str] | None:
    """The path segments of `url_path` (query already removed), or None when it is not a plain
    relative path."""
    try:
        decoded = unquote(url_path, errors="strict")
    except UnicodeDecodeError:
        return None
    if _FORBIDDEN.search(decoded):
        return None
    parts = [part for part in decoded.split("/") if part]
    if not parts or any(part.startswith(".") for part in parts):
        return None
    return parts


def resolve_inside(root: Path, parts: list[str]) -> Path | None:
    """The regular file root/parts with symlinks resolved, if it still lies inside root."""
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, candidate]) != real_root or candidate == real_root:
        return None
    if not os.path.isfile(candidate):
        return None
    return Path(candidate)


@dataclass(frozen=True)
class FileContent:
    body: bytes
    content_type: str


class FileCache:
    """Whole-file contents keyed by path, reread when size or mtime change.

    UI files and PNGs are small; files up to `max_cached_bytes` are kept (oldest evicted first
    once `max_total_bytes` are held); bigger ones, up to `max_file_bytes`, are read each time.
    """

    def __init__(self, max_total_bytes: int = 64 * 1024 * 1024, max_cached_bytes: int = 1024 * 1024,
                 max_file_bytes: int = 32 * 1024 * 1024):
        self.max_total_bytes = max_total_bytes
        self.max_cached_bytes = max_cached_bytes
        self.max_file_bytes = max_file_bytes
        self._entries: dict[str, tuple[tuple[int, int], FileContent]] = {}
        self._total = 0
        self._lock = threading.Lock()

    def read(self, path: Path) -> FileContent | None:
        """The file's content, or None when it vanished or is too big to serve."""
        key = str(path)
        try:
            stat = os.stat(key)
        except OSError:
            return None
        if stat.st_size > self.max_file_bytes:
            return None
        version = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._entries.get(key)
        if cached and cached[0] == version:
            return cached[1]
        try:
            with open(key, "rb") as handle:
                body = handle.read(self.max_file_bytes + 1)
        except OSError:
            return None
        content = FileContent(body, content_type(path))
        if len(body) <= self.max_cached_bytes:
            self._keep(key, version, content)
        return content

    def _keep(self, key: str, version: tuple[int, int], content: FileContent) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old:
                self._total -= len(old[1].body)
            while self._entries and self._total + len(content.body) > self.max_total_bytes:
                oldest = next(iter(self._entries))
                self._total -= len(self._entries.pop(oldest)[1].body)
            self._entries[key] = (version, content)
            self._total += len(content.body)
