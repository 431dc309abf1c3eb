"""Property-based fuzzing of every route: whatever arrives, the answer is a complete response
with a status below 500, and the server keeps serving."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import time
import uuid
from urllib.parse import quote, urlencode

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from frontend.config import Config
from frontend.server import KNOWN_METHODS, METHOD_TOKEN
from frontend.threaded import serving
from playground import pictures
from playground.limits import MAX_GRID_CELLS
from playground.library import LibraryStore
from playground.queue import JobQueue
from testkit import hostile_uploads

FUZZ_SETTINGS = settings(max_examples=300, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(redis_server, tmp_path_factory):
    """A server with some jobs and library entries the fuzzer can aim at."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "static").mkdir()
    (root / "static" / "index.html").write_text("<!doctype html>")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    queue = JobQueue(client)
    store = LibraryStore(root / "library")
    job_ids = [queue.submit({"text": f"job {i}", "num_images": 2, "seed": i}).id for i in range(3)]
    images = []
    for i in range(3):
        entry = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": f"entry {i}",
                               "creation_unixtime": time.time()}, [b"\x89PNG one", b"\x89PNG two"])
        job_ids.append(entry["queue_id"])
        images.extend(entry["generated_images"])
    ours = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "ours", "creation_unixtime": time.time()},
                         [OUR_PNG, pictures.png_bytes(Image.new("RGB", (20, 10)))])
    images.extend(ours["generated_images"])
    config = Config(port=0, redis_url=redis_server.url, library_dir=root / "library",
                    static_dir=root / "static", max_body_bytes=4096, socket_timeout_secs=2,
                    body_deadline_secs=2, max_queued_jobs=50)
    with serving(config) as server:
        yield {"server": server, "job_ids": job_ids, "images": images, "queue": queue}
    client.close()


def send(server, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        length = response.getheader("Content-Length")
        assert length is not None and int(length) == len(payload) or method == "HEAD"
        return response.status, payload
    finally:
        connection.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)
prompt_values = st.one_of(json_values, st.sampled_from(["2", "4", "6", "8", "0", "4294967296", "4294967297",
                                                        "", " ", "-1", "1e3", "NaN"]),
                          st.integers(min_value=-10, max_value=2**33))
prompt_bodies = st.fixed_dictionaries({}, optional={
    name: prompt_values for name in ("text", "num_images", "seed", "gen_top_k", "gen_top_p",
                                     "temperature", "condition_scale", "model", "path", "keep_previews",
                                     "candidates", "rank", "upscale")})
bodies = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    prompt_bodies.map(lambda value: json.dumps(value).encode()),
    prompt_bodies.map(lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)
OUR_PNG = pictures.png_bytes(Image.new("RGB", (32, 32), (5, 6, 7)),
                             {pictures.CODES_KEY: pictures.pack_codes(range(256))})
encoded = lambda data: base64.b64encode(data).decode()  # noqa: E731
# Hostile uploads (issue 35): bombs and truncated files declaring what no start may have,
# shapes their codes do not fit, too many rows, an animation, nothing at all.
HOSTILE_PICTURES = [hostile_uploads.png_header(1, 16_777_216, rows=16), hostile_uploads.png_header(30000, 30000),
                    hostile_uploads.png_header(2**31 - 1, 1), hostile_uploads.png(4096, 1, rows=16),
                    hostile_uploads.png(1, 64, rows=16), hostile_uploads.png(1, 65536, rows=16),
                    hostile_uploads.png(64, 64, rows=17), hostile_uploads.png(64, 256, rows=64),
                    hostile_uploads.animated_png(), b""]
# Base64 as tools write it, and as they do not.
BASE64_STYLES = [encoded, lambda data: base64.encodebytes(data).decode(), lambda data: encoded(data).rstrip("="),
                 lambda data: base64.urlsafe_b64encode(data).decode(), lambda data: "data:image/png;base64," + encoded(data),
                 lambda data: " ".join(encoded(data)), lambda data: encoded(data) + "=="]
