"""POST /prompt validation over real HTTP: every bad body gets 400 naming the field, nothing is
queued, and the connection stays usable."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import os
import threading
import time
import uuid

import pytest
from PIL import Image

from frontend.config import Config
from frontend.threaded import serving
from frontend.validation import ValidationError, validate_prompt
from frontend import api
from playground import pictures
from playground.library import LibraryStore
from playground.protocol import BackendStatus
from playground.queue import JobQueue
from scheduler.worker_queue import WorkerQueue
from testkit import hostile_uploads

GOOD = {"text": "a squirrel", "num_images": "6", "seed": 12345}
MAX_UPLOAD = 64 * 1024  # the servers' below: POST /prompt bodies up to 128 KiB are read
MISSING = "library/00000000-0000-4000-8000-000000000000/00000000-0000-4000-8000-000000000001.png"


def _png(size=(40, 30), text: dict | None = None, mode="RGB") -> str:
    return base64.b64encode(pictures.png_bytes(Image.new(mode, size, 1), text)).decode()


def _jpeg() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 20), (9, 99, 199)).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


PICTURE = _png()
OURS = _png((64, 64), {pictures.CODES_KEY: pictures.pack_codes(range(256))})


@pytest.fixture(scope="module")
def module_server(redis_server, tmp_path_factory):
    config = Config(port=0, redis_url=redis_server.url, library_dir=tmp_path_factory.mktemp("library"),
                    max_upload_bytes=MAX_UPLOAD)
    with serving(config) as server:
        yield server


@pytest.fixture
def connection(module_server, redis_url):
    host, port = module_server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    yield connection
    connection.close()


@pytest.fixture
def queue(redis_client):
    return JobQueue(redis_client)


def post(connection, body: bytes, headers: dict | None = None) -> tuple[int, dict, http.client.HTTPResponse]:
    connection.request("POST", "/prompt", body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = json.loads(response.read())
    return response.status, payload, response


BAD_BODIES = [
    # (body, field named in the error, or None for the body as a whole)
    (b"", None),
    (b"   ", None),
    (b"not json", None),
    (b"{\"text\": ", None),
    (b"\xff\xfe\xfa", None),
    (b"[1, 2, 3]", None),
    (b"\"a string\"", None),
    (b"null", None),
    (b"[" * 5000 + b"]" * 5000, None),
    (json.dumps({"num_images": "6"}).encode(), "text"),
    (json.dumps({**GOOD, "text": ""}).encode(), "text"),
    (json.dumps({**GOOD, "text": "   \n\t "}).encode(), "text"),
    (json.dumps({**GOOD, "text": "x" * 1001}).encode(), "text"),
    (json.dumps({**GOOD, "text": 42}).encode(), "text"),
    (json.dumps({**GOOD, "text": ["a"]}).encode(), "text"),
    (json.dumps({**GOOD, "text": {"a": 1}}).encode(), "text"),
    (json.dumps({**GOOD, "text": "nul\u0000byte"}).encode(), "text"),
    (b'{"text": "lone \\ud800 surrogate", "num_images": 2}', "text"),
    (json.dumps({"text": "x"}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": 5}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": "3"}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": 0}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": 10}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": -2}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": "six"}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": 6.5}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": True}).encode(), "num_images"),
    (json.dumps({**GOOD, "num_images": [6]}).encode(), "num_images"),
    (json.dumps({**GOOD, "seed": 4294967297}).encode(), "seed"),
    (json.dumps({**GOOD, "seed": "4294967297"}).encode(), "seed"),
    (json.dumps({**GOOD, "seed": -1}).encode(), "seed"),
    (json.dumps({**GOOD, "seed": 10**30}).encode(), "seed"),
    (json.dumps({**GOOD, "seed": 1.5}).encode(), "seed"),
    (json.dumps({**GOOD, "seed": "12abc"}).encode(), "seed"),
    (json.dumps({**GOOD, "seed": False}).encode(), "seed"),
    (b'{"text": "x", "num_images": 2, "seed": 1' + b"0" * 5000 + b"}", None),
    (json.dumps({**GOOD, "gen_top_k": 0}).encode(), "gen_top_k"),
    (json.dumps({**GOOD, "gen_top_k": "many"}).encode(), "gen_top_k"),
    (json.dumps({**GOOD, "gen_top_k": 1.5}).encode(), "gen_top_k"),
    (json.dumps({**GOOD, "gen_top_k": 10**9}).encode(), "gen_top_k"),
    (json.dumps({**GOOD, "gen_top_p": 0}).encode(), "gen_top_p"),
    (json.dumps({**GOOD, "gen_top_p": 1.01}).encode(), "gen_top_p"),
    (json.dumps({**GOOD, "gen_top_p": "half"}).encode(), "gen_top_p"),
    (b'{"text": "x", "num_images": 2, "gen_top_p": NaN}', "gen_top_p"),
    (json.dumps({**GOOD, "temperature": 0}).encode(), "temperature"),
    (json.dumps({**GOOD, "temperature": -1}).encode(), "temperature"),
    (b'{"text": "x", "num_images": 2, "temperature": Infinity}', "temperature"),
    (json.dumps({**GOOD, "temperature": "inf"}).encode(), "temperature"),
    (json.dumps({**GOOD, "temperature": [1]}).encode(), "temperature"),
    (json.dumps({**GOOD, "condition_scale": -0.5}).encode(), "condition_scale"),
    (b'{"text": "x", "num_images": 2, "condition_scale": 1e999}', "condition_scale"),
    (json.dumps({**GOOD, "condition_scale": {"x": 1}}).encode(), "condition_scale"),
    (json.dumps({**GOOD, "model": 3}).encode(), "model"),
    (json.dumps({**GOOD, "model": ["mini"]}).encode(), "model"),
    (json.dumps({**GOOD, "model": "m" * 201}).encode(), "model"),
    (json.dumps({**GOOD, "model": "mini\n"}).encode(), "model"),
    # No backend serves it (none has reported yet, and the server's default is not this).
    (json.dumps({**GOOD, "model": "mega"}).encode(), "model"),
    # Keeping the previews for a reveal (issue 17).
    *[(json.dumps({**GOOD, "upscale": value}).encode(), "upscale")
      for value in (2, 8, -4, 4.5, "4x", "x4", True, [4], {"scale": 4}, 10**30)],
    (json.dumps({**GOOD, "keep_previews": "maybe"}).encode(), "keep_previews"),
    (json.dumps({**GOOD, "keep_previews": 1}).encode(), "keep_previews"),
    (json.dumps({**GOOD, "keep_previews": [True]}).encode(), "keep_previews"),
    # A continuation's start (issue 16).
    (json.dumps({**GOOD, "init_image": MISSING}).encode(), "init_image"),
    (json.dumps({**GOOD, "init_image": "library/../../etc/passwd.png"}).encode(), "init_image"),
    (json.dumps({**GOOD, "init_image": 42}).encode(), "init_image"),
    (json.dumps({**GOOD, "init_image": MISSING, "init_image_data": PICTURE}).encode(), "init_image"),
    (json.dumps({**GOOD, "init_image_data": "not base64!!"}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": 12}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": base64.b64encode(b"GIF89a\x01\x00").decode()}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": PICTURE[:len(PICTURE) // 2 // 4 * 4]}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": base64.b64encode(os.urandom(MAX_UPLOAD + 1)).decode()}).encode(),
     "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": _png((4100, 4100), mode="1")}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": _png(text={pictures.CODES_KEY: "!!"})}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": _png(text={pictures.CODES_KEY: pictures.pack_codes([20000] * 256)})}
                ).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": _png(text={pictures.CODES_KEY: pictures.pack_codes([1] * 32)})}
                ).encode(), "init_image_data"),
    # Hostile uploads (issue 35): present but empty; a shape its codes do not fit; too many
    # pixels or lines (header-only PNGs, as bombs and truncated files are); animated.
    (json.dumps({**GOOD, "init_image_data": ""}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": "data:image/png;base64,"}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": "  \n"}).encode(), "init_image_data"),
    (json.dumps({**GOOD, "init_image_data": "QUJD=REVG"}).encode(), "init_image_data"),
    *[(json.dumps({**GOOD, "init_image_data": base64.b64encode(data).decode(), "extend": extend}).encode(),
       "init_image_data") for data, extend in [
        (hostile_uploads.png(4096, 1, rows=16), "down"),
        (hostile_uploads.png(1, 64, rows=16), "down"),
        (hostile_uploads.png(64, 64, rows=17), None),
        (hostile_uploads.png(64, 256, rows=64), "down"),   # 64 rows fit, but extended they would be 72
        (hostile_uploads.png(4096, 1), None),               # no codes: still a pixel per code across
        (hostile_uploads.png(1, 65536, rows=16), "down"),
        (hostile_uploads.png_header(1, 16_777_216, rows=16), "down"),
        (hostile_uploads.png_header(30000, 30000), None),
        (hostile_uploads.png_header(2**31 - 1, 1), None),
        (hostile_uploads.png_header(4097, 16), None),
        (hostile_uploads.webp_canvas(hostile_uploads.WEBP_SIDE + 1), None),
        (hostile_uploads.animated_png(), None)]],
    (json.dumps({**GOOD, "init_image_data": PICTURE, "keep_rows": 0}).encode(), "keep_rows"),
    (json.dumps({**GOOD, "init_image_data": PICTURE, "keep_rows": 16}).encode(), "keep_rows"),
    (json.dumps({**GOOD, "init_image_data": PICTURE, "keep_rows": "half"}).encode(), "keep_rows"),
    (json.dumps({**GOOD, "init_image_data": PICTURE, "keep_rows": 7.5}).encode(), "keep_rows"),
    (json.dumps({**GOOD, "keep_rows": 8}).encode(), "keep_rows"),
    (json.dumps({**GOOD, "init_image_data": PICTURE, "extend": "up"}).encode(), "extend"),
    (json.dumps({**GOOD, "init_image_data": PICTURE, "extend": True}).encode(), "extend"),
    (json.dumps({**GOOD, "extend": "down"}).encode(), "extend"),
    # Best of N: candidates from num_images (6 here) to 16; rank a boolean.
    (json.dumps({**GOOD, "candidates": 5}).encode(), "candidates"),
    (json.dumps({**GOOD, "candidates": 17}).encode(), "candidates"),
    (json.dumps({**GOOD, "candidates": "16x"}).encode(), "candidates"),
    (json.dumps({**GOOD, "candidates": 12.5}).encode(), "candidates"),
    (json.dumps({**GOOD, "candidates": True}).encode(), "candidates"),
    (json.dumps({**GOOD, "candidates": [12]}).encode(), "candidates"),
    (json.dumps({**GOOD, "rank": "maybe"}).encode(), "rank"),
    (json.dumps({**GOOD, "rank": 1}).encode(), "rank"),
    (json.dumps({**GOOD, "rank": {}}).encode(), "rank"),
    # A grid sweep (playground/grid.py): its part named in the message; one picture per cell.
    *[(json.dumps({"text": "x", "grid": grid}).encode(), "grid") for grid in [
        [1, 2], "{not json", {"y": {"field": "seed", "values": [1, 2]}},
        {"x": {"field": "seed", "values": [1, 2]}, "z": {}},
        {"x": {"field": "width", "values": [1, 2]}}, {"x": {"field": "gen_top_k", "values": [1, 2]}},
        {"x": {"field": "seed", "values": [1]}}, {"x": {"field": "seed", "values": "1,2"}},
        {"x": {"field": "seed", "values": list(range(1, 18))}},
        {"x": {"field": "seed", "values": [1, 2]}, "y": {"field": "seed", "values": [3, 4]}},
        {"x": {"field": "seed", "values": [1, 2, 3, 4, 5]}, "y": {"field": "top_k", "values": [1, 2, 3, 4]}},
        {"x": {"field": "top_k", "values": [1, 0]}}, {"x": {"field": "top_k", "values": [1, 2.5]}},
        {"x": {"field": "top_k", "values": [1, 16385]}}, {"x": {"field": "top_p", "values": [0.5, 0]}},
        {"x": {"field": "temperature", "values": [1, "hot"]}}, {"x": {"field": "temperature", "values": [1, None]}},
        {"x": {"field": "condition_scale", "values": [1, -1]}}, {"x": {"field": "seed", "values": [1, 2**32 + 1]}},
        {"x": {"field": "seed", "values": [1, True]}}, {"x": {"field": "text", "values": ["a fox", "  "]}},
        {"x": {"field": "text", "values": ["a fox", "x" * 1001]}}, {"x": {"field": "text", "values": ["a fox", 7]}},
        {"x": {"field": "text", "values": ["a fox", "a\u0000cat"]}}]],
    (json.dumps({"text": "x", "num_images": 2, "grid": {"x": {"field": "seed", "values": [1, 2]}}}).encode(),
     "num_images"),
    (json.dumps({"text": "x", "candidates": 4, "grid": {"x": {"field": "seed", "values": [1, 2]}}}).encode(),
     "candidates"),
    (json.dumps({"text": "x", "init_image_data": PICTURE, "grid": {"x": {"field": "seed", "values": [1, 2]}}}).encode(),
     "init_image_data"),
    (json.dumps({"grid": {"x": {"field": "seed", "values": [1, 2]}}}).encode(), "text"),
    # A grid's sheet is no picture to continue.
    (json.dumps({**GOOD, "init_image_data": _png(text={"grid_sheet": "{}"})}).encode(), "init_image_data"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_BODIES)])
def test_bad_bodies_are_refused_naming_the_field_and_queue_nothing(connection, queue, body, field):
    status, payload, response = post(connection, body)
    assert status == 400, payload
    assert isinstance(payload["error"], str) and payload["error"]
    assert payload.get("field") == field
    if field:
        assert payload["error"].startswith(f"{field}:")
    assert queue.unfinished() == []
    # The connection is kept and still works.
    assert response.getheader("Connection") != "close"
    status, payload, _ = post(connection, json.dumps(GOOD).encode())
    assert status == 200 and "queue_id" in payload


GOOD_BODIES = [
    ({"text": "x", "num_images": "2"}, {"num_images": 2, "seed": 0}),
    ({"text": "x", "num_images": 8, "seed": 4294967296}, {"num_images": 8, "seed": 4294967296}),
    ({"text": "x", "num_images": " 4 ", "seed": " 7 "}, {"num_images": 4, "seed": 7}),
    ({"text": "x" * 1000, "num_images": 6}, {"text": "x" * 1000}),
    ({"text": "  padded  ", "num_images": 6}, {"text": "padded"}),
    ({"text": "Ein Eichhörnchen 🐿️ 松鼠 الس", "num_images": 2}, {"text": "Ein Eichhörnchen 🐿️ 松鼠 الس"}),
    ({"text": "x", "num_images": 2, "seed": None, "unknown_field": [1, 2]}, {"seed": 0}),
    ({"text": "x", "num_images": 2, "gen_top_k": 16384, "gen_top_p": 1, "temperature": 1e-3,
      "condition_scale": 0}, {"top_k": 16384, "top_p": 1.0, "temperature": 0.001, "condition_scale": 0.0}),
    ({"text": "x", "num_images": 4, "candidates": 16}, {"candidates": 16, "rank": None}),
    ({"text": "x", "num_images": "8", "candidates": "16", "rank": "true"}, {"candidates": 16, "rank": True}),
    ({"text": "x", "num_images": 2, "candidates": 2, "rank": False}, {"candidates": None, "rank": False}),
    ({"text": "x", "num_images": 2, "candidates": "", "rank": ""}, {"candidates": None, "rank": None}),
    ({"text": "x", "num_images": 2, "keep_rows": None, "extend": ""}, {"keep_rows": None, "init_source": None}),
    ({"text": "x", "num_images": 2}, {"keep_previews": False, "upscale": None}),
    ({"text": "x", "num_images": 2, "upscale": 4}, {"upscale": 4}),
    ({"text": "x", "num_images": 2, "upscale": " 4 "}, {"upscale": 4}),
    *[({"text": "x", "num_images": 2, "upscale": value}, {"upscale": None}) for value in (0, "0", "", None)],
    ({"text": "x", "num_images": 2, "keep_previews": True}, {"keep_previews": True}),
    ({"text": "x", "num_images": 2, "keep_previews": "on"}, {"keep_previews": True}),
    ({"text": "x", "num_images": 2, "keep_previews": "false"}, {"keep_previews": False}),
    ({"text": "x", "num_images": 2, "init_image_data": PICTURE}, {"keep_rows": 8, "init_source": "encoded"}),
    ({"text": "x", "num_images": 2, "init_image_data": "data:image/jpeg;base64," + _jpeg(), "keep_rows": "15"},
     {"keep_rows": 15, "init_source": "encoded", "init_image": None}),
    ({"text": "x", "num_images": 2, "init_image_data": OURS, "keep_rows": 1, "extend": "down"},
     {"keep_rows": 1, "init_source": "codes", "extend": "down"}),
    # Base64 as common tools write it: wrapped at 76 columns (the base64 tool), spaced, without
    # padding, URL-safe, a data: URL of any type.
    *[({"text": "x", "num_images": 2, "init_image_data": text}, {"init_source": "codes"}) for text in [
        base64.encodebytes(base64.b64decode(OURS)).decode(),
        " ".join(OURS[i:i + 60] for i in range(0, len(OURS), 60)),
        OURS.rstrip("="),
        base64.urlsafe_b64encode(base64.b64decode(OURS)).decode().rstrip("="),
        "data:application/octet-stream;base64," + OURS]],
    # The largest pictures allowed are pictures, and a taller picture of ours fits its codes.
    *[({"text": "x", "num_images": 2, "init_image_data": base64.b64encode(data).decode()}, {"init_source": "encoded"})
      for data in (hostile_uploads.webp_canvas(),)],
    ({"text": "x", "num_images": 2, "init_image_data": base64.b64encode(hostile_uploads.png(64, 128, rows=32)).decode(),
      "extend": "down", "keep_rows": 8}, {"init_source": "codes", "extend": "down"}),
    # A grid sweep: num_images is its cells; a grid of prompts needs no text; numbers as strings.
    ({"text": "x", "grid": {"x": {"field": "temperature", "values": ["0.5", 1, 1.5]},
                            "y": {"field": "seed", "values": [0, 9]}}},
     {"num_images": 6, "grid": '{"x":{"field":"temperature","values":[0.5,1.0,1.5]},'
                               '"y":{"field":"seed","values":[0,9]}}'}),
    ({"num_images": "1", "grid": {"x": {"field": "text", "values": [" a fox ", "a cat"]}}},
     {"num_images": 2, "text": "a fox · a cat"}),
    ({"text": "x", "num_images": "", "grid": json.dumps({"x": {"field": "top_k", "values": [1, 16384]}})},
     {"num_images": 2}),
    ({"text": "x", "num_images": 2, "grid": None}, {"grid": None}),
    ({"text": "x", "grid": {"x": {"field": "seed", "values": list(range(1, 17))}}}, {"num_images": 16}),
]


@pytest.mark.parametrize("body,expected", GOOD_BODIES)
def test_good_bodies_are_queued_as_given(connection, queue, body, expected):
    status, payload, _ = post(connection, json.dumps(body, ensure_ascii=False).encode())
    assert status == 200, payload
    job = queue.get(payload["queue_id"])
    for name, value in expected.items():
        assert getattr(job, name) == value


def test_a_start_is_kept_with_its_job(connection, queue):
    """An upload of ours gives its codes (and tops a taller picture as it is); any other
    picture is kept squared, for the backend to encode."""
    status, payload, _ = post(connection, json.dumps({**GOOD, "init_image_data": OURS, "extend": "down"}).encode())
    job = queue.record(payload["queue_id"])
    assert pictures.unpack_codes(job.init_codes) == list(range(256))
    assert job.init_picture == OURS and job.params()["init_codes"] == list(range(256))
    assert "init_picture" not in job.params()  # the backend takes one start: the codes; the picture tops the result
    status, payload, _ = post(connection, json.dumps({**GOOD, "init_image_data": _jpeg()}).encode())
    job = queue.record(payload["queue_id"])
    square = Image.open(io.BytesIO(base64.b64decode(job.init_picture)))
    assert job.init_codes is None and square.size == (pictures.START_SIDE,) * 2
    assert job.params()["init_picture"] == job.init_picture and job.params()["keep_rows"] == 8
    assert "init_picture" not in queue.get(job.id).to_status()  # /queue_status does not carry it


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "b0undary") -> tuple[bytes, dict]:
    body = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_multipart_upload_is_a_start_picture(connection, queue):
    jpeg = base64.b64decode(_jpeg())
    body, headers = multipart([("text", "Ein Eichhörnchen".encode(), None), ("num_images", b"2", None),
                               ("keep_rows", b"5", None), ("init_image_data", jpeg, "photo.jpg")])
    status, payload, _ = post(connection, body, headers)
    assert status == 200, payload
    job = queue.record(payload["queue_id"])
    assert (job.text, job.num_images, job.keep_rows, job.init_source) == ("Ein Eichhörnchen", 2, 5, "encoded")


@pytest.mark.parametrize("parts,boundary,field", [
    ([("text", b"x", None), ("num_images", b"2", None), ("init_image_data", b"GIF89a", "a.gif")], "b0undary",
     "init_image_data"),
    ([("text", b"\xff\xfe", None), ("num_images", b"2", None)], "b0undary", "text"),
    ([("", b"x", None)], "b0undary", None),
    ([("text", b"x", None), ("num_images", b"2", None)], "", None),  # no boundary: no parts
    ([("text", b"x", None), ("num_images", b"2", None), ("keep_rows", b"3", None)], "b0undary", "keep_rows"),
])
def test_bad_multipart_bodies_are_refused(connection, queue, parts, boundary, field):
    body, headers = multipart(parts, boundary or "b0undary")
    if not boundary:
        headers["Content-Type"] = "multipart/form-data"
    status, payload, _ = post(connection, body, headers)
    assert status == 400 and payload.get("field") == field, payload
    assert queue.unfinished() == []


def raw_multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    """Parts given as their header lines and content."""
    return (hostile_uploads.form(*(hostile_uploads.part(head, content) for head, content in parts)),
            {"Content-Type": hostile_uploads.FORM})


FIELDS = [('Content-Disposition: form-data; name="text"', b"x"), ('Content-Disposition: form-data; name="num_images"', b"2")]
FILE = hostile_uploads.FILE_HEAD
NESTED = (b"--inner\r\nContent-Disposition: file; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
          + base64.b64decode(PICTURE) + b"\r\n--inner--")


@pytest.mark.parametrize("parts,field", [
    # An upload present but empty, nested, or in a transfer encoding: never "no picture" (issue 35).
    ([*FIELDS, (FILE.replace("a.png", "empty.png"), b"")], "init_image_data"),
    ([*FIELDS, (FILE + "\r\nContent-Type: multipart/mixed; boundary=inner", NESTED)], "init_image_data"),
    ([*FIELDS, (FILE + "\r\nContent-Transfer-Encoding: base64", b"this is not base64 !!")], "init_image_data"),
    ([*FIELDS, (FILE + "\r\nContent-Transfer-Encoding: base64", PICTURE.encode())], "init_image_data"),
    ([*FIELDS, (FILE + "\r\nContent-Transfer-Encoding: x-uuencode", b"begin 644 a.png")], "init_image_data"),
    ([*FIELDS, ('Content-Disposition: form-data; name="init_image_data"', b"")], "init_image_data"),
    ([*FIELDS, (FILE, base64.b64decode(PICTURE)), (FILE, base64.b64decode(PICTURE))], "init_image_data"),
    # Bounded work: at most 32 parts, 4 headers a part, 1024 bytes a header line.
    ([*FIELDS] + [(f'Content-Disposition: form-data; name="x{i}"', b"") for i in range(31)], None),
    ([*FIELDS, (FILE + "\r\nContent-Type: image/png" + "\r\nX-A: 1" * 3, base64.b64decode(PICTURE))], None),
    ([*FIELDS, ('Content-Disposition: form-data; name="seed"; x="' + "a" * 1100 + '"', b"1")], None),
])
def test_hostile_multipart_bodies_are_refused(connection, queue, parts, field):
    body, headers = raw_multipart(parts)
    status, payload, _ = post(connection, body, headers)
    assert status == 400 and payload.get("field") == field, payload
    assert queue.unfinished() == []


def test_a_file_input_left_empty_is_no_upload(connection, queue):
    """A browser sends a file input that nothing was chosen in as filename="" and no content."""
    body, headers = raw_multipart([*FIELDS, (FILE.replace("a.png", ""), b"")])
    status, payload, _ = post(connection, body, headers)
    assert status == 200, payload
    assert queue.record(payload["queue_id"]).init_source is None


def test_a_picture_over_the_pixel_limit_is_told_so(connection, queue):
    for data in (hostile_uploads.png_header(30000, 30000), hostile_uploads.png_header(4097, 4096)):
        status, payload, _ = post(connection, json.dumps({**GOOD, "init_image_data": base64.b64encode(data).decode()}).encode())
        assert status == 400 and "more pixels than allowed" in payload["error"], payload


def test_seed_bounds_at_the_unit_level():
    assert validate_prompt({"text": "x", "num_images": 2, "seed": 4294967296})["seed"] == 4294967296
    with pytest.raises(ValidationError, match="seed"):
        validate_prompt({"text": "x", "num_images": 2, "seed": 4294967297})


def test_missing_content_length_is_411(connection, queue):
    connection.putrequest("POST", "/prompt")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411
    assert "Content-Length" in json.loads(response.read())["error"]
    assert queue.unfinished() == []


# -- POST /upscale ------------------------------------------------------------------------------

UPSCALE_PICTURES = {
    "small": pictures.png_bytes(Image.new("RGB", (256, 256), (9, 99, 199))),
    "largest": pictures.png_bytes(Image.new("RGB", (1024, 16))),
    "too large": pictures.png_bytes(Image.new("RGB", (1025, 16))),
    "an upscale": pictures.png_bytes(Image.new("RGB", (64, 64)), {pictures.UPSCALED_FROM_KEY: "library/a/b.png"}),
    "upscaled already": pictures.png_bytes(Image.new("RGB", (16, 16))),
}


@pytest.fixture(scope="module")
def upscale_world(redis_server, tmp_path_factory):
    """A server over a library of one entry with a picture of each kind, one taller picture
    (extended), and a PNG in the entry's folder that the entry does not list, and an upscale
    job's entry of one of them; the served upscalers read afresh on every request."""
    root = tmp_path_factory.mktemp("upscale-library")
    store = LibraryStore(root)
    tall = pictures.png_bytes(Image.new("RGB", (256, 1024)))
    entry = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "a squirrel", "creation_unixtime": time.time()},
                          list(UPSCALE_PICTURES.values()), extended=[tall])
    paths = dict(zip(UPSCALE_PICTURES, entry["generated_images"]))
    paths["tall"] = entry["extended_images"][0]
    paths["unlisted"] = f"library/{entry['queue_id']}/{uuid.uuid4()}.png"
    store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "a squirrel", "creation_unixtime": time.time(),
                   "upscale_of": paths["upscaled already"]}, [pictures.png_bytes(Image.new("RGB", (64, 64)))])
    (root / paths["unlisted"].removeprefix("library/")).write_bytes(UPSCALE_PICTURES["small"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api, "SERVED_MODELS_RECHECK_SECS", 0.0)
        with serving(Config(port=0, redis_url=redis_server.url, library_dir=root)) as server:
            yield {"server": server, "paths": paths}


@pytest.fixture
def upscale_connection(upscale_world, redis_url):
    connection = http.client.HTTPConnection(*upscale_world["server"].server_address[:2], timeout=10)
    yield connection
    connection.close()


def serve_upscaler(redis_client, upscale_model: str | None) -> None:
    """A live, ready backend (its worker's heartbeat) with this upscaler."""
    worker = WorkerQueue(redis_client, "worker-1", "http://127.0.0.1:8080")
    assert worker.register()
    assert worker.heartbeat(BackendStatus.READY, "demo", upscale_model=upscale_model)


def post_upscale(connection, body) -> tuple[int, dict]:
    connection.request("POST", "/upscale", body=body if isinstance(body, bytes) else json.dumps(body),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


BAD_UPSCALES = [
    # (body, or the name of a picture of upscale_world as its path; the field named)
    (b"", None),
    (b"[]", None),
    ({}, "path"),
    ({"path": 5}, "path"),
    ({"path": ""}, "path"),
    ({"path": "library/x.png"}, "path"),
    ({"path": "../library.json"}, "path"),
    ({"path": MISSING}, "path"),
    ("unlisted", "path"),
    ("too large", "path"),
    ("an upscale", "path"),
    ("upscaled already", "path"),
    ({"model": 5}, "model"),
    ({"model": "x" * 201}, "model"),
    ({"model": "realesrgan-x4plus"}, "model"),
]


@pytest.mark.parametrize("body,field", BAD_UPSCALES, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_UPSCALES)])
def test_bad_upscales_are_refused_naming_the_field_and_queue_nothing(upscale_world, upscale_connection, redis_client,
                                                                      queue, body, field):
    serve_upscaler(redis_client, "demo")
    paths = upscale_world["paths"]
    if isinstance(body, str):
        body = {"path": paths[body]}
    elif isinstance(body, dict) and "model" in body:
        body = {"path": paths["small"], **body}
    status, payload = post_upscale(upscale_connection, body)
    assert status == 400, payload
    assert payload.get("field") == field and payload["error"].startswith(f"{field}:" if field else ""), payload
    assert queue.unfinished() == []
    status, payload = post_upscale(upscale_connection, {"path": paths["small"]})  # the same connection still works
    assert status == 200, payload


