"""Backends that announce themselves, so a new GPU joins without touching the scheduler.

A backend started with REDIS_URL and BACKEND_ADVERTISE_URL (the URL at which the scheduler
reaches it) writes its URL, status and model every second under `<prefix>:backend:<url>`, a
key that lives a few seconds, and keeps its URL in the set `<prefix>:backends`. A scheduler starts
a worker for every announced URL within a second or two, and that worker lets go of its backend
once the key has expired (the backend stopped, or cannot reach Redis). BACKEND_URLS lists
backends that do not announce themselves.

What the schedulers read of an announcement is that it lives: the worker asks the backend's
/health itself (it must reach it over HTTP anyway, and gets the report fresh), so the rest of
the report (downloads, devices, the announcing's own errors) is not copied into Redis. Status
and model stay, so whoever reads the key (an operator, a test) sees which backend it is.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from playground.queue import DEFAULT_PREFIX, Keys

log = logging.getLogger(__name__)

ANNOUNCE_INTERVAL_SECS = 1.0
ANNOUNCE_TTL_SECS = 5  # a backend silent this long is gone

# Forget the URLs (ARGV) whose announcement (KEYS[i + 1]) has expired, checked again here: a
# backend that announced itself between a reader's look and this call stays in the set.
# KEYS: the backends set, then each URL's announcement key.
FORGET_EXPIRED = """
for i, url in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then redis.call('SREM', KEYS[1], url) end
end
"""


class BackendRegistry:
    def __init__(self, redis_client: redis.Redis, prefix: str = DEFAULT_PREFIX):
        self.redis = redis_client
        self.keys = Keys(prefix)
        self._forget_expired = redis_client.register_script(FORGET_EXPIRED)

    def announce(self, url: str, report: dict, ttl_secs: int = ANNOUNCE_TTL_SECS) -> None:
        """`report`: what the backend's /health says (`playground.protocol`)."""
        announcement = {"url": url, "status": report.get("status"), "model": report.get("model")}
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.backend(url), json.dumps(announcement), ex=ttl_secs)
        pipe.sadd(self.keys.backends, url)
        pipe.execute()

    def withdraw(self, url: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.backend(url))
        pipe.srem(self.keys.backends, url)
        pipe.execute()

    def is_live(self, url: str) -> bool:
        return bool(self.redis.exists(self.keys.backend(url)))

    def live(self) -> dict[str, dict]:
        """Every backend whose announcement has not expired: URL -> its last announcement.
        The expired ones leave the set (each announcement adds its URL again)."""
        urls = sorted(url.decode() for url in self.redis.smembers(self.keys.backends))
        if not urls:
            return {}
        reports = self.redis.mget([self.keys.backend(url) for url in urls])
        live, expired = {}, []
        for url, raw in zip(urls, reports):
            if raw is None:
                expired.append(url)
                continue
            try:
                live[url] = json.loads(raw)
            except ValueError:
                live[url] = {"url": url}
        if expired:
            self.forget_expired(expired)
        return live

    def forget_expired(self, urls: list[str]) -> None:
        """Drop from the set those of `urls` whose announcement has expired by now."""
        self._forget_expired(keys=[self.keys.backends, *map(self.keys.backend, urls)], args=urls)


def redis_address(client: redis.Redis) -> str:
    """Where a client connects, without its password: `host:port/db` (or the socket's path)."""
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"{where}/{kwargs.get('db', 0)}"


class Announcer:
    """Announces one backend every second in a daemon thread, riding out Redis outages.

    While it cannot, `state()` says why and for how long (the backend's /health shows it, and
    its container health check fails once that lasts), since the scheduler never hears of a
    backend that cannot reach its Redis: a wrong password would otherwise look healthy."""

    def __init__(self, registry: BackendRegistry, url: str, report: Callable[[], dict],
                 interval_secs: float = ANNOUNCE_INTERVAL_SECS, ttl_secs: int = ANNOUNCE_TTL_SECS):
        self.registry, self.url, self.report = registry, url, report
        self.interval_secs, self.ttl_secs = interval_secs, ttl_secs
        self.stop = threading.Event()
        self.error: str | None = None
        self._failing_since: float | None = None  # time.monotonic() of the first failure in a row

    def start(self) -> Announcer:
        threading.Thread(target=self._run, name="announcer", daemon=True).start()
        return self

    def state(self) -> dict:
        """For /health: the URL announced, and the error with how long it has lasted (or None)."""
        since = self._failing_since
        return {"url": self.url, "error": self.error,
                "failing_secs": None if since is None else round(time.monotonic() - since, 1)}

    def _run(self) -> None:
        while True:
            try:
                self.registry.announce(self.url, self.report(), self.ttl_secs)
                if self.error is not None:
                    log.info("announcing %s in Redis again", self.url)
                self.error = self._failing_since = None
            except redis.RedisError as exc:
                error = self.describe_failure(exc)
                if self.error is None:  # logged once per outage, not every second
                    self._failing_since = time.monotonic()
                    log.warning("%s (retrying every second)", error)
                self.error = error
            if self.stop.wait(self.interval_secs):
                break
        try:
            self.registry.withdraw(self.url)
        except redis.RedisError:
            pass  # the key expires by itself

    def describe_failure(self, exc: redis.RedisError) -> str:
        where = redis_address(self.registry.redis)
        return f"cannot announce {self.url} in Redis at {where}: {type(exc).__name__}: {exc}"
