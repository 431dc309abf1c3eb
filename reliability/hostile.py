"""Hostile input: generated requests across every route, path traversal variants, oversized and
slow requests, a prompt carrying HTML/script loaded in headless Chromium, deletes aimed outside
the library, and the API token. Invariants: no 5xx, no file outside the served folders read or
removed (canary files with a secret), no script run in the browser, nothing changed without
the token.
"""
from __future__ import annotations

import base64
import http.client
import json
import random
import secrets
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from playground import pictures
from playground.queue import JobQueue
from testkit import hostile_uploads
from reliability.cluster import (
    Client,
    Cluster,
    Recorder,
    percentile,
    raw_exchange,
    wait_for,
)
from reliability.scenario import ScenarioResult, Timer, finish

# -- canaries: files outside the served folders that must never be read or removed -------


@dataclass
class Canaries:
    secret: str
    outside: Path              # a folder outside the library and the static folder
    files: dict[Path, bytes]   # every canary and its content
    symlinked_job: str         # library/<symlinked_job> -> outside
    symlinked_image: tuple[str, str]  # library/<queue_id>/<image>.png -> outside/secret.txt
    outside_image: str         # outside/<outside_image>.png exists (reached only through the symlinked job)

    def intact(self) -> list[str]:
        problems = []
        for path, content in self.files.items():
            try:
                if path.read_bytes() != content:
                    problems.append(f"{path.name} changed")
            except FileNotFoundError:
                problems.append(f"{path.name} removed")
        return problems

    def leaked(self, body: bytes) -> bool:
        return self.secret.encode() in body


def plant_canaries(cluster: Cluster) -> Canaries:
    """A secret file and a fake PNG outside the library, reachable only through symlinks planted
    inside it (one job folder, one image), as a hostile or careless user could leave them."""
    existing = getattr(cluster, "_canaries", None)
    if existing is not None:
        return existing
    secret = "canary-" + secrets.token_hex(16)
    outside = cluster.workdir / "outside"
    outside.mkdir(exist_ok=True)
    outside_image = str(uuid.uuid4())
    files = {outside / "secret.txt": f"{secret}\n".encode(),
             outside / f"{outside_image}.png": b"\x89PNG\r\n\x1a\n" + secret.encode(),
             outside / "job.json": json.dumps({"queue_id": "x", "text_prompt": secret}).encode(),
             cluster.workdir / "library.json": secret.encode()}   # next to the library, not in it
    for path, content in files.items():
        path.write_bytes(content)
    symlinked_job = str(uuid.uuid4())
    (cluster.library_dir / symlinked_job).symlink_to(outside, target_is_directory=True)
    job_with_link, linked_image = str(uuid.uuid4()), str(uuid.uuid4())
    (cluster.library_dir / job_with_link).mkdir()
    (cluster.library_dir / job_with_link / f"{linked_image}.png").symlink_to(outside / "secret.txt")
    canaries = Canaries(secret, outside, files, symlinked_job, (job_with_link, linked_image), outside_image)
    cluster._canaries = canaries
    return canaries


def _library_targets(cluster: Cluster) -> tuple[list[str], list[tuple[str, str]]]:
    """Real job ids and (job id, image id) pairs of the library, for the fuzzer to aim at."""
    try:
        entries = json.loads((cluster.library_dir / "library.json").read_bytes())
    except (OSError, ValueError):
        entries = []
    jobs, images = [], []
    for entry in entries[:50]:
        jobs.append(entry["queue_id"])
        for url in entry.get("generated_images", [])[:2]:
            _, job_id, name = url.split("/")
            images.append((job_id, name[:-4]))
    return jobs, images


# -- fuzzing ---------------------------------------------------------------------------------

KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
METHODS = ["GET", "GET", "GET", "POST", "POST", "DELETE", "HEAD", "PUT", "PATCH", "OPTIONS", "TRACE", "BREW"]
TRAVERSAL_SEGMENTS = ["..", "%2e%2e", "%252e%252e", ".%2e", "%2e.", "..%2f", "..%5c", "..\\", "%00", "%c0%ae%c0%ae",
                      ".", "", "library.json", "job.json", ".env", "~", "%", "%ff", "%u002e", "etc", "passwd"]
FIELDS = ["text", "num_images", "seed", "gen_top_k", "gen_top_p", "temperature", "condition_scale", "path",
          "queue_id", "__proto__"]
# Content-Length and Transfer-Encoding are the oversized scenario's: a random length longer than
# the body would only wait out the body deadline.
HEADER_NAMES = ["Authorization", "X-API-Token", "Origin", "Content-Type", "Sec-Fetch-Site", "Accept",
                "Accept-Encoding", "Range", "If-None-Match", "Cookie", "Connection", "Expect", "Host"]