def test_a_picture_queued_for_an_upscale_is_not_queued_again(upscale_world, upscale_connection, redis_client, queue):
    serve_upscaler(redis_client, "demo")
    path = upscale_world["paths"]["small"]
    status, first = post_upscale(upscale_connection, {"path": path})
    assert status == 200, first
    status, payload = post_upscale(upscale_connection, {"path": path})
    assert status == 400 and payload["field"] == "path", payload
    assert first["queue_id"] in payload["error"] and "queued" in payload["error"], payload
    assert [job.id for job in queue.unfinished()] == [first["queue_id"]]
    queue.cancel(first["queue_id"])  # a cancelled one no longer stands in the way
    status, payload = post_upscale(upscale_connection, {"path": path})
    assert status == 200, payload


def test_clicks_at_the_same_moment_queue_one_upscale(upscale_world, redis_client, queue):
    serve_upscaler(redis_client, "demo")
    path = upscale_world["paths"]["small"]
    clicks = 8
    together = threading.Barrier(clicks)

    def click():
        connection = http.client.HTTPConnection(*upscale_world["server"].server_address[:2], timeout=10)
        try:
            together.wait()
            return post_upscale(connection, {"path": path})
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(clicks) as pool:
        answers = list(pool.map(lambda _: click(), range(clicks)))
    assert sorted(status for status, _ in answers) == [200] + [400] * (clicks - 1), answers
    assert all(payload["field"] == "path" for status, payload in answers if status == 400), answers
    assert [job.upscale_of for job in queue.unfinished()] == [path]