# Uploads: our PNG whole, cut, with junk after it, with a few bytes changed; random bytes.
picture_data = st.one_of(
    st.builds(lambda data, style: style(data), st.sampled_from([OUR_PNG, OUR_PNG[:60], OUR_PNG + b"junk",
                                                                *HOSTILE_PICTURES]), st.sampled_from(BASE64_STYLES)),
    st.binary(max_size=200).map(encoded),
    st.builds(lambda at, junk: OUR_PNG[:at] + junk + OUR_PNG[at + len(junk):],
              st.integers(0, len(OUR_PNG)), st.binary(min_size=1, max_size=8)).map(encoded),
)
segments = st.one_of(st.builds(lambda: str(uuid.uuid4())), st.text(max_size=40), st.sampled_from(
    ["..", "%2e%2e", "%252e", "\\", "%00", ".", "", "library.json", "job.json"]))
header_sets = st.dictionaries(
    st.sampled_from(["Authorization", "X-API-Token", "Origin", "Content-Type", "Sec-Fetch-Site", "Accept",
                     "Range", "If-None-Match", "Cookie", "Connection"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40), max_size=4)


@FUZZ_SETTINGS
@given(data=st.data())
def test_every_route_answers_below_500(world, data):
    server = world["server"]
    route = data.draw(st.sampled_from(server.api.router.routes), label="route")
    path = route.template
    for name in ("queue_id", "job_id", "image_id"):
        if "{" + name + "}" in path:
            choice = data.draw(st.one_of(st.sampled_from(world["job_ids"] + [i.split("/")[2][:-4] for i in world["images"]]),
                                         segments), label=name)
            path = path.replace("{" + name + "}", quote(choice, safe="%"))
    query = data.draw(st.dictionaries(st.sampled_from(["offset", "limit", "q", "x", "image", "sort"]),
                                      st.text(max_size=20), max_size=3))
    if query:
        path += "?" + urlencode(query)
    method = data.draw(st.sampled_from([route.method, route.method, "GET", "HEAD", "POST", "DELETE", "PUT", "PATCH"]))
    body = data.draw(bodies, label="body")
    status, payload = send(server, method, path, body, data.draw(header_sets, label="headers"))
    # /health says 503 by design here: no scheduler worker runs in this test.
    healthy_or_health = status < 500 or (status == 503 and path.startswith("/health"))
    assert healthy_or_health, (method, path, body, payload)


@FUZZ_SETTINGS
@given(body=bodies, headers=header_sets)
def test_prompt_bodies_answer_200_or_a_named_400(world, body, headers):
    status, payload = send(world["server"], "POST", "/prompt", body, headers)
    assert status in (200, 400, 403, 411, 429), payload
    if status == 400:
        assert json.loads(payload)["error"]


@FUZZ_SETTINGS
@given(data=st.data())
def test_continuation_bodies_answer_200_or_a_named_400(world, data):
    """The start of a continuation: library paths (real, broken, missing), uploads, rows."""
    paths = st.sampled_from(world["images"] + ["library/" + str(uuid.uuid4()) + "/" + str(uuid.uuid4()) + ".png"])
    start = st.one_of(paths, picture_data, prompt_values)
    body = data.draw(st.fixed_dictionaries({"text": st.just("x"), "num_images": st.just(2)}, optional={
        "init_image": start, "init_image_data": start, "keep_rows": prompt_values,
        "extend": st.one_of(st.sampled_from(["down", "up", ""]), prompt_values)}), label="body")
    status, payload = send(world["server"], "POST", "/prompt", json.dumps(body).encode(), {})
    assert status in (200, 400, 429), (body, payload)
    if status == 400:
        assert json.loads(payload)["field"] in ("init_image", "init_image_data", "keep_rows", "extend")
    if status == 200:
        job = settled(world, payload)
        if body.get("init_image_data") is not None:  # only its absence means "no picture"
            assert job.init_source is not None, body


grid_values = st.one_of(prompt_values, st.sampled_from(["0.5", "1", "a fox", " ", "x" * 1001]),
                        st.floats(min_value=-2, max_value=2))
grid_axes = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "field": st.one_of(st.sampled_from(["top_k", "top_p", "temperature", "condition_scale", "seed", "text",
                                        "gen_top_k", ""]), json_values),
    "values": st.one_of(st.lists(grid_values, max_size=18), json_values)}))


