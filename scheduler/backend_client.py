"""The scheduler's HTTP client for one backend (protocol: docs/architecture.md)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Self

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

TERMINAL_EVENTS = ("done", "cancelled", "error")


# Bounds on what a loading backend's /health may put into Redis and the UI.
MAX_LOADING_FILES = 16
MAX_NAME_CHARS = 200


def loading_state(health: dict) -> dict:
    """What a loading backend is doing, from its /health body: the stage ("downloading",
    "reading", "compiling", ...) and each download's bytes; unknown or malformed parts dropped."""
    stage, entries = health.get("stage"), health.get("files")
    files = []
    for entry in entries[:MAX_LOADING_FILES] if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        done, total = entry.get("bytes_done"), entry.get("bytes_total")
        files.append({"name": entry["name"][:MAX_NAME_CHARS],
                      "bytes_done": done if isinstance(done, int) and done >= 0 else 0,
                      "bytes_total": total if isinstance(total, int) and total > 0 else None})
    return {"stage": stage[:40] if isinstance(stage, str) else None, "files": files}


class BackendUnavailable(Exception):
    """The backend did not take the job (unreachable, loading, busy), or handed it back because
    it is stopping on purpose: try again later, without counting an attempt."""


class BackendRejected(Exception):
    """The backend refused the job itself (400): retrying cannot help."""


class BackendLost(Exception):
    """The connection broke or went silent in the middle of a job."""


class GenerationStream:
    """The NDJSON events of one /generate call; closing it hangs up, which cancels the job."""

    def __init__(self, response: requests.Response):
        self.response = response

    def __iter__(self) -> Iterator[dict]:
        try:
            for line in self.response.iter_lines(chunk_size=None):
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    raise BackendLost(f"backend sent a line that is not JSON: {line[:200]!r}") from None
                if not isinstance(event, dict):
                    raise BackendLost(f"backend sent a line that is not an event object: {line[:200]!r}")
                if event.get("event") == "stopped":
                    raise BackendUnavailable(f"backend stopped during the job: {event.get('error')}")
                yield event
                if event.get("event") in TERMINAL_EVENTS:
                    return
        except requests.RequestException as exc:
            raise BackendLost(f"connection lost: {exc}") from exc
        raise BackendLost("the stream ended without a result")

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _never_connected(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the backend (refused or connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, (NewConnectionError, ConnectTimeoutError))


class BackendClient:
    def __init__(self, base_url: str, connect_timeout_secs: float = 3.0, stall_timeout_secs: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_secs = connect_timeout_secs
        self.stall_timeout_secs = stall_timeout_secs
        self.session = requests.Session()

    def health(self) -> dict:
        """The backend's /health body; {"status": "unreachable", "error": ...} when it cannot be asked."""
        try:
            response = self.session.get(f"{self.base_url}/health", timeout=self.connect_timeout_secs)
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            return {"status": "unreachable", "error": str(exc)}
        if not isinstance(body, dict):
            return {"status": "error", "error": f"unexpected /health answer: {body!r}"}
        return body

    def generate(self, params: dict) -> GenerationStream:
        """Start a job; raises BackendUnavailable or BackendRejected if the backend does not take it."""
        try:
            response = self.session.post(f"{self.base_url}/generate", json=params, stream=True,
                                         timeout=(self.connect_timeout_secs, self.stall_timeout_secs))
        except requests.RequestException as exc:
            if _never_connected(exc):
                raise BackendUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
            # The request went out: the backend may have died of this very job, so it counts.
            raise BackendLost(f"connection lost before the answer: {exc}") from exc
        if response.status_code == 200:
            return GenerationStream(response)
        try:
            message = response.json().get("error") or response.reason
        except (ValueError, AttributeError):
            message = response.text[:500] or response.reason
        finally:
            response.close()
        if response.status_code == 400:
            raise BackendRejected(f"backend refused the job: {message}")
        if response.status_code in (409, 503):  # busy, or loading: it never took the job
            raise BackendUnavailable(f"backend answered {response.status_code}: {message}")
        # Any other answer (500, a proxy's 502 after the backend died of this job) counts as an
        # attempt, so a job that breaks its backend fails after its last one, never loops.
        raise BackendLost(f"backend answered {response.status_code}: {message}")

    def cancel(self, job_id: str) -> bool:
        """Ask the backend to stop `job_id`; False if it was not running it or cannot be reached."""
        try:
            response = self.session.post(f"{self.base_url}/cancel", json={"job_id": job_id},
                                         timeout=self.connect_timeout_secs)
            return bool(response.json().get("cancelled"))
        except (requests.RequestException, ValueError, AttributeError):
            return False

    def close(self) -> None:
        self.session.close()
