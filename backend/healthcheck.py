"""`python -m backend.healthcheck`: the container health check of the backend (the stdlib and
`playground.protocol` only).

Exit 0 while the model loads or once it is ready, 1 when /health reports the status error,
does not answer, or reports that announcing the backend in Redis has failed for longer than
ANNOUNCE_GRACE_SECS (a backend on another machine that the main machine never hears of, e.g.
for a wrong Redis password). A download of Mega takes up to an hour: the check must not call
that unhealthy, but it must call a failed load unhealthy at once (docker-compose.yml and the
Dockerfile use this same check). It prints one line, which `docker inspect` keeps and
`docker compose ps` summarises, e.g.

    loading: downloading dalle-mini/dalle-mini/flax_model.msgpack 512 MB / 1.75 GB
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

from playground.protocol import BackendStatus, Stage

TIMEOUT_SECS = 8
# Restarting the main machine's Redis takes seconds: only a longer failure to announce is
# unhealthy. A wrong password or address fails from the first second, so it shows as
# unhealthy about as soon as a failed load does (this, then `retries` checks).
ANNOUNCE_GRACE_SECS = 30


def size(count) -> str:
    count = float(count)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{count:.0f} B"


def describe_loading(body: dict) -> str:
    """`loading: <stage> <file> <done> / <total>` from what /health says, as far as it says it."""
    words = ["loading:", str(body.get("stage") or Stage.STARTING)]
    files = [f for f in body.get("files") or [] if isinstance(f, dict)]
    # The file being fetched: the first one not complete (or the last one, when all are).
    current = next((f for f in files if f.get("bytes_total") and (f.get("bytes_done") or 0) < f["bytes_total"]),
                   files[-1] if files else None)
    if current:
        if current.get("name"):
            words.append(str(current["name"]))
        done, total = current.get("bytes_done"), current.get("bytes_total")
        if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total:
            words.append(f"{size(done)} / {size(total)}")
        if len(files) > 1:
            words.append(f"(file {files.index(current) + 1} of {len(files)})")
    if body.get("model"):
        words.append(f"[{body['model']}]")
    return " ".join(words)


def check(url: str, announce_grace_secs: float = ANNOUNCE_GRACE_SECS) -> tuple[int, str]:
    """(exit status, one line) for the backend's /health at `url`."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECS) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:  # 503 while loading or failed: the body says which
        raw = error.read()
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return 1, f"no answer from {url}: {reason}"
    try:
        body = json.loads(raw)
        status = body["status"]
    except (ValueError, KeyError, TypeError):
        return 1, f"unexpected answer from {url}: {raw[:200]!r}"
    if status == BackendStatus.READY:
        line = f"ready: {body.get('model')} on {', '.join(body.get('devices') or []) or '?'}"
    elif status == BackendStatus.LOADING:
        line = describe_loading(body)
    else:
        return 1, f"{status}: {body.get('error') or 'no reason given'}"
    announce = body.get("announce")
    if isinstance(announce, dict) and announce.get("error"):
        failing = announce.get("failing_secs")
        failing = failing if isinstance(failing, (int, float)) else 0
        line = f"announce: {announce['error']} (for {failing:.0f} s); {line}"
        return (1 if failing >= announce_grace_secs else 0), line
    return 0, line


def main() -> int:
    port = os.environ.get("BACKEND_PORT", "").strip() or "8080"
    code, line = check(f"http://127.0.0.1:{port}/health")
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
