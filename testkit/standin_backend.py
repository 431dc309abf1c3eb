"""A stand-in for the backend: a real HTTP server that speaks the backend's protocol with no
model, for the scheduler's protocol tests and its benchmark.

It answers at once, and behaves by the prompt text, so a test can ask for what the tiny model
cannot produce on demand:

- "oom": fails with the message of a GPU out of memory, after some progress;
- "garbage": a line that is not JSON; "not an event": JSON that is not an object;
- "server error": a 500 answer, as a crashing WSGI app or a proxy in front of it gives;
- "slow": progress every 0.1 s for 3 s, streamed in chunks as a WSGI server does; it ends
  early, with "cancelled", once /cancel is called;
- "steady": the same, ending done (a job long enough to be interrupted);
- "hang": headers and one line, then silence until `release` is set (or 10 s);
- "previews": one good preview (`PREVIEW_JPEG` for each image, at 128 tokens), then three
  the scheduler must skip (malformed, too big, more pictures than images), then done once
  `release` is set (or after 10 s);
- anything else: done, with `num_images` copies of `png` (after `step_secs` × 4 of progress,
  or, with `picture_secs`, after `job_secs` + `picture_secs` for each picture it draws (its
  Best-of candidates, else its images), spread evenly over the tokens: a real model's step
  costs a part whatever the batch (reading the weights) and a part for each picture in it);
  a continuation's also gives its start's grid (the `init_codes` sent) and codes for each image.

    with StandInBackend() as backend:
        Config(backend_urls=(backend.url,), ...)

`python -m testkit.standin_backend` runs one as a process (STANDIN_PORT, STANDIN_MODEL,
STANDIN_STEP_SECS, STANDIN_PICTURE_SECS, STANDIN_JOB_SECS, STANDIN_SLOTS), for tests that kill
or pause backends and for benchmarks/bench_eta.py; it logs each job it is sent ("generate
<job_id> <unix time>") and announces itself in Redis when REDIS_URL is set.
"""
from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from playground import pictures
from playground.limits import IMAGE_TOKENS
from playground.protocol import (
    cancel_answer,
    cancelled_event,
    done_event,
    error_event,
    loading_report,
    preview_event,
    progress_event,
    ready_report,
    started_event,
)

# The seed the stand-in picks when a job asks for seed 0 ("any").
PICKED_SEED = 5