class Fuzzer:
    """Requests drawn from a seeded generator, aimed at every route of the OpenAPI document and
    at the library's real ids, the canaries' ids and traversal segments."""

    def __init__(self, rng: random.Random, routes: list[tuple[str, str]], jobs: list[str],
                 images: list[tuple[str, str]], canaries: Canaries):
        self.rng = rng
        self.routes = routes
        self.jobs = jobs + [canaries.symlinked_job, canaries.symlinked_image[0]]
        self.images = images + [canaries.symlinked_image, (canaries.symlinked_job, canaries.outside_image)]

    def scalar(self):
        r = self.rng
        return r.choice([
            lambda: None, lambda: r.choice([True, False]), lambda: r.randint(-2**40, 2**40),
            lambda: r.choice([0, 1, 2, 4, 6, 8, 9, 4294967296, 4294967297, -1]),
            lambda: r.choice([float("inf"), float("-inf"), 1e308, -0.0, 0.5, 1e-320]),
            lambda: r.choice(["2", "4", "8", "", " ", "NaN", "1e3", "0x10", "٣", "4\u0000"]),
            lambda: self.text(r.randint(0, 40)), lambda: self.text(r.randint(900, 1100)),
            lambda: "<script>alert(1)</script>", lambda: "../" * r.randint(1, 8) + "etc/passwd",
        ])()

    def value(self, depth: int = 0):
        r = self.rng
        if depth > 2 or r.random() < 0.6:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.text(r.randint(0, 8)): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def text(self, length: int) -> str:
        r = self.rng
        alphabet = r.choice(["abc xyz", "\u00e9\u4e2d\U0001F600\u202e\ufeff", "\x00\x01\x7f\"\\'<>&%/",
                             "abcdefghijklmnopqrstuvwxyz0123456789 "])
        return "".join(r.choice(alphabet) for _ in range(length))

    def body(self) -> bytes | None:
        r = self.rng
        kind = r.randrange(8)
        if kind == 0:
            return None
        if kind == 1:
            return r.randbytes(r.randint(0, 400))
        if kind == 2:
            return json.dumps(self.value()).encode()
        if kind == 3:
            return b"[" * r.randint(100, 20000)
        if kind == 4:  # a plausible prompt with one bad field
            body = {"text": "a cat", "num_images": "2", "seed": 1}
            body[r.choice(FIELDS)] = self.scalar()
            return json.dumps(body, ensure_ascii=r.random() < 0.5).encode("utf-8", "surrogatepass")
        if kind == 5:
            image = r.choice(self.images) if self.images else (str(uuid.uuid4()), str(uuid.uuid4()))
            path = r.choice([f"library/{image[0]}/{image[1]}.png", f"library/{image[0]}/../../secret.txt",
                             "/" + self.text(10), f"library/{image[0]}/{image[1]}.png\u0000", self.text(30)])
            return json.dumps({"path": path}).encode()
        return json.dumps({name: self.value() for name in r.sample(FIELDS, r.randint(0, 5))},
                          allow_nan=True).encode()

    def segment(self) -> str:
        r = self.rng
        return r.choice([
            lambda: str(uuid.uuid4()), lambda: r.choice(self.jobs) if self.jobs else "x",
            lambda: r.choice(TRAVERSAL_SEGMENTS), lambda: quote(self.text(r.randint(1, 20)), safe=""),
            lambda: str(uuid.uuid4()).upper(), lambda: "x" * r.randint(100, 3000),
        ])()

    def path(self, method_path: str) -> str:
        r = self.rng
        roll = r.random()
        if roll < 0.5:  # the template with its parameters filled
            image = r.choice(self.images) if self.images else (str(uuid.uuid4()), str(uuid.uuid4()))
            job = r.choice(self.jobs) if self.jobs else str(uuid.uuid4())
            filled = (method_path.replace("{queue_id}", image[0] if r.random() < 0.7 else self.segment())
                      .replace("{image_id}", image[1] if r.random() < 0.7 else self.segment())
                      .replace("{job_id}", job if r.random() < 0.7 else self.segment()))
        elif roll < 0.8:
            filled = "/" + "/".join(self.segment() for _ in range(r.randint(1, 5)))
        else:
            parts = method_path.strip("/").split("/")
            parts.insert(r.randrange(len(parts) + 1), r.choice(TRAVERSAL_SEGMENTS))
            filled = "/" + "/".join(parts)
        if r.random() < 0.3:
            query = "&".join(f"{r.choice(['offset', 'limit', 'q', 'x', ''])}={quote(str(self.scalar()), safe='')}"
                             for _ in range(r.randint(1, 25)))
            filled += "?" + query
        return filled

    def headers(self) -> dict[str, str]:
        r = self.rng
        headers = {}
        for name in r.sample(HEADER_NAMES, r.randint(0, 4)):
            if name == "Host" and r.random() < 0.7:
                continue
            headers[name] = "".join(r.choice("abc 123=;,/*-:.\t") for _ in range(r.randint(0, 40)))
        if r.random() < 0.3:
            headers["Content-Type"] = "application/json"
        return headers

    def request(self) -> tuple[str, str, bytes | None, dict[str, str]]:
        r = self.rng
        route_method, template = r.choice(self.routes)
        method = route_method if r.random() < 0.6 else r.choice(METHODS)
        return method, self.path(template), self.body(), self.headers()