@FUZZ_SETTINGS
@given(data=st.data())
def test_grid_bodies_answer_200_or_a_named_400(world, data):
    """A grid sweep: any axes, fields and values (the object or its JSON text); queued, it draws
    one picture per cell, at most MAX_GRID_CELLS."""
    grid = data.draw(st.one_of(json_values, st.fixed_dictionaries({}, optional={"x": grid_axes, "y": grid_axes})),
                     label="grid")
    body = data.draw(st.fixed_dictionaries({"grid": st.one_of(st.just(grid), st.just(json.dumps(grid)))}, optional={
        "text": st.one_of(st.just("x"), prompt_values), "num_images": st.one_of(st.just(1), prompt_values),
        "candidates": prompt_values}), label="body")
    status, payload = send(world["server"], "POST", "/prompt", json.dumps(body).encode(), {})
    assert status in (200, 400, 429), (body, payload)
    if status == 400:
        assert json.loads(payload)["field"] in ("grid", "text", "num_images", "candidates", "seed", "gen_top_k",
                                                "gen_top_p", "temperature", "condition_scale"), payload
    if status == 200:
        job = settled(world, payload)
        if job.grid is not None:
            assert 2 <= job.num_images <= MAX_GRID_CELLS and job.to_status()["grid"]["x"]["values"]


@FUZZ_SETTINGS
@given(data=st.data())
def test_upscale_bodies_answer_200_or_a_named_400(world, data):
    """POST /upscale: library paths (pictures, files that are no pictures, missing), any value,
    any model; with no backend ready, only a model left to the backend is queued."""
    paths = st.sampled_from(world["images"] + ["library/" + str(uuid.uuid4()) + "/" + str(uuid.uuid4()) + ".png"])
    body = data.draw(st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "path": st.one_of(paths, paths.map(lambda path: "/" + path), prompt_values),
        "model": st.one_of(st.sampled_from(["demo", "", None]), prompt_values)})), label="body")
    status, payload = send(world["server"], "POST", "/upscale", json.dumps(body).encode(), {})
    assert status in (200, 400, 429), (body, payload)
    if status == 400:
        assert json.loads(payload)["field"] in (None, "path", "model"), (body, payload)
    if status == 200:
        job = settled(world, payload)
        assert job.kind == "upscale" and job.upscale_of in world["images"], body


@FUZZ_SETTINGS
@given(value=st.one_of(prompt_values, st.sampled_from([4, "4", " 4", 0, "0", "", None, 4.0, "4.0", 2, -4])))
def test_upscale_on_a_prompt_answers_200_or_a_400_naming_it(world, value):
    """POST /prompt's `upscale`: any value is kept as 4 or none, or refused naming the field."""
    status, payload = send(world["server"], "POST", "/prompt",
                           json.dumps({"text": "x", "num_images": 2, "upscale": value}).encode(), {})
    assert status in (200, 400, 429), (value, payload)
    if status == 400:
        assert json.loads(payload)["field"] == "upscale", (value, payload)
    if status == 200:
        assert settled(world, payload).upscale in (4, None), value


def settled(world, payload: bytes):
    """The job a 200 queued, cancelled at once: the queue's cap is left for the 429s of other
    tests, and the next examples still get their 200s."""
    return world["queue"].cancel(json.loads(payload)["queue_id"])


def _multipart(parts, boundary: str) -> bytes:
    body = b""
    for name, content, filename, header in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{header}\r\n"
        body += head.encode("utf-8", "replace") + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode("utf-8", "replace")


# A part's other headers: nested, encoded, typed, many, long.
PART_HEADERS = ["", "", "Content-Type: image/png\r\n", "Content-Type: multipart/mixed; boundary=x\r\n",
                "Content-Transfer-Encoding: base64\r\n", "Content-Transfer-Encoding: quoted-printable\r\n",
                "X-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\n", f"X-Long: {'a' * 2000}\r\n"]
