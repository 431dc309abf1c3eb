"""Only the static folder and the library folder are ever read, and deletes touch only library
images: every traversal form is refused, over raw sockets so no client normalizes the path."""
from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest

from frontend.config import Config
from frontend.threaded import serving
from playground.library import LibraryStore

SECRET = b"TOP-SECRET-CONTENT"
PNG = b"\x89PNG\r\n\x1a\nimage"


@pytest.fixture
def folders(tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><p>hello</p>")
    (static / ".hidden").write_text("hidden")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    return {"root": tmp_path, "static": static, "library": tmp_path / "library", "outside": outside}


@pytest.fixture
def server(redis_url, folders):
    config = Config(port=0, redis_url=redis_url, library_dir=folders["library"], static_dir=folders["static"])
    with serving(config) as server:
        yield server


@pytest.fixture
def store(folders):
    return LibraryStore(folders["library"])


def raw_request(server, request: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are; return status, headers and body of the answer."""
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return int(lines[0].split()[1]), headers, body


def get(server, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    return raw_request(server, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                       .encode("latin-1"))


def post_json(server, path: str, body: dict) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode()
    return raw_request(server, f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


TRAVERSALS = [
    "/../secret.txt",
    "/../../../../../../etc/passwd",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/%2e%2e%2fsecret.txt",
    "/..%2fsecret.txt",
    "/%252e%252e/secret.txt",
    "/%252e%252e%252fsecret.txt",
    "/./../secret.txt",
    "/static/../../secret.txt",
    "/..\\secret.txt",
    "/%5c..%5csecret.txt",
    "/..%5csecret.txt",
    "/etc/passwd",
    "//etc/passwd",
    "///etc/passwd",
    "/%2fetc%2fpasswd",
    "/C:/Windows/win.ini",
    "/index.html%00.png",
    "/%00",
    "/.hidden",
    "/%2ehidden",
    "/%ff%fe",
    "/library/../secret.txt",
    "/library/%2e%2e/secret.txt",
    "/library/..%2f..%2fsecret.txt",
    f"/library/{uuid.uuid4()}/../../secret.txt",
    f"/library/{uuid.uuid4()}/%2e%2e%2f%2e%2e%2fsecret.txt",
    f"/library/..%2f..%2f/{uuid.uuid4()}.png",
    "/library/library.json",
    "/library/library.json.lock",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_forms_are_refused(server, folders, path):
    status, headers, body = get(server, path)
    assert status in (400, 404)
    assert SECRET not in body and b"root:" not in body
    assert headers["Content-Type"] == "application/json"


def test_absolute_paths_of_this_machine_are_refused(server, folders):
    for path in ("/" + str(folders["root"] / "secret.txt"), "/" + str(folders["root"] / "secret.txt").lstrip("/"),
                 str(folders["root"] / "secret.txt")):
        status, _, body = get(server, path)
        assert status in (400, 404) and SECRET not in body


def test_a_nul_byte_in_the_request_line_is_refused(server):
    status, _, body = raw_request(server, b"GET /index.html\x00.png HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status in (400, 404) and b"hello" not in body


def test_a_symlink_in_static_pointing_outside_is_refused(server, folders):
    (folders["static"] / "link.txt").symlink_to(folders["root"] / "secret.txt")
    (folders["static"] / "dir").symlink_to(folders["root"])
    for path in ("/link.txt", "/dir/secret.txt"):
        status, _, body = get(server, path)
        assert status == 404 and SECRET not in body


def test_symlinks_in_the_library_pointing_outside_are_neither_read_nor_deleted(server, folders, store):
    store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "x", "creation_unixtime": time.time()}, [PNG])
    outside_image = folders["outside"] / f"{uuid.uuid4()}.png"
    outside_image.write_bytes(SECRET)
    # A job folder that is a symlink to a folder outside the library.
    linked_job = str(uuid.uuid4())
    (folders["library"] / linked_job).symlink_to(folders["outside"])
    # An image file inside a real job folder that is a symlink to a file outside.
    real_job = str(uuid.uuid4())
    (folders["library"] / real_job).mkdir()
    linked_image = f"{uuid.uuid4()}.png"
    (folders["library"] / real_job / linked_image).symlink_to(outside_image)

    for url in (f"library/{linked_job}/{outside_image.name}", f"library/{real_job}/{linked_image}"):
        status, _, body = get(server, f"/{url}")
        assert status == 404 and SECRET not in body
        assert get(server, f"/{url}", method="DELETE")[0] == 404
        assert post_json(server, "/deleteimage", {"path": url})[0] == 404
        assert outside_image.read_bytes() == SECRET
    assert get(server, f"/jobs/{linked_job}", method="DELETE")[0] in (200, 404)
    assert outside_image.read_bytes() == SECRET and folders["outside"].is_dir()


BAD_DELETE_PATHS = [
    "library/../secret.txt",
    "../secret.txt",
    "/etc/passwd",
    "library/library.json",
    f"library/{uuid.uuid4()}/../../secret.txt",
    f"library/{uuid.uuid4()}/job.json",
    f"library/{uuid.uuid4()}/%2e%2e.png",
    f"library/{uuid.uuid4()}\\{uuid.uuid4()}.png",
    f"library/{uuid.uuid4()}/{uuid.uuid4()}.png\u0000",
    f"library/{str(uuid.uuid4()).upper()}/{uuid.uuid4()}.png",
    "",
    42,
    None,
    ["library/x.png"],
]


@pytest.mark.parametrize("path", BAD_DELETE_PATHS)
def test_deleteimage_refuses_anything_but_a_library_image_path(server, folders, store, path):
    stored = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "x", "creation_unixtime": 1.0}, [PNG])
    before = sorted(str(p) for p in folders["root"].rglob("*"))
    status, _, body = post_json(server, "/deleteimage", {"path": path})
    assert status == 400 and json.loads(body)["field"] == "path"
    assert sorted(str(p) for p in folders["root"].rglob("*")) == before
    assert (folders["root"] / "secret.txt").read_bytes() == SECRET
    assert json.loads((folders["library"] / "library.json").read_bytes()) == [stored]


def test_head_matches_get_without_a_body(server, store):
    stored = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "x", "creation_unixtime": 1.0}, [PNG])
    for path in ("/", "/index.html", f"/{stored['generated_images'][0]}", "/getlibrary", "/missing.txt"):
        get_status, get_headers, get_body = get(server, path)
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert body == b""
        assert int(head.split()[1]) == get_status
        assert f"Content-Length: {len(get_body)}".encode() in head


def test_query_strings_are_ignored_for_files(server, store):
    stored = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "x", "creation_unixtime": 1.0}, [PNG])
    image = stored["generated_images"][0]
    status, headers, body = get(server, f"/{image}?v=1&x=../../secret.txt")
    assert (status, body, headers["Content-Type"]) == (200, PNG, "image/png")
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert get(server, "/index.html?../../secret.txt")[2] == b"<!doctype html><p>hello</p>"


def test_a_regular_file_in_the_library_that_is_not_an_image_is_never_served(server, folders, store):
    job_id = str(uuid.uuid4())
    (folders["library"] / job_id).mkdir()
    (folders["library"] / job_id / "job.json").write_text("{}")
    for path in (f"/library/{job_id}/job.json", f"/library/{job_id}/", f"/library/{job_id}"):
        assert get(server, path)[0] == 404


def test_a_file_changed_on_disk_is_served_fresh(server, folders):
    page = folders["static"] / "index.html"
    assert get(server, "/index.html")[2] == b"<!doctype html><p>hello</p>"
    page.write_text("<!doctype html><p>changed</p>")
    os.utime(page, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert get(server, "/index.html")[2] == b"<!doctype html><p>changed</p>"
    page.unlink()
    assert get(server, "/index.html")[0] == 404


def test_the_file_cache_stays_within_its_byte_budget(tmp_path):
    from frontend.files import FileCache

    cache = FileCache(max_total_bytes=100, max_cached_bytes=60, max_file_bytes=200)
    files = []
    for i in range(6):
        path = tmp_path / f"f{i}.png"
        path.write_bytes(bytes([i]) * 40)
        files.append(path)
    big = tmp_path / "big.js"
    big.write_bytes(b"x" * 150)
    huge = tmp_path / "huge.js"
    huge.write_bytes(b"x" * 201)
    for _ in range(2):
        for i, path in enumerate(files):
            content = cache.read(path)
            assert content.body == bytes([i]) * 40 and content.content_type == "image/png"
            assert cache._total <= 100
        assert cache.read(big).body == b"x" * 150  # served, not kept
        assert cache._total <= 100
    assert cache.read(huge) is None
    assert cache.read(tmp_path / "missing.png") is None
