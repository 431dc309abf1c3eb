"""The HTTP server: a threading `http.server` whose every request is bounded.

Bounds: the request line (414), headers (the standard library's 100 lines of 64 KiB, 431), the
body (413), the time a client may stay silent (socket timeout), the time its request head and
its body may take to arrive (408), and the number of connections served at once (503 beyond it). Every response
carries Content-Length, so HTTP/1.1 keep-alive works; any error that leaves unread bytes on the
connection closes it instead.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from frontend.api import Api
from frontend.auth import answered_hosts, has_valid_token, host_name, is_cross_site
from frontend.config import Config
from frontend.head_deadline import HeadDeadlines
from frontend.responses import JSON_TYPE, Response, error_response
from frontend.routing import NoRoute, Request
from frontend.validation import ValidationError

log = logging.getLogger("frontend")
access_log = logging.getLogger("frontend.access")
# Asked every 15 s by Docker's health check (and by monitors): logged at DEBUG, not INFO, so the
# log keeps what people did. LOG_LEVEL=DEBUG shows them.
HEALTH_CHECK_PATHS = frozenset({"/health"})

# Sent on every response. Pages load only their own scripts (no inline script), may not be framed.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy",
     "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
     "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
     "form-action 'self'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# RFC 9110 token: anything else in the method's place is a malformed request, not a method.
METHOD_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SECURITY_LINES = "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS)
_BUSY_BODY = b'{"error":"too many connections; retry in a moment"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
         % (len(_BUSY_BODY), _BUSY_BODY))


class BodyError(Exception):
    """The body cannot be read as announced; the connection must close afterwards."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DallePlayground"
    sys_version = ""
    server: "FrontendServer"

    def setup(self) -> None:
        self.timeout = self.server.config.socket_timeout_secs
        super().setup()
        # Small responses on a keep-alive connection must not wait for the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        """The standard loop step, with our request-line limit and socket errors contained."""
        self.command = None
        head_timer = self.server.head_deadlines.arm(self.connection)
        try:
            limit = self.server.config.max_request_line
            self.raw_requestline = self.rfile.readline(limit + 1)
            if len(self.raw_requestline) > limit:
                self.requestline = self.request_version = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, "the request line is too long")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            parsed = self.parse_request()
            self.server.head_deadlines.disarm(head_timer)
            if head_timer.expired:
                self.send_error(HTTPStatus.REQUEST_TIMEOUT, "the request head did not arrive in time")
                return
            if not parsed:
                return
            # Every method goes through the router, which answers 404/405/501 as fits.
            self._serve()
        except (TimeoutError, ConnectionError):
            # A silent or vanished client: drop the connection, free the thread.
            self.close_connection = True
        finally:
            self.server.head_deadlines.disarm(head_timer)

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it, not after."""
        length = self.headers.get("Content-Length", "").strip()
        limit = self.server.config.body_limit(self.command, self.path.partition("?")[0])
        if length.isdigit() and int(length) > limit:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the body is {length} bytes; at most {limit} are accepted")
            return False
        return super().handle_expect_100()

    def _serve(self) -> None:
        started = time.perf_counter()
        try:
            response = self._respond()
        except (TimeoutError, ConnectionError):
            raise
        except BodyError as exc:
            self.close_connection = True
            response = exc.response
        except ValidationError as exc:
            response = error_response(400, str(exc), field=exc.field)
        except redis.RedisError as exc:
            log.warning("Redis error on %s %s: %s", self.command, self.path, exc)
            response = error_response(503, f"the queue (Redis) is unavailable: {exc.__class__.__name__}",
                                      {"Retry-After": "5"})
        except OSError as exc:
            # The library folder is full or read-only: the request may work later, nothing changed.
            log.warning("library I/O error on %s %s: %s", self.command, self.path, exc)
            response = error_response(503, f"the library folder cannot be changed: {exc.strerror or exc}",
                                      {"Retry-After": "30"})
        except Exception:
            log.exception("unexpected error on %s %s", self.command, self.path)
            self.close_connection = True
            response = error_response(500, "internal error; see the frontend's log")
        self._send(response)
        level = logging.DEBUG if self.path.partition("?")[0] in HEALTH_CHECK_PATHS else logging.INFO
        access_log.log(level, "%s %r %d %d %.1fms", self.client_address[0], self.requestline,
                        response.status, len(response.body), (time.perf_counter() - started) * 1000)

    def _respond(self) -> Response:
        target = self.path
        if not target.startswith("/"):
            self.close_connection = True
            return error_response(400, "the request target must be a path starting with /")
        path, _, query = target.partition("?")
        body = self._read_body(self.server.config.body_limit(self.command, path))
        host = self.headers.get("Host")
        names = self.server.answered_hosts
        if host is not None and names is not None and host_name(host) not in names:
            return error_response(400, f"this server does not answer to the host name {host[:100]!r} "
                                  "(FRONTEND_ALLOWED_HOSTS lists the names it answers to)")
        if not METHOD_TOKEN.fullmatch(self.command):
            self.close_connection = True
            return error_response(400, "the request method is not a valid token")
        if self.command not in KNOWN_METHODS:
            return error_response(501, f"method {self.command[:20]} is not supported")
        api: Api = self.server.api
        try:
            route, params = api.router.match(self.command, path)
        except NoRoute as missing:
            if missing.allowed:
                return error_response(405, f"{self.command} is not allowed here",
                                      {"Allow": ", ".join(missing.allowed)})
            if self.command in ("GET", "HEAD"):
                return api.static_file(path)
            return error_response(404, "not found")
        if route.changes_state:
            if not has_valid_token(self.headers, self.server.config.api_token):
                return error_response(401, "this request needs the API token "
                                      "(Authorization: Bearer <token> or X-API-Token: <token>)",
                                      {"WWW-Authenticate": 'Bearer realm="dalle-playground"'})
            if is_cross_site(self.headers):
                return error_response(403, "cross-site requests may not change anything")
        return route.handler(Request(self.command, path, query, params, self.headers, body))

    def _read_body(self, limit: int) -> bytes | None:
        """The body as Content-Length announces it; None when there is none. Bodies are read
        before routing so that an unused one never corrupts the next request on the connection."""
        if self.headers.get("Transfer-Encoding"):
            raise BodyError(error_response(411, "chunked bodies are not supported; send Content-Length"))
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return None
        if len(set(lengths)) > 1 or not lengths[0].strip().isdigit() or not lengths[0].strip().isascii():
            raise BodyError(error_response(400, "Content-Length must be one non-negative integer"))
        length = int(lengths[0])
        if length > limit:
            raise BodyError(error_response(413, f"the body is {length} bytes; at most {limit} are accepted"))
        return self._read_exactly(length)

    def _read_exactly(self, length: int) -> bytes:
        """Each read waits at most the socket timeout; the deadline, checked between reads,
        bounds a client that keeps sending a byte just before each timeout."""
        deadline = time.monotonic() + self.server.config.body_deadline_secs
        chunks, remaining = [], length
        try:
            while remaining:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(remaining)
                if not chunk:
                    raise BodyError(error_response(400, f"the body ended after {length - remaining} "
                                                   f"of the {length} bytes Content-Length announced"))
                chunks.append(chunk)
                remaining -= len(chunk)
        except TimeoutError:
            raise BodyError(error_response(408, f"the body did not arrive in time "
                                           f"({length - remaining} of {length} bytes)")) from None
        return b"".join(chunks)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found while parsing the request (bad request line, headers): JSON, then close."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._send(error_response(status.value, message or status.phrase))

    def _send(self, response: Response) -> None:
        """Status line, headers and body, in one write when the body is small."""
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        head = [f"HTTP/1.1 {response.status} {phrase}\r\n"
                f"Server: {self.server_version}\r\n"
                f"Date: {_http_date()}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n",
                _SECURITY_LINES]
        head.extend(f"{name}: {value}\r\n" for name, value in response.headers.items())
        if "Cache-Control" not in response.headers and response.content_type == JSON_TYPE:
            head.append("Cache-Control: no-store\r\n")  # API answers are always current
        if self.close_connection:
            head.append("Connection: close\r\n")
        elif self.request_version == "HTTP/1.0":
            head.append("Connection: keep-alive\r\n")  # 1.0 clients that asked for it need to hear it
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        if self.command == "HEAD" or not response.body:
            self.wfile.write(data)
        elif len(response.body) <= 65536:
            self.wfile.write(data + response.body)
        else:
            # Big bodies (the whole library) go out without being copied behind the headers.
            self.wfile.write(data)
            self.wfile.write(response.body)

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header, formatted once a second rather than once a request."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


class FrontendServer(ThreadingHTTPServer):
    """One thread per connection, at most `config.max_connections` at once."""

    daemon_threads = True
    # Idle keep-alive connections must not hold up shutdown.
    block_on_close = False
    request_queue_size = 128

    def __init__(self, config: Config, api: Api):
        self.config = config
        self.api = api
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self.head_deadlines = HeadDeadlines(config.head_deadline_secs)
        self.answered_hosts = answered_hosts(config.host, config.allowed_hosts)
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), RequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.head_deadlines.close()
        self.api.close()


def create_server(config: Config) -> FrontendServer:
    """A server bound to config.host:config.port (0 = any free port), not yet serving."""
    return FrontendServer(config, Api.from_config(config))
