"""The HTTP layer's bounds: body size, Content-Length, slow and idle clients, request line and
header limits, connection cap, keep-alive."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import weakref

import pytest

from frontend.config import Config
from frontend.threaded import serving
from playground.queue import JobQueue

GOOD = json.dumps({"text": "a squirrel", "num_images": "6", "seed": 12345}).encode()


@pytest.fixture
def config(redis_url, tmp_path):
    # max_upload_bytes=512: POST /prompt may have twice that, the same 1024 as the others.
    return Config(port=0, redis_url=redis_url, library_dir=tmp_path / "library", max_body_bytes=1024,
                  max_upload_bytes=512, socket_timeout_secs=0.5, body_deadline_secs=1.0, max_request_line=512, max_connections=8)


@pytest.fixture
def server(config):
    with serving(config) as server:
        yield server


@pytest.fixture
def queue(redis_client):
    return JobQueue(redis_client)


def connect(server) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=10)


_unread: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One response read by its Content-Length; bytes after it wait for the next call."""
    data = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a body")
        rest += chunk
    _unread[sock] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_an_oversized_body_is_413_and_queues_nothing(server, queue):
    sock = connect(server)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1025\r\n\r\n" + b"x" * 1025)
    status, headers, body = read_response(sock)
    assert status == 413 and "1024" in json.loads(body)["error"]
    assert headers["connection"] == "close"
    assert closed_by_server(sock)
    assert queue.unfinished() == []


def test_an_oversized_body_is_refused_before_it_is_sent_with_expect_100(server, queue):
    sock = connect(server)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = read_response(sock)
    assert status == 413
    assert queue.unfinished() == []


def test_expect_100_continue_works_for_a_normal_body(server, queue):
    sock = connect(server)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(GOOD))
    assert sock.recv(100).startswith(b"HTTP/1.1 100")
    sock.sendall(GOOD)
    status, _, body = read_response(sock)
    assert status == 200 and queue.get(json.loads(body)["queue_id"]) is not None


@pytest.mark.parametrize("header", [b"Content-Length: abc", b"Content-Length: -5", b"Content-Length: 1e3",
                                    b"Content-Length: 5\r\nContent-Length: 6", b"Content-Length: \xd9\xa3"])
def test_a_malformed_content_length_is_400(server, queue, header):
    sock = connect(server)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\n\r\n" + GOOD)
    status, headers, _ = read_response(sock)
    assert status == 400 and headers["connection"] == "close"
    assert queue.unfinished() == []


def test_a_chunked_body_is_411(server, queue):
    sock = connect(server)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % len(GOOD) + GOOD + b"\r\n0\r\n\r\n")
    status, _, _ = read_response(sock)
    assert status == 411
    assert closed_by_server(sock)
    assert queue.unfinished() == []


def test_a_content_length_longer_than_the_body_times_out_with_408(server, queue):
    sock = connect(server)
    started = time.monotonic()
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n\r\n" + GOOD)
    status, headers, body = read_response(sock)
    assert status == 408 and headers["connection"] == "close"
    assert time.monotonic() - started < 3
    assert queue.unfinished() == []


def test_a_body_that_ends_early_is_400(server, queue):
    sock = connect(server)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n\r\n" + GOOD)
    sock.shutdown(socket.SHUT_WR)
    status, _, body = read_response(sock)
    assert status == 400 and "500" in json.loads(body)["error"]
    assert queue.unfinished() == []


def test_a_content_length_shorter_than_the_body_never_runs_the_rest(server, queue):
    sock = connect(server)
    smuggled = b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n" + GOOD + smuggled)
    status, _, _ = read_response(sock)
    assert status == 400  # the first 10 bytes are not JSON
    # What follows is garbage, not a request: refused, and the connection is closed.
    status, headers, _ = read_response(sock)
    assert status == 400 and headers["connection"] == "close"
    assert queue.unfinished() == []


def test_a_client_dribbling_its_body_is_cut_off_at_the_deadline(server, queue):
    sock = connect(server)
    sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(GOOD))
    started = time.monotonic()
    try:
        for byte in GOOD:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)  # below the socket timeout each time, past the deadline in total
    except OSError:
        pass
    status, _, _ = read_response(sock)
    assert status == 408 and time.monotonic() - started < 2.5
    assert queue.unfinished() == []