def solid_jpeg(colour: str = "blue", size: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


PREVIEW_JPEG = solid_jpeg()


def solid_png(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class StandInBackend(ThreadingHTTPServer):
    """The backend protocol on a free loopback port; records each /generate it is sent."""

    daemon_threads = True

    def __init__(self, png: bytes | None = None, model: str = "stand-in", port: int = 0, step_secs: float = 0.0,
                 picture_secs: float = 0.0, job_secs: float = 0.0, slots: int = 1):
        super().__init__(("127.0.0.1", port), _Handler)
        self.step_secs = step_secs
        self.picture_secs = picture_secs  # the tokens of one picture; 0: by step_secs
        self.job_secs = job_secs  # the tokens' part that does not grow with the pictures (with picture_secs)
        self.slots = slots  # what /health says; it runs any number of jobs at once regardless
        self._running_lock = threading.Lock()
        self.running = 0  # /generate calls being answered now
        self.most_running = 0  # the most at once so far
        self.log_calls = False  # print each /generate (the process does, for its log)
        self.png_base64 = base64.b64encode(png or solid_png()).decode()
        self.model = model
        self.calls: list[str] = []  # the prompt text of each /generate, in order
        self.arrivals: dict[str, float] = {}  # job_id -> time.time() its /generate arrived
        self.release = threading.Event()  # ends a "hang"
        self.cancelled = threading.Event()  # set by /cancel
        self.cancelled_ids: set[str] = set()
        self.loading = threading.Event()  # while set, /health says 503, loading
        self.loading_details: dict = {}  # what that loading answer adds: stage, files

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> StandInBackend:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()  # a handler still in "hang" would hold shutdown() up
        self.shutdown()
        self.server_close()

    def __enter__(self) -> StandInBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInBackend

    def log_message(self, *args):
        pass

    def _send(self, content_type: str, data: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, event: dict) -> None:
        line = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.flush()

    def do_GET(self):
        if self.server.loading.is_set():
            report, status = loading_report(self.server.model, self.server.loading_details), 503
        else:
            report, status = ready_report(self.server.model, slots=self.server.slots), 200
        self._send("application/json", json.dumps(report).encode(), status=status)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/cancel":
            self.server.cancelled_ids.add(body["job_id"])
            self.server.cancelled.set()
            return self._send("application/json", json.dumps(cancel_answer(True)).encode())
        self.server.arrivals[body["job_id"].partition(".")[0]] = time.time()  # by queue id, not attempt
        if self.server.log_calls:
            print(f"generate {body['job_id']} {time.time():.6f}", flush=True)
        self.server.calls.append(body["text"])
        with self.server._running_lock:
            self.server.running += 1
            self.server.most_running = max(self.server.most_running, self.server.running)
        try:
            self._generate(body)
        finally:
            with self.server._running_lock:
                self.server.running -= 1

    def _generate(self, body: dict) -> None:
        if body["text"] == "server error":
            return self._send("text/html", b"<h1>Internal Server Error</h1>", status=500)
        seed = body["seed"] or PICKED_SEED
        started = started_event(seed, IMAGE_TOKENS)
        if body["text"] == "oom":
            lines = [started, progress_event(30, IMAGE_TOKENS),
                     error_event("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")]
        elif body["text"] == "garbage":
            lines = [started, "this is not json"]
        elif body["text"] == "not an event":
            lines = [started, "[1, 2]"]
        elif body["text"] in ("slow", "steady"):
            return self._stream_slowly(started, ending=self._done(body, seed) if body["text"] == "steady" else None)
        elif body["text"] == "hang":
            return self._hang(started)
        elif body["text"] == "previews":
            return self._previews(started, body["num_images"], self._done(body, seed))
        elif self.server.picture_secs:
            return self._draw(started, body, self._done(body, seed))
        elif self.server.step_secs:
            return self._stream_slowly(started, self._done(body, seed), steps=4, pause=self.server.step_secs,
                                       job_id=body["job_id"])
        else:
            lines = [started, progress_event(IMAGE_TOKENS, IMAGE_TOKENS), self._done(body, seed)]
        data = b"".join((json.dumps(line) if isinstance(line, dict) else line).encode() + b"\n" for line in lines)
        self._send("application/x-ndjson", data)

    def _done(self, body: dict, seed: int) -> dict:
        done = done_event(seed=seed, model=self.server.model,
                          params={"top_k": 50, "top_p": 1.0, "temperature": 1.0, "condition_scale": 10.0},
                          images=[self.server.png_base64] * body["num_images"], timings={"total_secs": 0.0})
        if body.get("init_codes") is not None:  # a continuation: its start's grid, and each image's codes
            done.update(start={"source": "codes", "codes": body["init_codes"]},
                        codes=[pictures.pack_codes(range(pictures.SQUARE))] * body["num_images"])
        return done

    def _stream_slowly(self, started: dict, ending: dict | None, steps: int = 30, pause: float = 0.1,
                       job_id: str | None = None) -> None:
        """Progress every `pause` s; a /cancel (of `job_id`, or of anything when None) ends it."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(started)
        for step in range(1, steps + 1):
            time.sleep(pause)
            if self.server.cancelled.is_set() if job_id is None else job_id in self.server.cancelled_ids:
                self._chunk(cancelled_event())
                break
            self._chunk(progress_event(step * IMAGE_TOKENS // steps, IMAGE_TOKENS))
        else:
            self._chunk(ending or error_event("the test should have cancelled this job"))
        self.wfile.write(b"0\r\n\r\n")

    def _draw(self, started: dict, body: dict, ending: dict) -> None:
        """The tokens in `job_secs` + `picture_secs` per picture drawn, a progress line at least
        every half second (a real backend sends one a second)."""
        tokens_secs = self.server.job_secs + self.server.picture_secs * (body.get("candidates") or body["num_images"])
        steps = max(4, math.ceil(tokens_secs / 0.5))
        self._stream_slowly(started, ending, steps=steps, pause=tokens_secs / steps, job_id=body["job_id"])

    def _previews(self, started: dict, num_images: int, ending: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(started)
        good = base64.b64encode(PREVIEW_JPEG).decode()
        huge = base64.b64encode(b"\xff" * 100_000).decode()
        # The good one first: a bad one let through would replace it.
        for images in ([good] * num_images, ["not base64!"] * num_images, [huge] * num_images,
                       [good] * (num_images + 1)):
            self._chunk(preview_event(IMAGE_TOKENS // 2, IMAGE_TOKENS, 128, 128, images))
        self._chunk(progress_event(IMAGE_TOKENS // 2, IMAGE_TOKENS))
        self.server.release.wait(10)
        self._chunk(ending)
        self.wfile.write(b"0\r\n\r\n")

    def _hang(self, started: dict) -> None:
        """Longer than a scheduler's stall timeout, unless the test releases it sooner."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        self.wfile.write(json.dumps(started).encode() + b"\n")
        self.wfile.flush()
        self.server.release.wait(10)
        self.close_connection = True


def main() -> None:
    import os

    from playground.backend_registry import Announcer, BackendRegistry

    server = StandInBackend(model=os.environ.get("STANDIN_MODEL", "stand-in"),
                            port=int(os.environ.get("STANDIN_PORT", "0")),
                            step_secs=float(os.environ.get("STANDIN_STEP_SECS", "0")),
                            picture_secs=float(os.environ.get("STANDIN_PICTURE_SECS", "0")),
                            job_secs=float(os.environ.get("STANDIN_JOB_SECS", "0")),
                            slots=int(os.environ.get("STANDIN_SLOTS", "1")))
    server.log_calls = True
    if os.environ.get("REDIS_URL"):
        import redis

        report = ready_report(server.model, slots=server.slots)
        Announcer(BackendRegistry(redis.Redis.from_url(os.environ["REDIS_URL"])), server.url, lambda: report).start()
    print(f"stand-in backend on {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