# Uploads that once passed as "no picture": an empty file, a nested part, an encoded one.
HOSTILE_UPLOAD_PARTS = [
    ("init_image_data", b"", "empty.png", ""),
    ("init_image_data", b"--x\r\nContent-Type: image/png\r\n\r\n" + OUR_PNG + b"\r\n--x--", "a.png",
     "Content-Type: multipart/mixed; boundary=x\r\n"),
    ("init_image_data", b"this is not base64!", "a.png", "Content-Transfer-Encoding: base64\r\n"),
    ("init_image_data", b"", None, "")]
multipart_parts = st.lists(st.tuples(
    st.sampled_from(["text", "num_images", "seed", "keep_rows", "extend", "init_image", "init_image_data",
                     "keep_previews", "upscale", ""])
    | st.text(max_size=10),
    st.sampled_from([b"x", b"2", b"4", b"8", b"down", b"", OUR_PNG, OUR_PNG[:40], b"\xff\xfe", *HOSTILE_PICTURES])
    | st.binary(max_size=60),
    st.none() | st.sampled_from(["a.png", "", "\"q\""]),
    st.sampled_from(PART_HEADERS)), max_size=6)


@FUZZ_SETTINGS
@given(parts=multipart_parts, boundary=st.sampled_from(["b0undary", "x", ""])
       | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20),
       raw=st.booleans(), junk=st.binary(max_size=200), repeat=st.sampled_from([1, 1, 1, 12]), valid=st.booleans(),
       upload=st.none() | st.sampled_from(HOSTILE_UPLOAD_PARTS))
def test_multipart_bodies_answer_200_or_a_named_400(world, parts, boundary, raw, junk, repeat, valid, upload):
    """Multipart/form-data bodies, well formed or not, with any boundary (or junk as the body),
    their parts repeated past the cap on parts now and then; half of them start with a valid
    text and num_images, and a hostile upload, so that what follows decides."""
    parts = ([("text", b"x", None, ""), ("num_images", b"2", None, "")] if valid else []) + (
        [upload] if upload else []) + parts
    body = junk if raw else _multipart(parts * repeat, boundary)
    content_type = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    status, payload = send(world["server"], "POST", "/prompt", body,
                           {"Content-Type": content_type.encode("latin-1", "replace").decode("latin-1")})
    assert status in (200, 400, 429), (parts, boundary, payload)
    # An upload sent is a start, or a 400; only a browser's empty file input is "no picture".
    uploads = [p for p in parts if p[0] == "init_image_data" and not (p[2] == "" and p[1] == b"")]
    if status == 200:
        job = settled(world, payload)
        if uploads and not raw:
            assert job.init_source is not None, (parts, payload)


@FUZZ_SETTINGS
@given(path=st.text(max_size=80))
def test_any_path_answers_below_500(world, path):
    status, payload = send(world["server"], "GET", "/" + quote(path, safe="/%?&=.\\"), None, {})
    assert status < 500
    assert not payload.startswith(b"\x89PNG") or path.startswith("library/")  # no picture outside the library


@FUZZ_SETTINGS
@given(request=st.binary(max_size=400) | st.builds(
    lambda method, target, rest: method + b" " + target + b" HTTP/1.1\r\n" + rest,
    st.sampled_from([b"GET", b"POST", b"HEAD", b"DELETE", b"X"]), st.binary(max_size=60), st.binary(max_size=200)))
def test_raw_bytes_get_a_response_or_a_clean_close(world, request):
    server = world["server"]
    data = exchange(server, request)
    if data:
        status = int(data.split(b" ", 2)[1])
        # 501 is HTTP's answer to a well-formed method the server does not implement.
        words = request.split(b"\n", 1)[0].decode("latin-1").split()  # as http.server splits it
        method = words[0] if words else ""
        unknown_method = METHOD_TOKEN.fullmatch(method) and method not in KNOWN_METHODS
        assert status < 500 or (status == 501 and unknown_method), (request, data)
    after = exchange(server, b"GET /queue_status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert after.startswith(b"HTTP/1.1 200 "), after


def exchange(server, request: bytes) -> bytes:
    """Send `request`, half-close, and return everything the server sends until it closes."""
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data