@pytest.mark.parametrize("picture,model,served", [("small", None, "demo"), ("small", "demo", "demo"),
                                                  ("largest", "", "demo"), ("tall", None, "demo"),
                                                  ("small", None, None)])
def test_an_upscale_is_queued_as_a_job(upscale_world, upscale_connection, redis_client, queue, picture, model, served):
    """Any picture an entry lists, up to the largest side, with a served upscaler or the
    backend's own; with no backend ready yet, it waits for one."""
    if served:
        serve_upscaler(redis_client, served)
    path = upscale_world["paths"][picture]
    status, payload = post_upscale(upscale_connection, {"path": "/" + path, "model": model})
    assert status == 200, payload
    job = queue.get(payload["queue_id"])
    assert (job.kind, job.upscale_of, job.upscale_model, job.text, job.num_images) == \
        ("upscale", path, model or None, "a squirrel", 1)
    assert job.to_status()["kind"] == "upscale" and job.to_status()["upscale_of"] == path


@pytest.mark.parametrize("advertised,cells,status", [(4, 6, 400), (4, 4, 200), (None, 2, 400), (16, 16, 200)])
def test_a_grid_is_at_most_what_the_ready_backends_make(upscale_world, upscale_connection, redis_client, queue,
                                                        advertised, cells, status):
    """The ready backends' /health `grid_cells_max` (passed on by their workers' heartbeats)
    bounds a grid; a backend that says none makes no grids."""
    worker = WorkerQueue(redis_client, "worker-1", "http://127.0.0.1:8080")
    assert worker.register()
    assert worker.heartbeat(BackendStatus.READY, "demo", grid_cells_max=advertised)
    upscale_connection.request("POST", "/prompt", body=json.dumps(
        {"text": "x", "grid": {"x": {"field": "seed", "values": list(range(1, cells + 1))}}}),
        headers={"Content-Type": "application/json"})
    response = upscale_connection.getresponse()
    payload = json.loads(response.read())
    assert response.status == status, payload
    if status == 400:
        assert payload["field"] == "grid" and "make" in payload["error"]
        assert queue.unfinished() == []


def test_an_upscale_needs_a_backend_that_upscales(upscale_world, upscale_connection, redis_client, queue):
    serve_upscaler(redis_client, None)
    status, payload = post_upscale(upscale_connection, {"path": upscale_world["paths"]["small"]})
    assert status == 400 and payload["field"] == "model" and "UPSCALE_MODEL" in payload["error"], payload
    assert queue.unfinished() == []


@pytest.mark.parametrize("served", ["demo", None])
def test_a_prompt_upscaled_needs_a_backend_that_upscales(upscale_world, upscale_connection, redis_client, queue,
                                                         served):
    """`upscale` on POST /prompt: refused (naming `upscale`) while the ready backends serve no
    upscaler, as POST /upscale is; else the job keeps it."""
    serve_upscaler(redis_client, served)
    upscale_connection.request("POST", "/prompt", body=json.dumps({**GOOD, "upscale": 4}),
                               headers={"Content-Type": "application/json"})
    response = upscale_connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    if served is None:
        assert status == 400 and payload["field"] == "upscale" and "UPSCALE_MODEL" in payload["error"], payload
        assert queue.unfinished() == []
    else:
        assert status == 200, payload
        assert queue.get(payload["queue_id"]).to_status()["upscale"] == 4