def test_a_silent_client_is_disconnected_and_its_thread_freed(server):
    baseline = threading.active_count()
    idle = connect(server)
    partial = connect(server)
    partial.sendall(b"GET /queue_st")
    time.sleep(0.1)
    assert threading.active_count() == baseline + 2
    deadline = time.monotonic() + 3
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == baseline
    assert closed_by_server(idle) and closed_by_server(partial)


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(server):
    sock = connect(server)
    sock.sendall(b"GET /queue_status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert read_response(sock)[0] == 200
    started = time.monotonic()
    assert closed_by_server(sock)
    assert 0.3 < time.monotonic() - started < 3


def test_keep_alive_serves_many_requests_on_one_connection(server, queue):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    connection.connect()
    first_socket = connection.sock
    answers = []
    for method, path, body in [("GET", "/queue_status", None), ("POST", "/prompt", GOOD),
                               ("POST", "/prompt", b'{"text": ""}'), ("GET", "/nowhere", None),
                               ("HEAD", "/getlibrary", None), ("POST", "/prompt", GOOD),
                               ("GET", "/queue_status", None), ("DELETE", "/prompt", b"{}")]:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        response.read()
        assert response.getheader("Content-Length") is not None
        assert response.getheader("Connection") != "close"
        answers.append(response.status)
    assert connection.sock is first_socket
    assert answers == [200, 200, 400, 404, 200, 200, 200, 405]
    assert len(queue.unfinished()) == 2


def test_pipelined_requests_are_answered_in_order(server):
    sock = connect(server)
    sock.sendall(b"GET /queue_status HTTP/1.1\r\nHost: localhost\r\n\r\n"
                 b"POST /prompt HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
                 b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n" % (len(GOOD), GOOD))
    assert [read_response(sock)[0] for _ in range(3)] == [200, 200, 404]


def test_http_1_0_closes_after_the_response_unless_asked_to_keep_alive(server):
    sock = connect(server)
    sock.sendall(b"GET /queue_status HTTP/1.0\r\n\r\n")
    assert read_response(sock)[0] == 200
    assert closed_by_server(sock)
    sock = connect(server)
    for _ in range(2):
        sock.sendall(b"GET /queue_status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "keep-alive"


def test_a_too_long_request_line_is_414(server):
    sock = connect(server)
    sock.sendall(b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 414 and headers["content-type"] == "application/json" and json.loads(body)["error"]


def test_too_many_or_too_long_headers_are_431(server):
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n")
    assert read_response(sock)[0] == 431
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 70000 + b"\r\n\r\n")
    assert read_response(sock)[0] == 431


@pytest.mark.parametrize("request_line", [b"GARBAGE\r\n", b"GET\r\n", b"GET / HTTP/2.0\r\n",
                                          b"GET / HTTP/1.1 extra\r\n", b"GET http://evil/ HTTP/1.1\r\n",
                                          b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n"])
def test_malformed_request_lines_get_an_error_not_a_crash(server, request_line):
    sock = connect(server)
    sock.sendall(request_line + b"Host: localhost\r\n\r\n")
    status, headers, _ = read_response(sock)
    assert 400 <= status < 500 or status == 505
    assert headers["content-type"] == "application/json"
    with connect(server) as other:
        other.sendall(b"GET /queue_status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(other)[0] == 200


def test_connections_beyond_the_cap_get_503_at_once(server, config):
    held = [connect(server) for _ in range(config.max_connections)]
    time.sleep(0.1)
    extra = connect(server)
    status, headers, body = read_response(extra)
    assert status == 503 and headers["retry-after"] == "1"
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with connect(server) as sock:
            sock.sendall(b"GET /queue_status HTTP/1.1\r\nHost: localhost\r\n\r\n")
            if read_response(sock)[0] == 200:
                return
        time.sleep(0.05)
    pytest.fail("the server did not recover after the held connections closed")


def test_every_response_has_content_length_and_json_errors(server):
    with connect(server) as sock:
        for request in (b"GET /queue_status HTTP/1.1\r\nHost: localhost\r\n\r\n",
                        b"GET /getlibrary HTTP/1.1\r\nHost: localhost\r\n\r\n",
                        b"GET /missing HTTP/1.1\r\nHost: localhost\r\n\r\n",
                        b"GET /openapi.yaml HTTP/1.1\r\nHost: localhost\r\n\r\n"):
            sock.sendall(request)
            status, headers, body = read_response(sock)
            assert "content-length" in headers and headers["x-content-type-options"] == "nosniff"
            if status >= 400:
                assert "error" in json.loads(body)