def _send(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int | None, bytes, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body is not None and "Content-Length" not in headers:
            connection.putheader("Content-Length", str(len(body)))
        try:
            connection.endheaders(body)
        except OSError:
            pass  # answered (414, 413 ...) and closed before taking the body: read that answer
        response = connection.getresponse()
        payload = response.read()
        return response.status, payload, time.perf_counter() - started
    except (http.client.HTTPException, OSError, ValueError) as exc:
        return None, repr(exc).encode(), time.perf_counter() - started
    finally:
        connection.close()


def fuzz(cluster: Cluster, count: int = 2000, seed: int = 88) -> ScenarioResult:
    result = ScenarioResult("fuzz", "hostile", f"{count} generated requests (seeded, seed {seed}) across every "
                            "route, method, header and body shape, aimed at real and planted ids")
    recorder = Recorder()
    client = cluster.client(recorder)
    canaries = plant_canaries(cluster)
    port = cluster.frontend_port
    spec = json.loads(client.request("GET", "/openapi.json", "GET /openapi.json").content)
    routes = [(method.upper(), path) for path, item in spec["paths"].items() for method in item
              if method in ("get", "post", "delete", "put", "patch", "head")]
    routes += [("GET", "/index.html"), ("GET", "/js/api.js"), ("GET", "/css/style.css")]
    jobs, images = _library_targets(cluster)
    fuzzer = Fuzzer(random.Random(seed), routes, jobs, images, canaries)
    accepted: list[str] = []
    leaks, no_answer, dropped = [], 0, []
    statuses: dict[int, int] = {}
    with Timer() as timer:
        for _ in range(count):
            method, path, body, headers = fuzzer.request()
            status, payload, secs = _send(port, method, path, body, headers)
            if status is None:
                no_answer += 1
                recorder.failed_connection()
                dropped.append(f"{method} {path[:100]!r} headers {headers} body {body[:60] if body else body!r}: "
                               f"{payload[:100].decode()}")
                continue
            statuses[status] = statuses.get(status, 0) + 1
            # 501 Not Implemented is HTTP's answer to a method the server does not know (RFC 9110).
            unknown_method = status == 501 and method not in KNOWN_METHODS
            recorder.record("fuzz", status, secs, f"{method} {path[:120]!r} body {body[:80] if body else body!r}",
                            expected=unknown_method)
            if canaries.leaked(payload):
                leaks.append(f"{method} {path[:120]}")
            if method == "POST" and path.split("?")[0] == "/prompt" and status == 200:
                accepted.append(json.loads(payload)["queue_id"])
        # Jobs the fuzzer managed to queue are cancelled (or run) and accounted for.
        for job_id in accepted:
            client.cancel(job_id)
        cluster.wait_settled(client, accepted, 60)
        accounting = cluster.account(client, accepted)
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = count
    result.figures["fuzzed requests by status"] = dict(sorted(statuses.items()))
    result.figures["connections closed without an answer"] = no_answer
    result.figures["dropped examples"] = dropped[:5]
    result.figures["prompts the fuzzer got queued"] = len(accepted)
    result.check("no 5xx answer", not recorder.server_errors, "; ".join(recorder.server_errors[:5]))
    result.check("every request answered (no dropped connection)", no_answer == 0, "; ".join(dropped[:3]))
    result.check("no secret of a file outside the library in any answer", not leaks, "; ".join(leaks[:5]))
    result.check("the canaries outside the library are intact", not canaries.intact(), "; ".join(canaries.intact()))
    result.check("the frontend still serves", client.request("GET", "/queue_status", "GET /queue_status").status_code == 200)
    return finish(result, recorder, accounting, cluster.library_check())


# -- path traversal and deletes outside the library ------------------------------------------

def traversal(cluster: Cluster) -> ScenarioResult:
    result = ScenarioResult("traversal", "hostile", "path traversal variants on reads and deletes "
                            "(.., %2e%2e, %252e, absolute, backslash, NUL, symlinks out of the library)")
    recorder = Recorder()
    client = cluster.client(recorder)
    canaries = plant_canaries(cluster)
    port = cluster.frontend_port
    outside = str(canaries.outside).lstrip("/")
    rel_up = "../" * 12
    targets = [f"{rel_up}etc/passwd", f"{rel_up}{outside}/secret.txt", "../library.json", "../outside/secret.txt",
               f"/{outside}/secret.txt", "/etc/passwd"]
    variants = set()
    for target in targets:
        variants |= {
            "/" + target, "/library/" + target, "/js/" + target, "//" + target.lstrip("/"),
            "/" + target.replace("..", "%2e%2e"), "/" + target.replace("..", "%252e%252e"),
            "/" + target.replace("/", "%2f"), "/" + target.replace("/", "\\"),
            "/" + target.replace("/", "%5c"), "/" + target.replace("..", ".%2e"),
            "/" + target + "%00.png", "/" + target.replace("..", "%c0%ae%c0%ae"), "/./" + target,
            "/library/%2e%2e/" + target.lstrip("./"),
        }
    job, image = canaries.symlinked_image
    variants |= {f"/library/{job}/{image}.png", f"/library/{canaries.symlinked_job}/{canaries.outside_image}.png",
                 f"/library/{canaries.symlinked_job}/job.json", f"/library/{canaries.symlinked_job}/secret.txt",
                 "/library.json", "/library/library.json", "/library/", "/.env", "/../.env",
                 f"/library/{job}/{image}.PNG", f"/library/{job.upper()}/{image}.png"}
    leaks, answers = [], {}
    with Timer() as timer:
        for path in sorted(variants):
            for method in ("GET", "HEAD", "DELETE"):
                raw = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode("latin-1", "replace")
                started = time.perf_counter()
                status, body = raw_exchange(port, raw)
                if status is not None:
                    recorder.record("traversal", status, time.perf_counter() - started, f"{method} {path}")
                    answers[status] = answers.get(status, 0) + 1
                if canaries.leaked(body) or b"root:x:0:0" in body:
                    leaks.append(f"{method} {path} -> {status}")
                if status is not None and status < 300 and "/library/" in path:
                    leaks.append(f"{method} {path} answered {status}")
                if status is not None and status < 300:
                    result.figures.setdefault("answered 2xx", []).append(f"{method} {path}")
        # The original UI's delete, with paths aimed outside.
        bad_paths = [f"library/{job}/{image}.png", f"library/{canaries.symlinked_job}/{canaries.outside_image}.png",
                     "library/../outside/secret.txt", f"/{outside}/secret.txt", f"library/{job}/../../outside/secret.txt",
                     f"library\\{job}\\{image}.png", f"library/{job}/{image}.png\u0000", "library/%2e%2e/outside/secret.txt",
                     f"{rel_up}{outside}/secret.txt"]
        for path in bad_paths:
            response = client.request("POST", "/deleteimage", "POST /deleteimage", json={"path": path})
            if response is not None:
                answers[response.status_code] = answers.get(response.status_code, 0) + 1
                if response.status_code < 300:
                    leaks.append(f"POST /deleteimage {path!r} answered {response.status_code}")
        job_deletes = {}
        for job_id in (canaries.symlinked_job, job):
            response = client.request("DELETE", f"/jobs/{job_id}", "DELETE /jobs/{id}")
            answers[response.status_code] = answers.get(response.status_code, 0) + 1
            job_deletes[job_id] = (response.status_code, response.text[:100])
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = len(variants) * 3 + len(bad_paths) + 2
    result.figures["traversal attempts by status"] = dict(sorted(answers.items()))
    result.check("no file outside the library read, no delete outside it accepted", not leaks, "; ".join(leaks[:5]))
    result.check("the canaries outside the library are intact", not canaries.intact(), "; ".join(canaries.intact()))
    result.check("the symlinks planted in the library are still there (never followed to delete)",
                 (cluster.library_dir / canaries.symlinked_job).is_symlink()
                 and (cluster.library_dir / job / f"{image}.png").is_symlink())
    result.check("no 5xx answer", not recorder.server_errors, "; ".join(recorder.server_errors[:5]))
    # A folder that is no job (no job.json, not in library.json) holding a symlink: nothing is
    # deleted, so the answer should say so.
    status, text = job_deletes[job]
    result.check("DELETE /jobs/<a folder that is no job> says nothing was deleted",
                 status == 404 or '"deleted": false' in text.replace('":f', '": f'), f"{status} {text}")
    return finish(result, recorder, None, cluster.library_check())


# -- hostile uploads (issue 35) ---------------------------------------------------------------

def _upload_cases() -> dict[str, tuple[bytes, str, str | None]]:
    """name -> (POST /prompt body, its Content-Type, the field its 400 must name)."""
    h = hostile_uploads

    def json_body(data: bytes | str, **extra) -> bytes:
        text = data if isinstance(data, str) else base64.b64encode(data).decode()
        return json.dumps({"text": "x", "num_images": 2, "init_image_data": text, **extra}).encode()

    field = "init_image_data"
    file_part = h.part(h.FILE_HEAD, h.png(64, 64))
    cases = {
        "empty file part": (h.form(h.PROMPT_PARTS, h.part(h.FILE_HEAD.replace("a.png", "empty.png"), b"")), field),
        "nested multipart/mixed part": (h.form(h.PROMPT_PARTS, h.part(
            h.FILE_HEAD + "\r\nContent-Type: multipart/mixed; boundary=inner",
            b"--inner\r\nContent-Type: image/png\r\n\r\n" + h.png(64, 64) + b"\r\n--inner--")), field),
        "base64 transfer encoding, not base64": (h.form(h.PROMPT_PARTS, h.part(
            h.FILE_HEAD + "\r\nContent-Transfer-Encoding: base64", b"this is not base64 !!")), field),
        "a field sent twice": (h.form(h.PROMPT_PARTS, file_part, file_part), field),
        "33 parts": (h.form(h.PROMPT_PARTS, *[h.part(f'Content-Disposition: form-data; name="x{i}"', b"")
                                               for i in range(31)]), None),
        "5 headers in a part": (h.form(h.PROMPT_PARTS, h.part(h.FILE_HEAD + "\r\nX-A: 1" * 4, h.png(64, 64))), None),
    }
    cases = {name: (body, h.FORM, expected) for name, (body, expected) in cases.items()}
    for name, data, extra in [
            ("empty init_image_data", "", {}),
            ("4096×1 PNG with codes, extend", h.png(4096, 1, rows=16), {"extend": "down"}),
            ("1×64 PNG with codes, extend", h.png(1, 64, rows=16), {"extend": "down"}),
            ("1×65536 PNG with codes, extend", h.png(1, 65536, rows=16), {"extend": "down"}),
            ("1×16,777,216 truncated PNG (69 bytes + codes)", h.png_header(1, 16_777_216, rows=16), {"extend": "down"}),
            ("30000² PNG header", h.png_header(30000, 30000), {}),
            ("2³¹−1×1 PNG header", h.png_header(2**31 - 1, 1), {}),
            ("WebP canvas one pixel over the limit", h.webp_canvas(h.WEBP_SIDE + 1), {}),
            ("animated PNG", h.animated_png(), {}),
            ("64 rows of codes, extended", h.png(64, 256, rows=64), {"extend": "down"})]:
        cases[name] = (json_body(data, **extra), "application/json", field)
    return cases


def hostile_uploads_scenario(cluster: Cluster, at_once: int = hostile_uploads.AT_ONCE) -> ScenarioResult:
    """Issue 35's probe: start pictures that once passed as "no picture" or reached the scheduler
    misshapen, the slowest bodies of the largest size, the costliest picture uploaded `at_once`,
    and a bad start written into Redis past the frontend."""
    result = ScenarioResult("hostile-uploads", "hostile",
                            "start pictures that are empty, nested, encoded, misshapen, bombs or animated; the "
                            "slowest bodies of the largest size; "
                            f"{at_once} costliest pictures at once; a bad start queued past the frontend")
    recorder = Recorder()
    client = Client(cluster.frontend.url, recorder, timeout=120)  # the costliest uploads wait their turn to decode
    queued_before = {job["queue_id"] for job in client.request("GET", "/queue_status").json()}
    answers, wrong, job_ids = {}, [], []
    with Timer() as timer:
        for name, (body, content_type, field) in _upload_cases().items():
            response = client.request("POST", "/prompt", "POST /prompt (hostile upload)", data=body,
                                      headers={"Content-Type": content_type})
            named = None if response is None or response.status_code != 400 else response.json().get("field")
            answers[name] = None if response is None else f"{response.status_code} {named or ''}".strip()
            if response is None or response.status_code != 400 or named != field:
                wrong.append(f"{name}: {answers[name]} (expected 400 naming {field})")
        stray = {job["queue_id"] for job in client.request("GET", "/queue_status").json()} - queued_before
        slowest = {}
        for name, (body, content_type) in hostile_uploads.slowest_bodies(8 * 2**20).items():
            started = time.perf_counter()
            response = client.request("POST", "/prompt", "POST /prompt (8 MiB)", data=body,
                                      headers={"Content-Type": content_type})
            slowest[name] = (None if response is None else response.status_code, round(time.perf_counter() - started, 3))
        peak_before = hostile_uploads.peak_memory_mib(cluster.frontend.pid)
        costliest = json.dumps({"text": "x", "num_images": 2, "init_image_data": base64.b64encode(
            hostile_uploads.costliest_png()).decode()}).encode()
        barrier = threading.Barrier(at_once)

        def upload() -> None:
            barrier.wait()
            response = client.request("POST", "/prompt", "POST /prompt (costliest picture)", data=costliest,
                                      headers={"Content-Type": "application/json"})
            if response is not None and response.status_code == 200:
                job_ids.append(response.json()["queue_id"])
                client.cancel(job_ids[-1])

        threads = [threading.Thread(target=upload) for _ in range(at_once)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak_after = hostile_uploads.peak_memory_mib(cluster.frontend.pid)
        bad_start = _bad_start_past_the_frontend(cluster, client)
        job_ids.append(bad_start["queue_id"])
        alive = client.request("GET", "/queue_status", "GET /queue_status")
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = len(answers) + len(slowest) + at_once + 1
    result.figures["answers"] = answers
    result.figures["slowest bodies of 8 MiB (status, s)"] = slowest
    result.figures[f"frontend peak memory before and after {at_once} costliest uploads at once (MiB)"] = (
        round(peak_before, 1), round(peak_after, 1))
    result.figures["a 4096×1 start queued past the frontend"] = {k: bad_start.get(k) for k in ("status", "attempts", "error")}
    result.check("each hostile upload refused with a 400 naming its field", not wrong, "; ".join(wrong))
    result.check("nothing stray queued", not stray, ", ".join(sorted(stray)))
    result.check("each slowest body answered 400 within 1 s",
                 all(status == 400 and secs < 1.0 for status, secs in slowest.values()), str(slowest))
    result.check(f"every costliest upload accepted ({at_once})", len(job_ids) == at_once + 1, str(len(job_ids) - 1))
    bound = hostile_uploads.PEAK_MEMORY_MIB
    result.check(f"the frontend's peak memory stays under {bound} MiB", peak_after < bound, f"{peak_after:.0f} MiB")
    result.check("a bad start past the frontend fails its job at once, saying why",
                 bad_start.get("status") == "failed" and bad_start.get("attempts") == 1
                 and "the start picture" in (bad_start.get("error") or ""), str(bad_start))
    result.check("the frontend still serves", alive is not None and alive.status_code == 200)
    cluster.wait_settled(client, job_ids, timeout=60)
    return finish(result, recorder, cluster.account(client, job_ids), cluster.library_check())


def _bad_start_past_the_frontend(cluster: Cluster, client: Client) -> dict:
    """A 4096×1 start with codes, extend, written straight into Redis (as an older frontend could
    have queued it): the scheduler must fail it on its first attempt with the reason."""
    redis_client = redis.Redis.from_url(cluster.redis.url)
    try:
        job = JobQueue(redis_client).submit({
            "text": "a start that does not fit its codes", "num_images": 2, "seed": 1, "init_source": "codes",
            "keep_rows": 8, "extend": "down", "init_codes": pictures.pack_codes(range(pictures.SQUARE)),
            "init_picture": base64.b64encode(hostile_uploads.png(4096, 1, rows=16)).decode()})
    finally:
        redis_client.close()
    body: dict = {}

    def finished() -> bool:
        nonlocal body
        answer = client.job(job.id)
        body = answer[1] if answer else {}
        return body.get("status") in ("done", "failed", "cancelled")

    try:
        wait_for(finished, 120, "the bad start's job to finish", interval=0.5)
    except TimeoutError:
        pass
    return {"queue_id": job.id, **body}


# -- oversized and slow requests -------------------------------------------------------------

def oversized(cluster: Cluster) -> ScenarioResult:
    result = ScenarioResult("oversized", "hostile", "oversized bodies, request lines and headers; deep JSON")
    recorder = Recorder()
    client = cluster.client(recorder)
    port = cluster.frontend_port
    head = "POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    cases = {
        # POST /prompt may carry a start picture (8 MiB by default); the other routes 64 KiB.
        "9 MB body": ((head + "Content-Length: 9437184\r\n\r\n").encode() + b"x" * 9437184, {413}),
        "1 MB body to /deleteimage": ((head.replace("/prompt", "/deleteimage") + "Content-Length: 1048576\r\n\r\n"
                                       ).encode() + b"x" * 1048576, {413}),
        "100 MB announced, 64 KB sent": ((head + "Content-Length: 104857600\r\n\r\n").encode() + b"x" * 65536, {413}),
        "10 MB with Expect: 100-continue": ((head + "Content-Length: 10485760\r\nExpect: 100-continue\r\n\r\n").encode(), {413}),
        "Content-Length 10^30": ((head + "Content-Length: " + "9" * 30 + "\r\n\r\n").encode(), {413, 400}),
        "negative Content-Length": ((head + "Content-Length: -1\r\n\r\n").encode(), {400}),
        "chunked body": ((head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode(), {411}),
        "100 KB request line": (b"GET /" + b"a" * 102400 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {414}),
        "300 headers": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n", {431}),
        "a 100 KB header": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 102400 + b"\r\n\r\n", {431, 400}),
        "60 KB of nested JSON": ((head + "Content-Length: 61440\r\n\r\n").encode() + b"[" * 61440, {400}),
        "10,000-character prompt": (None, {400}),
        "1 MB query string": (b"GET /getlibrary?q=" + b"a" * 1048576 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {414}),
    }
    answers, wrong = {}, []
    with Timer() as timer:
        for name, (raw, expected) in cases.items():
            started = time.perf_counter()
            if raw is None:
                response = client.request("POST", "/prompt", "POST /prompt (oversized)",
                                          json={"text": "a" * 10000, "num_images": "2", "seed": 1})
                status = None if response is None else response.status_code
            else:
                status, _ = raw_exchange(port, raw, timeout=20)
                if status is not None:
                    recorder.record("oversized", status, time.perf_counter() - started, name)
            answers[name] = status
            if status not in expected:
                wrong.append(f"{name}: {status} (expected {sorted(expected)})")
        alive = client.request("GET", "/queue_status", "GET /queue_status")
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = len(cases)
    result.figures["answers"] = answers
    result.check("each refused with its 4xx", not wrong, "; ".join(wrong))
    result.check("no 5xx answer", not recorder.server_errors, "; ".join(recorder.server_errors[:5]))
    result.check("the frontend still serves", alive is not None and alive.status_code == 200)
    return finish(result, recorder, None, cluster.library_check())


def slow_requests(cluster: Cluster, slow_clients: int = 60, hold_secs: float = 8.0) -> ScenarioResult:
    """Slowloris: many connections sending their headers or body a byte a second while a normal
    client keeps asking; it must keep being answered, quickly."""
    result = ScenarioResult("slowloris", "hostile",
                            f"{slow_clients} connections dribbling headers or bodies a byte a second for "
                            f"{hold_secs:.0f} s, while a normal client polls /queue_status")
    recorder = Recorder()
    client = cluster.client(recorder)
    port = cluster.frontend_port
    stop = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def dribbler(index: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=hold_secs + 10)
        except OSError:
            with lock:
                outcomes.append("refused")
            return
        with sock:
            if index % 2:
                sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60\r\n\r\n{")
                dribble = b'"text":"slow","num_images":"2","seed":1}' + b" " * 30
            else:
                sock.sendall(b"GET /queue_status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                dribble = b"X-Slow: " + b"a" * 200
            outcome = "held to the end"
            for byte in dribble:
                if stop.wait(1.0):
                    break
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    outcome = "cut off by the server"
                    break
            with lock:
                outcomes.append(outcome)

    latencies: list[float] = []
    failures = 0
    with Timer() as timer:
        threads = [threading.Thread(target=dribbler, args=(i,), daemon=True) for i in range(slow_clients)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        deadline = time.monotonic() + hold_secs
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = client.request("GET", "/queue_status", "GET /queue_status (under slowloris)")
            if response is None or response.status_code != 200:
                failures += 1
            else:
                latencies.append(time.perf_counter() - started)
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(15)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = slow_clients + len(latencies) + failures
    result.figures["normal requests answered"] = f"{len(latencies)} of {len(latencies) + failures}"
    result.figures["their p50/p99 (ms)"] = f"{p50 * 1000:.1f} / {p99 * 1000:.1f}" if latencies else "-"
    result.figures["slow connections"] = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    result.check("every normal request answered 200 during the attack", failures == 0 and latencies,
                 f"{failures} failed")
    result.check("normal requests stay fast (p99 under 1 s)", p99 is not None and p99 < 1.0, f"p99 {p99}")
    result.check("no 5xx answer", not recorder.server_errors, "; ".join(recorder.server_errors[:5]))
    return finish(result, recorder, None, cluster.library_check())


def connection_cap(cluster: Cluster, slow_clients: int = 300, hold_secs: float = 10.0) -> ScenarioResult:
    """More header-dribbling connections than FRONTEND_MAX_CONNECTIONS (256), the cost finding 3
    had: a normal client is refused (503 busy) while every slot is held, until the head deadline
    frees them. A figure more than a check."""
    result = ScenarioResult("connection-cap", "hostile",
                            f"{slow_clients} connections (more than the 256 allowed at once) sending their "
                            f"headers a byte a second for {hold_secs:.0f} s, while a normal client polls")
    recorder = Recorder()
    client = cluster.client(recorder)
    port = cluster.frontend_port
    stop = threading.Event()
    socks: list[socket.socket] = []
    outcomes = {"held": 0, "refused (503 busy or closed)": 0}
    with Timer() as timer:
        for _ in range(slow_clients):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"GET /queue_status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                socks.append(sock)
            except OSError:
                outcomes["refused (503 busy or closed)"] += 1

        def dribble() -> None:
            for _ in range(int(hold_secs) + 2):
                if stop.wait(1.0):
                    return
                for sock in socks:
                    try:
                        sock.sendall(b"a")
                    except OSError:
                        pass
        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        answered, busy, other = 0, 0, 0
        deadline = time.monotonic() + hold_secs
        while time.monotonic() < deadline:
            response = client.request("GET", "/queue_status", "GET /queue_status (slots held)", expect_5xx=True)
            if response is not None and response.status_code == 200:
                answered += 1
            elif response is not None and response.status_code == 503:
                busy += 1
            else:
                other += 1
            time.sleep(0.2)
        stop.set()
        thread.join(5)
        for sock in socks:
            sock.setblocking(False)
            try:
                outcomes["refused (503 busy or closed)" if sock.recv(64) is not None else "held"] += 1
            except BlockingIOError:
                outcomes["held"] += 1
            except OSError:
                outcomes["refused (503 busy or closed)"] += 1
            sock.close()
        recovered = wait_for(lambda: (r := client.request("GET", "/queue_status", "GET /queue_status")) is not None
                             and r.status_code == 200, 30, "the frontend answering again")
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = slow_clients
    result.figures["slow connections"] = outcomes
    result.figures["normal requests while they were held"] = (f"{answered} answered 200, {busy} refused 503 busy, "
                                                              f"{other} without an answer")
    result.check("the frontend answers again once the slow clients leave", recovered)
    return finish(result, recorder, None, cluster.library_check())


def header_deadline(cluster: Cluster, max_secs: float = 12.0) -> ScenarioResult:
    """One connection sending a header byte every second (never silent for the socket timeout):
    the server must cut it off within a bounded time, or enough of them hold every slot."""
    result = ScenarioResult("header-deadline", "hostile",
                            f"a client sending its headers a byte a second for up to {max_secs:.0f} s "
                            "(the frontend here: 5 s socket timeout, 5 s head and body deadlines)")
    recorder = Recorder()
    port = cluster.frontend_port
    cut_after = None
    with Timer() as timer:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(b"GET /queue_status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            started = time.monotonic()
            while time.monotonic() - started < max_secs:
                time.sleep(1.0)
                try:
                    sock.sendall(b"a")
                    sock.setblocking(False)
                    try:
                        sock.recv(1024)   # returns an answer (408) or b"" (closed): cut off
                        cut_after = time.monotonic() - started
                        break
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
                except OSError:
                    cut_after = time.monotonic() - started
                    break
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = 1
    result.figures["cut off after (s)"] = None if cut_after is None else round(cut_after, 1)
    result.check(f"a client dribbling its headers is cut off within {max_secs:.0f} s", cut_after is not None,
                 f"still connected after {max_secs:.0f} s: the request line and headers have no deadline")
    return finish(result, recorder, None, cluster.library_check())


# -- a prompt with HTML/script in the browser ------------------------------------------------

SCRIPT_PROMPTS = [
    '<script>window.__pwned = "script"</script>',
    '<img src=x onerror="window.__pwned = \'img\'">',
    '"><svg onload="window.__pwned = \'svg\'">',
    "javascript:window.__pwned='href'//<a href=\"javascript:window.__pwned='a'\">x</a>",
    "</textarea><iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>",
]


def script_prompt(cluster: Cluster) -> ScenarioResult:
    result = ScenarioResult("script-prompt", "hostile", "prompts carrying HTML/script, queued and done, "
                            "then the prompt page (queue) and the library page loaded in headless Chromium")
    recorder = Recorder()
    client = cluster.client(recorder)
    try:
        from browser import CHROMIUM_ARGS, chromium_path  # tests/browser.py
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        result.skipped = f"no Playwright: {exc}"
        return result
    if not chromium_path():
        result.skipped = "no chromium found (apt-get install chromium, or set CHROMIUM_PATH)"
        return result
    with Timer() as timer:
        done_ids = [client.submit(text, seed=7) for text in SCRIPT_PROMPTS]
        cluster.wait_settled(client, done_ids, 60)
        # Two more held in the queue (submitted while the scheduler is stopped) for the queue view.
        cluster.scheduler.kill()
        queued_ids = [client.submit(text, seed=8) for text in SCRIPT_PROMPTS[:2]]
        findings, rendered = [], {}

        def look() -> None:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
                try:
                    for page_path, marker in (("/library.html", SCRIPT_PROMPTS[0]), ("/", SCRIPT_PROMPTS[0])):
                        context = browser.new_context()
                        page = context.new_page()
                        dialogs, errors = [], []
                        page.on("dialog", lambda dialog, seen=dialogs: (seen.append(dialog.message), dialog.dismiss()))
                        page.on("console", lambda message, seen=errors: seen.append(message.text)
                                if message.type == "error" else None)
                        page.on("pageerror", lambda error, seen=errors: seen.append(str(error)))
                        page.goto(cluster.frontend.url + page_path, wait_until="load")
                        try:
                            page.wait_for_function("t => document.body.innerText.includes(t)", arg=marker, timeout=15000)
                            rendered[page_path] = True
                        except PlaywrightTimeout:
                            rendered[page_path] = False
                        page.wait_for_timeout(1500)
                        pwned = page.evaluate("window.__pwned ?? null")
                        injected = page.evaluate(
                            "[...document.querySelectorAll('script')].filter(s => s.textContent.includes('__pwned')).length"
                            " + document.querySelectorAll('img[src=\"x\"], svg[onload], iframe[srcdoc], "
                            "a[href^=\"javascript\"]').length")
                        if pwned is not None or dialogs:
                            findings.append(f"{page_path}: script ran ({pwned}, dialogs {dialogs})")
                        if injected:
                            findings.append(f"{page_path}: {injected} injected elements in the page")
                        result.figures[f"{page_path} console errors"] = len(errors)
                        context.close()
                finally:
                    browser.close()

        # In a thread of its own: Playwright's sync API refuses to start where an asyncio loop
        # runs (the test session's own browser, when browser tests ran first in this process).
        failed: list[BaseException] = []
        looker = threading.Thread(target=lambda: _capture(look, failed), name="script-prompt browser")
        looker.start()
        looker.join()
        if failed:
            raise failed[0]
        for job_id in queued_ids:
            client.cancel(job_id)
        cluster.scheduler.start()
        accounting = cluster.account(client, done_ids + queued_ids)
        cluster.wait_healthy(60)
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = len(SCRIPT_PROMPTS) + 2
    result.figures["prompt shown as text"] = rendered
    result.check("the prompts were shown (as text) on the pages", all(rendered.values()), str(rendered))
    result.check("no script ran and no element was injected", not findings, "; ".join(findings))
    result.check("the prompts were done (and the extra ones cancelled)",
                 accounting.done == len(done_ids) and accounting.cancelled == len(queued_ids),
                 str(accounting.as_dict()))
    return finish(result, recorder, accounting, cluster.library_check())


def _capture(run, failed: list) -> None:
    try:
        run()
    except BaseException as exc:  # noqa: BLE001 - handed to the scenario's thread
        failed.append(exc)


# -- the API token ---------------------------------------------------------------------------

def api_token(cluster: Cluster) -> ScenarioResult:
    token = secrets.token_urlsafe(24)
    result = ScenarioResult("api-token", "hostile", "a second frontend with API_TOKEN set, on the same queue and "
                            "library: every changing request without the token (or with a wrong one) → 401")
    recorder = Recorder()
    guarded = cluster.start_extra_frontend({"API_TOKEN": token})
    anonymous = Client(guarded.url, recorder)
    wrong = Client(guarded.url, recorder, token=token[:-1] + ("x" if token[-1] != "x" else "y"))
    owner = Client(guarded.url, recorder, token=token)
    jobs, images = _library_targets(cluster)
    with Timer() as timer:
        cluster.scheduler.kill()  # keeps a queued job queued while we try to cancel it
        queued = owner.submit("a queued job the token protects", seed=3)
        before = _state(cluster, owner)
        attempts = []
        image = images[0] if images else (str(uuid.uuid4()), str(uuid.uuid4()))
        job = jobs[0] if jobs else str(uuid.uuid4())
        for who, client in (("no token", anonymous), ("wrong token", wrong)):
            for method, path, kwargs in (
                    ("POST", "/prompt", {"json": {"text": "sneaky", "num_images": "2", "seed": 1}}),
                    ("POST", "/deleteimage", {"json": {"path": f"library/{image[0]}/{image[1]}.png"}}),
                    ("DELETE", f"/library/{image[0]}/{image[1]}.png", {}),
                    ("DELETE", f"/jobs/{job}", {}),
                    ("POST", f"/jobs/{queued}/cancel", {}),
                    ("POST", "/prompt", {"json": {"text": "sneaky"}, "headers": {"X-API-Token": ""}}),
                    ("POST", "/prompt", {"data": b"{}", "headers": {"Authorization": "Basic Zm9vOmJhcg=="}})):
                response = client.request(method, path, f"{method} {path.split('/')[1]} ({who})", **kwargs)
                attempts.append((who, method, path, None if response is None else response.status_code))
        after = _state(cluster, owner)
        reads = [owner.request("GET", p).status_code for p in ("/queue_status", "/getlibrary")]
        open_reads = [anonymous.request("GET", p).status_code for p in ("/queue_status", "/getlibrary", "/health")]
        cancelled = owner.cancel(queued)
        cluster.scheduler.start()
        accounting = cluster.account(owner, [queued])
        cluster.wait_healthy(60)
    guarded.stop()
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = len(attempts)
    not_401 = [a for a in attempts if a[3] != 401]
    result.figures["changing requests refused"] = f"{len(attempts) - len(not_401)} of {len(attempts)} with 401"
    result.check("every changing request without the right token → 401", not not_401, str(not_401[:5]))
    result.check("nothing changed: library.json, the queue and the PNGs as before", before == after)
    result.check("reads stay open", all(s == 200 for s in reads) and open_reads[:2] == [200, 200], str(open_reads))
    result.check("with the token the owner can cancel", cancelled == 200, f"cancel answered {cancelled}")
    result.check("no 5xx answer", not recorder.server_errors, "; ".join(recorder.server_errors[:5]))
    return finish(result, recorder, accounting, cluster.library_check())


def _state(cluster: Cluster, client: Client) -> tuple:
    """library.json's bytes, the queue's ids and statuses, the PNG files: what a write would change."""
    index = cluster.library_dir / "library.json"
    queue = [(job["queue_id"], job["status"]) for job in client.request("GET", "/queue_status").json()]
    return (index.read_bytes() if index.exists() else b"", queue,
            sorted(str(p.relative_to(cluster.library_dir)) for p in cluster.library_dir.rglob("*.png")))


def canaries_survive(cluster: Cluster) -> ScenarioResult:
    """Last: the canaries, after everything, and the planted symlinks removed again."""
    result = ScenarioResult("canaries", "hostile", "after all hostile scenarios: files outside the library intact")
    canaries = plant_canaries(cluster)
    result.check("every canary file intact", not canaries.intact(), "; ".join(canaries.intact()))
    # Remove the planted symlinks (not their targets) so the library is the suite's own again.
    (cluster.library_dir / canaries.symlinked_job).unlink(missing_ok=True)
    job, image = canaries.symlinked_image
    (cluster.library_dir / job / f"{image}.png").unlink(missing_ok=True)
    shutil.rmtree(cluster.library_dir / job, ignore_errors=True)
    return finish(result, Recorder(), None, cluster.library_check())


SCENARIOS = [fuzz, traversal, oversized, hostile_uploads_scenario, slow_requests, header_deadline, script_prompt,
             api_token, canaries_survive]
