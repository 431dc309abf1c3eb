"""The scheduler's HTTP client for one backend (the protocol: `playground.protocol`)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Self

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from playground.protocol import ENDINGS, Event, Health, event_kind, parse_event, parse_health, was_cancelled


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
                    event = parse_event(line)
                except ValueError as exc:
                    raise BackendLost(f"backend sent {exc}") from None
                if event_kind(event) == Event.STOPPED:
                    raise BackendUnavailable(f"backend stopped during the job: {event.get('error')}")
                yield event
                if event_kind(event) in ENDINGS:
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

    def health(self) -> Health:
        """The backend's /health answer; unreachable, with the reason, when it cannot be asked."""
        try:
            response = self.session.get(f"{self.base_url}/health", timeout=self.connect_timeout_secs)
            return parse_health(response.json())
        except (requests.RequestException, ValueError) as exc:
            return Health.unreachable(str(exc))

    def generate(self, params: dict) -> GenerationStream:
        """Start a job; raises BackendUnavailable or BackendRejected if the backend does not take it."""
        return self._start("/generate", params)

    def upscale(self, body: dict) -> GenerationStream:
        """Start an upscale job (playground.protocol.upscale); it streams as a generation."""
        return self._start("/upscale", body)

    def _start(self, route: str, body: dict) -> GenerationStream:
        try:
            response = self.session.post(f"{self.base_url}{route}", json=body, stream=True,
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
            return was_cancelled(response.json())
        except (requests.RequestException, ValueError):
            return False

    def close(self) -> None:
        self.session.close()
