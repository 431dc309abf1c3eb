"""The scheduler's configuration, read from environment variables (see docs/architecture.md)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from playground.queue import DEFAULT_PREFIX
from playground.settings import get_float, get_int, get_list, get_str


@dataclass(frozen=True)
class Config:
    redis_url: str = "redis://127.0.0.1:6379/0"
    backend_urls: tuple[str, ...] = ("http://127.0.0.1:8080",)
    library_dir: Path = Path("library")
    redis_prefix: str = DEFAULT_PREFIX
    # A job whose worker or backend dies this many times is failed with the reason.
    max_attempts: int = 3
    # Heartbeats renew a key living heartbeat_ttl_secs: a worker silent that long is dead.
    heartbeat_interval_secs: float = 1.0
    heartbeat_ttl_secs: int = 6
    # How often the running job's progress is written to Redis (the API promises ≤ 2 s).
    progress_interval_secs: float = 0.25
    # A backend silent this long in the middle of a job (it promises a line a second) is lost.
    stall_timeout_secs: float = 60.0
    # Waiting for a backend that is loading or unreachable: exponential back-off bounds.
    backoff_min_secs: float = 0.1
    backoff_max_secs: float = 5.0
    # How often the backends that announce themselves in Redis are looked up.
    discovery_interval_secs: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        listed = get_list(env, "BACKEND_URLS", list(cls.backend_urls))
        # "none": only backends that announce themselves in Redis (BACKEND_ADVERTISE_URL).
        urls = () if listed == ["none"] else tuple(url.rstrip("/") for url in listed)
        if len(set(urls)) != len(urls):
            raise ValueError(f"BACKEND_URLS lists a backend twice: {', '.join(urls)}")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"BACKEND_URLS entries must be http(s) URLs, got {url!r}")
        config = cls(
            redis_url=get_str(env, "REDIS_URL", cls.redis_url),
            redis_prefix=get_str(env, "REDIS_PREFIX", cls.redis_prefix),
            backend_urls=urls,
            library_dir=Path(get_str(env, "LIBRARY_DIR", str(cls.library_dir))),
            max_attempts=get_int(env, "SCHEDULER_MAX_ATTEMPTS", cls.max_attempts),
            stall_timeout_secs=get_float(env, "SCHEDULER_STALL_TIMEOUT", cls.stall_timeout_secs),
            heartbeat_ttl_secs=get_int(env, "SCHEDULER_HEARTBEAT_TTL", cls.heartbeat_ttl_secs),
        )
        if config.heartbeat_ttl_secs < 2:
            raise ValueError("SCHEDULER_HEARTBEAT_TTL must be at least 2 (seconds; heartbeats come every second)")
        if config.max_attempts < 1:
            raise ValueError("SCHEDULER_MAX_ATTEMPTS must be at least 1")
        return config
