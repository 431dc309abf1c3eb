"""A Hugging Face hub on 127.0.0.1 that serves folders as model repositories, for testing
downloads without the internet (point HF_ENDPOINT, or an `endpoint=` argument, at `hub.url`).

It speaks the part of the hub's file API that downloads use, as huggingface_hub expects it:

- `HEAD`/`GET /{repo}/resolve/{revision}/{file}`: `X-Repo-Commit`; a small file answers itself
  with its git blob hash as `ETag`; a large ("LFS") file answers 302 to a second server, the
  "CDN", with `X-Linked-Etag` (its sha256) and `X-Linked-Size`, as the hub redirects to its CDN.
  A missing file is a 404 with `X-Error-Code: EntryNotFound`.
- `GET /api/models/{repo}/revision/{revision}` and `/api/models/{repo}/tree/{revision}`: what
  `snapshot_download` (and so `hf download`) lists before downloading.
- `Range: bytes=N-` on file bodies: 206 with `Content-Range`.

Test controls: `cut_transfers` (close the connection after N bytes of a body, optionally then
refuse), `hold_after` / `release` (pause a file's body once N bytes were sent), `ignore_range`,
`refuse` (close every connection unanswered), and what was seen: `requests`, `transfers` (the
Range of each body) and `bytes_sent` per file (bytes a vanished client did not take are not
counted).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

SEND_CHUNK = 64 * 1024
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclasses.dataclass(frozen=True)
class HubFile:
    name: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_hash(self) -> str:  # what git (and the hub, as the ETag of a small file) calls the blob
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_hash


@dataclasses.dataclass(frozen=True)
class Seen:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None


class FakeHub:
    """`FakeHub({"org/name": folder}).start()`; files of `lfs_min_bytes` or more are LFS files."""

    def __init__(self, repos: dict[str, Path], lfs_min_bytes: int = 100_000):
        self.repos: dict[str, dict[str, HubFile]] = {}
        self.commits: dict[str, str] = {}
        for repo, folder in repos.items():
            files = {path.relative_to(folder).as_posix(): path.read_bytes()
                     for path in sorted(Path(folder).rglob("*")) if path.is_file()}
            self.repos[repo] = {name: HubFile(name, data, len(data) >= lfs_min_bytes) for name, data in files.items()}
            listing = json.dumps(sorted((name, f.etag) for name, f in self.repos[repo].items()))
            self.commits[repo] = hashlib.sha1(f"{repo}\n{listing}".encode()).hexdigest()
        self.requests: list[Seen] = []
        self.bytes_sent: dict[str, int] = {}  # "<repo>/<file>" -> body bytes sent
        self.transfers: list[tuple[str, str | None]] = []  # ("<repo>/<file>", Range header) per body
        self.ignore_range = False
        self.refuse = False
        self._lock = threading.Lock()
        self._cut_after: int | None = None
        self._cuts_left = 0
        self._cut_file: str | None = None
        self._offline_after_cut = False
        self._hold: tuple[str | None, int] | None = None
        self._released = threading.Event()
        self._servers: list[ThreadingHTTPServer] = []

    # ------------------------------------------------------------ running

    def start(self) -> "FakeHub":
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub, server.role = self, role
            threading.Thread(target=server.serve_forever, name=f"fake-{role}", daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        self.release()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return _url_of(self._servers[0])

    @property
    def cdn_url(self) -> str:
        return _url_of(self._servers[1])

    # ------------------------------------------------------------ controls

    def cut_transfers(self, after_bytes: int, times: int = 1, file: str | None = None,
                      then_offline: bool = False) -> None:
        """The next `times` file bodies (of `file`, "<repo>/<name>", if given) stop after
        `after_bytes` bytes: the connection closes. `then_offline`: `refuse` from then on."""
        with self._lock:
            self._cut_after, self._cuts_left, self._cut_file = after_bytes, times, file
            self._offline_after_cut = then_offline

    def hold_after(self, sent_bytes: int, file: str | None = None) -> None:
        """Once `sent_bytes` body bytes (of `file` if given, else in all) were sent, the bodies
        (of `file`) pause until `release()`."""
        with self._lock:
            self._hold = (file, sent_bytes)
            self._released.clear()

    def release(self) -> None:
        with self._lock:
            self._hold = None
        self._released.set()

    def file(self, repo: str, name: str) -> HubFile:
        return self.repos[repo][name]

    def ranges(self, repo: str, name: str) -> list[str | None]:
        """The Range header of each body request for one file, in order (None: from the start)."""
        return [range_ for label, range_ in self.transfers if label == f"{repo}/{name}"]

    # ------------------------------------------------------------ used by the handler

    def _seen(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _take_cut(self, label: str) -> int | None:
        with self._lock:
            if self._cuts_left <= 0 or self._cut_file not in (None, label):
                return None
            self._cuts_left -= 1
            return self._cut_after

    def _cut_done(self) -> None:
        if self._offline_after_cut:
            self.refuse = True

    def _unsend(self, label: str, count: int) -> None:
        with self._lock:
            self.bytes_sent[label] -= count

    def _sendable(self, label: str, wanted: int) -> int:
        """How many of `wanted` bytes may go now (waits while held); counts them as sent."""
        while True:
            with self._lock:
                allowed = wanted
                if self._hold is not None and self._hold[0] in (None, label):
                    file, limit = self._hold
                    counted = self.bytes_sent.get(label, 0) if file else sum(self.bytes_sent.values())
                    allowed = min(wanted, max(0, limit - counted))
                if allowed:
                    self.bytes_sent[label] = self.bytes_sent.get(label, 0) + allowed
                    return allowed
            self._released.wait(0.05)


def _url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format, *args) -> None:  # quiet: the tests read `hub.requests`
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        hub: FakeHub = self.server.hub
        path = urlsplit(self.path).path
        hub._seen(Seen(self.server.role, self.command, path, self.headers.get("Range")))
        if hub.refuse:
            self._drop()
            return
        if self.server.role == "cdn":
            self._cdn(hub, path, body)
            return
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path):
            self._api(hub, unquote(match[1]), match[2], unquote(match[3]))
            return
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not match:
            self._error(404, "NotFound", "no such route")
            return
        repo, revision, name = unquote(match[1]), unquote(match[2]), unquote(match[3])
        commit = self._commit(hub, repo, revision)
        if commit is None:
            return
        hub_file = hub.repos[repo].get(name)
        if hub_file is None:
            self._error(404, "EntryNotFound", "Entry not found", commit)
            return
        if hub_file.lfs:  # as the hub does: the bytes are on the CDN; the metadata is here
            self.send_response(302)
            self.send_header("Location", f"{hub.cdn_url}/{repo}/{hub_file.sha256}?signed=yes")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
            self.send_header("X-Linked-Size", str(len(hub_file.data)))
            self.send_header("ETag", f'"{hub_file.git_hash}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._file(hub, f"{repo}/{name}", hub_file, body, {"X-Repo-Commit": commit})

    def _cdn(self, hub: FakeHub, path: str, body: bool) -> None:
        match = re.fullmatch(r"/([^/]+/[^/]+)/([0-9a-f]{64})", path)
        found = [f for f in hub.repos.get(match[1], {}).values() if f.sha256 == match[2]] if match else []
        if not found:
            self._error(404, "NotFound", "no such blob")
            return
        self._file(hub, f"{match[1]}/{found[0].name}", found[0], body, {})

    def _commit(self, hub: FakeHub, repo: str, revision: str) -> str | None:
        if repo not in hub.repos:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if revision == "main":
            return hub.commits[repo]
        if COMMIT.match(revision):  # any commit: the folder stands for every revision
            return revision
        self._error(404, "RevisionNotFound", "Invalid rev id")
        return None

    def _api(self, hub: FakeHub, repo: str, kind: str, revision: str) -> None:
        commit = self._commit(hub, repo, revision)
        if commit is None:
            return
        files = hub.repos[repo].values()
        if kind == "revision":
            answer = {"id": repo, "modelId": repo, "sha": commit, "private": False,
                      "siblings": [{"rfilename": f.name} for f in files]}
        else:
            answer = [{"type": "file", "oid": f.git_hash, "size": len(f.data), "path": f.name,
                       **({"lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}} if f.lfs else {})}
                      for f in files]
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, hub: FakeHub, label: str, hub_file: HubFile, body: bool, headers: dict) -> None:
        data, start = hub_file.data, 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if requested and not hub.ignore_range:
            start = int(requested[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("ETag", f'"{hub_file.etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if body:
            with hub._lock:
                hub.transfers.append((label, self.headers.get("Range")))
            self._send_body(hub, label, memoryview(data)[start:])

    def _send_body(self, hub: FakeHub, label: str, view: memoryview) -> None:
        cut = hub._take_cut(label)
        sent = 0
        while sent < len(view):
            wanted = min(SEND_CHUNK, len(view) - sent)
            if cut is not None:
                wanted = min(wanted, cut - sent)
                if wanted <= 0:
                    hub._cut_done()
                    self._drop()  # mid-body: the client sees the connection break
                    return
            allowed = hub._sendable(label, wanted)
            try:
                if self._client_gone():
                    raise ConnectionResetError
                self.wfile.write(view[sent:sent + allowed])
            except OSError:  # the client went away (killed while a hold paused its body)
                hub._unsend(label, allowed)
                self.close_connection = True
                return
            sent += allowed

    def _client_gone(self) -> bool:
        # A client says nothing while it reads a body: anything readable is its hang-up.
        readable, _, _ = select.select([self.connection], [], [], 0)
        return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
