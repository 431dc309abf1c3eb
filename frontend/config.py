"""The frontend's configuration, read from environment variables."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from playground.queue import DEFAULT_PREFIX
from playground.settings import get_float, get_int, get_list, get_str

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Must equal the scheduler's: several playgrounds may share one Redis server.
    redis_prefix: str = DEFAULT_PREFIX
    library_dir: Path = Path("library")
    static_dir: Path = field(default=STATIC_DIR)
    # Empty: no token. Set: every request that changes something must carry it.
    api_token: str = ""
    # Host header names answered besides the loopback names ("*" = any). Empty: only the
    # loopback names when bound to loopback (no DNS rebinding), any name otherwise.
    allowed_hosts: tuple[str, ...] = ()
    # Request bounds: a request line longer than this gets 414, a body longer gets 413.
    max_request_line: int = 8192
    max_body_bytes: int = 64 * 1024
    # An uploaded start picture (POST /prompt's init_image_data) may have this many bytes; a
    # bigger one gets 400. POST /prompt's body may hold twice that (base64 is 4/3 of it).
    max_upload_bytes: int = 4 * 2**20
    # Start pictures decoded at once; more wait their turn. A decode holds up to 4096² pixels
    # (64 MiB), so this bounds the memory that uploads arriving together can take.
    decodes_at_once: int = 2
    # A client silent this long (idle keep-alive or a stalled request) loses its connection.
    socket_timeout_secs: float = 15.0
    # The request line and headers must arrive within this (slowloris), idle keep-alive included.
    head_deadline_secs: float = 10.0
    # The whole body must arrive within this, so a client dribbling bytes cannot hold a thread.
    body_deadline_secs: float = 15.0
    # Connections beyond this are answered 503 at once instead of getting a thread.
    max_connections: int = 256
    # Unfinished jobs beyond this make POST /prompt answer 429.
    max_queued_jobs: int = 1000
    # GET /getlibrary?limit= is capped here.
    max_page_size: int = 1000
    # The model of jobs that name none, when a backend serves it (DALLE_MODEL, as the backend's).
    default_model: str = ""

    def __post_init__(self):
        if self.decodes_at_once < 1:
            raise ValueError(f"FRONTEND_DECODES_AT_ONCE must be at least 1, not {self.decodes_at_once}")

    def body_limit(self, method: str, path: str) -> int:
        """The most bytes a request's body may have: POST /prompt may carry a picture."""
        if method == "POST" and path == "/prompt":
            return max(self.max_body_bytes, 2 * self.max_upload_bytes)
        return self.max_body_bytes

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        return cls(
            host=get_str(env, "FRONTEND_HOST", cls.host),
            port=get_int(env, "FRONTEND_PORT", cls.port),
            redis_url=get_str(env, "REDIS_URL", cls.redis_url),
            redis_prefix=get_str(env, "REDIS_PREFIX", cls.redis_prefix),
            library_dir=Path(get_str(env, "LIBRARY_DIR", str(cls.library_dir))),
            static_dir=Path(get_str(env, "STATIC_DIR", str(STATIC_DIR))),
            api_token=env.get("API_TOKEN", "").strip(),
            allowed_hosts=tuple(name.lower() for name in get_list(env, "FRONTEND_ALLOWED_HOSTS", [])),
            max_request_line=get_int(env, "FRONTEND_MAX_REQUEST_LINE", cls.max_request_line),
            max_body_bytes=get_int(env, "FRONTEND_MAX_BODY_BYTES", cls.max_body_bytes),
            max_upload_bytes=get_int(env, "FRONTEND_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            decodes_at_once=get_int(env, "FRONTEND_DECODES_AT_ONCE", cls.decodes_at_once),
            socket_timeout_secs=get_float(env, "FRONTEND_SOCKET_TIMEOUT", cls.socket_timeout_secs),
            head_deadline_secs=get_float(env, "FRONTEND_HEAD_DEADLINE", cls.head_deadline_secs),
            body_deadline_secs=get_float(env, "FRONTEND_BODY_DEADLINE", cls.body_deadline_secs),
            max_connections=get_int(env, "FRONTEND_MAX_CONNECTIONS", cls.max_connections),
            max_queued_jobs=get_int(env, "FRONTEND_MAX_QUEUED_JOBS", cls.max_queued_jobs),
            max_page_size=get_int(env, "FRONTEND_MAX_PAGE_SIZE", cls.max_page_size),
            default_model=get_str(env, "DALLE_MODEL", ""),
        )
