"""The real local stack under test, with the means to break it and to count what it did.

`Cluster` is the whole stack (testkit's `Stack`) as the suite runs it: Redis with
append-only persistence, the library on a small tmpfs of its own when mounting is permitted,
short frontend deadlines. `Client` is the HTTP client every scenario uses: it records each
answer's status and latency so that 5xx answers and latencies are counted, never guessed.
`account()` says what became of every job a scenario submitted.
"""
from __future__ import annotations

import http.client
import json
import math
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests

from testkit.stack import Stack

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll until `predicate()` is truthy (returns it), or raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least q % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


class Recorder:
    """Every HTTP answer seen: status counts per route and latencies (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.server_errors: list[str] = []
        self.connection_errors = 0

    def record(self, route: str, status: int, secs: float, detail: str = "", expected: bool = False) -> None:
        """`expected`: a 5xx that is the right answer (501 to a method HTTP does not define here)."""
        with self._lock:
            self.statuses[status] += 1
            self.latencies[route].append(secs)
            if status >= 500 and not expected:
                self.server_errors.append(f"{status} {route} {detail[:200]}")

    def failed_connection(self) -> None:
        with self._lock:
            self.connection_errors += 1

    def count(self, predicate) -> int:
        with self._lock:
            return sum(n for status, n in self.statuses.items() if predicate(status))

    @property
    def total(self) -> int:
        return self.count(lambda status: True)

    def snapshot(self) -> dict:
        with self._lock:
            return {"statuses": dict(self.statuses), "server_errors": list(self.server_errors),
                    "connection_errors": self.connection_errors,
                    "latencies": {route: list(values) for route, values in self.latencies.items()}}


class Client:
    """requests to one frontend, each answer recorded; one Session per thread (keep-alive)."""

    def __init__(self, base_url: str, recorder: Recorder, token: str | None = None, timeout: float = 20.0):
        self.base_url = base_url
        self.recorder = recorder
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def request(self, method: str, path: str, route: str | None = None, expect_5xx: bool = False,
                **kwargs) -> requests.Response | None:
        """The response, or None when no answer came (refused connection, reset). A 5xx counts as a
        server error unless `expect_5xx` (e.g. 503 while Redis is down) or it is /health's 503."""
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        started = time.perf_counter()
        try:
            response = self._session().request(method, self.base_url + path, headers=headers,
                                               timeout=self.timeout, **kwargs)
        except requests.RequestException:
            self.recorder.failed_connection()
            self._local.session = None  # a broken keep-alive connection is not reused
            return None
        expected = expect_5xx or (path.startswith("/health") and response.status_code == 503)
        self.recorder.record(route or f"{method} {path}", response.status_code, time.perf_counter() - started,
                             response.text[:200] if response.status_code >= 500 else "", expected=expected)
        return response

    def submit(self, text: str, num_images: int = 2, seed: int = 1) -> str | None:
        """POST /prompt; the queue_id, or None when it was not accepted."""
        response = self.request("POST", "/prompt", "POST /prompt",
                                json={"text": text, "num_images": str(num_images), "seed": seed})
        if response is not None and response.status_code == 200:
            return response.json()["queue_id"]
        return None

    def job(self, job_id: str) -> tuple[int, dict] | None:
        response = self.request("GET", f"/jobs/{job_id}", "GET /jobs/{id}")
        if response is None:
            return None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {}

    def cancel(self, job_id: str) -> int | None:
        response = self.request("POST", f"/jobs/{job_id}/cancel", "POST /jobs/{id}/cancel")
        return None if response is None else response.status_code


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, read_limit: int = 1 << 20) -> tuple[int | None, bytes]:
    """Send `data` exactly as given on a new connection; (status, body) of the answer, or
    (None, b"") when the server closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer (413) and close before taking the whole body
        response = http.client.HTTPResponse(sock, method="GET")
        try:
            response.begin()
            return response.status, response.read(read_limit)
        except (http.client.HTTPException, OSError):
            return None, b""


@dataclass
class Accounting:
    """What became of the jobs a scenario submitted."""

    submitted: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0
    running: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)
    failure_reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"submitted": self.submitted, "done": self.done, "failed": self.failed,
                "cancelled": self.cancelled, "queued": self.queued, "running": self.running,
                "lost": self.lost}


class Cluster(Stack):
    """The stack as the suite runs it, and what the scenarios ask of it."""

    def __init__(self, workdir: Path, model_cache_dir: Path, library_mb: int = 256):
        super().__init__(workdir, model_cache_dir, warm_up_batch_sizes="2,8", redis_appendonly=True,
                         library_tmpfs_mb=library_mb, frontend_env={
                             # Short so that slow-client scenarios finish in seconds; the defaults are 15 s.
                             "FRONTEND_SOCKET_TIMEOUT": "5", "FRONTEND_HEAD_DEADLINE": "5",
                             "FRONTEND_BODY_DEADLINE": "5", "FRONTEND_MAX_QUEUED_JOBS": "5000"})

    def heal(self) -> None:
        """After a scenario that broke: writable library, every service running, stack healthy."""
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(self.library_dir)], capture_output=True, check=False)
        (self.library_dir / ".filler").unlink(missing_ok=True)
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start()
        for process in (self.backend, self.scheduler, self.frontend):
            if not process.alive():
                process.start()
        self.backend.wait_healthy(timeout=300)
        self.frontend.wait_healthy(timeout=60, path="/openapi.json")
        self.wait_healthy(timeout=60)

    def client(self, recorder: Recorder, token: str | None = None, base_url: str | None = None) -> Client:
        return Client(base_url or self.frontend.url, recorder, token=token)

    # -- what the library holds -------------------------------------------------------------

    def library_check(self) -> list[str]:
        """Problems with library.json on disk: not valid JSON, not a list of entries, an entry
        without its fields, an image it names missing on disk. [] when it is valid."""
        path = self.library_dir / "library.json"
        if not path.exists():
            return []  # nothing finished yet: an empty library
        try:
            entries = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            return [f"library.json unreadable: {exc}"]
        if not isinstance(entries, list):
            return ["library.json is not a list"]
        problems = []
        ids = set()
        for entry in entries:
            if not isinstance(entry, dict):
                problems.append(f"an entry is not an object: {entry!r:.100}")
                continue
            for name in ("queue_id", "text_prompt", "creation_unixtime", "generated_images", "process_time_secs"):
                if name not in entry:
                    problems.append(f"entry {entry.get('queue_id')} lacks {name}")
            if entry.get("queue_id") in ids:
                problems.append(f"entry {entry.get('queue_id')} appears twice")
            ids.add(entry.get("queue_id"))
            for url in entry.get("generated_images") or []:
                if not (self.library_dir.parent / url).is_file():
                    problems.append(f"entry {entry.get('queue_id')}: {url} missing on disk")
        return problems

    def library_ids(self) -> set[str]:
        try:
            return {e.get("queue_id") for e in json.loads((self.library_dir / "library.json").read_bytes())}
        except (OSError, ValueError):
            return set()

    # -- what became of the jobs ------------------------------------------------------------

    def statuses(self, client: Client, job_ids: list[str]) -> dict[str, dict | None]:
        """Each job's /jobs/<id> body; None for a 404 (a job the system no longer knows)."""
        result = {}
        for job_id in job_ids:
            answer = client.job(job_id)
            if answer is None:
                raise ConnectionError("the frontend did not answer GET /jobs/<id>")
            status, body = answer
            result[job_id] = body if status == 200 else None
        return result

    def wait_settled(self, client: Client, job_ids: list[str], timeout: float, allow_queued: bool = False) -> bool:
        """Until no job is running (and, unless allow_queued, none queued). False on timeout."""
        def settled():
            try:
                bodies = self.statuses(client, job_ids)
            except ConnectionError:
                return False
            waiting = ("running",) if allow_queued else ("running", "queued")
            return all(body is None or body.get("status") not in waiting for body in bodies.values())
        try:
            wait_for(settled, timeout, "settled jobs", interval=0.5)
            return True
        except TimeoutError:
            return False

    def account(self, client: Client, job_ids: list[str]) -> Accounting:
        """Every submitted job must be done (and in the library with its images), failed with a
        reason, cancelled, or still queued/running. Anything else is lost."""
        tally = Accounting(submitted=len(job_ids))
        in_library = self.library_ids()
        for job_id, body in self.statuses(client, job_ids).items():
            status = body.get("status") if body else None
            if status == "done":
                images = body.get("images") or (body.get("result") or {}).get("generated_images") or []
                missing = [url for url in images if not (self.library_dir.parent / url).is_file()]
                if job_id not in in_library or not images or missing:
                    tally.lost += 1
                    tally.problems.append(f"{job_id} done but not in the library (images {images}, missing {missing})")
                else:
                    tally.done += 1
            elif status == "failed":
                if body.get("error"):
                    tally.failed += 1
                    tally.failure_reasons[_reason_kind(body["error"])] += 1
                else:
                    tally.lost += 1
                    tally.problems.append(f"{job_id} failed without a reason")
            elif status == "cancelled":
                tally.cancelled += 1
            elif status == "queued":
                tally.queued += 1
            elif status == "running":
                tally.running += 1
            else:
                tally.lost += 1
                tally.problems.append(f"{job_id} vanished (GET /jobs/<id>: {body!r:.200})")
        return tally


def _reason_kind(error: str) -> str:
    """A short name for a failure reason, for the report's tally."""
    for needle in ("No space left", "Read-only file system", "Permission denied", "backend error",
                   "gave up after"):
        if needle in error:
            return needle
    return error[:60]
