"""The local launcher: Redis, backend, scheduler and frontend as child processes, no Docker.

Each service's output is shown with a prefix; a service that dies is restarted, unless it
exited for a bad setting (then everything stops, as SIGINT/SIGTERM stops it, leaving no
process behind).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from playground.redis_server import RedisServer
from playground.settings import BAD_CONFIGURATION_EXIT, get_int, get_str

SERVICES = ("backend", "scheduler", "frontend")
RESTART_DELAY_SECS = 2.0
STOP_TIMEOUT_SECS = 15.0


@dataclass
class Service:
    name: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    pump: threading.Thread | None = field(default=None, repr=False)


class Launcher:
    def __init__(self, env: Mapping[str, str], out=sys.stdout):
        """Raises ValueError for a bad setting of its own (ports)."""
        self.env = dict(env)
        self.out = out
        self.redis_port = get_int(env, "LOCAL_REDIS_PORT", 0) or None
        self.backend_port = get_int(env, "BACKEND_PORT", 8080)
        self.frontend_url = f"http://{get_str(env, 'FRONTEND_HOST', '127.0.0.1')}:{get_int(env, 'FRONTEND_PORT', 8000)}/"
        self.redis: RedisServer | None = None
        self.services: list[Service] = []
        self.stopping = threading.Event()
        self.misconfigured: str | None = None  # the service that exited for a bad setting
        self._print_lock = threading.Lock()

    def say(self, prefix: str, line: str) -> None:
        with self._print_lock:
            self.out.write(f"{prefix:<10}| {line}\n")
            self.out.flush()

    def service_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if not env.get("REDIS_URL"):
            data_dir = Path(get_str(env, "LOCAL_DATA_DIR", "data")) / "redis"
            # "always", as in Docker: no acknowledged job is lost if Redis is killed.
            self.redis = RedisServer(data_dir, port=self.redis_port, appendfsync="always").start()
            env["REDIS_URL"] = self.redis.url
            self.say("redis", f"embedded redis-server on {self.redis.url} (data in {data_dir})")
        env.setdefault("BACKEND_URLS", f"http://127.0.0.1:{self.backend_port}")
        return env

    def start(self) -> None:
        env = self.service_env()
        for name in SERVICES:
            service = Service(name, env)
            self.services.append(service)
            self._spawn(service)

    def _spawn(self, service: Service) -> None:
        service.process = subprocess.Popen(
            [sys.executable, "-m", service.name],
            env=service.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # we alone signal it, and can kill its whole group
        )
        service.pump = threading.Thread(target=self._pump, args=(service, service.process), daemon=True)
        service.pump.start()

    def _pump(self, service: Service, process: subprocess.Popen) -> None:
        for raw in process.stdout:
            self.say(service.name, raw.decode(errors="replace").rstrip())

    def supervise(self) -> None:
        """Restart services that die until asked to stop."""
        announced = False
        while not self.stopping.wait(0.5):
            if not announced and _answers(self.frontend_url):
                self.say("playground", f"ready: open {self.frontend_url} (the model may still be loading)")
                announced = True
            for service in self.services:
                code = service.process.poll() if service.process else None
                if code == BAD_CONFIGURATION_EXIT and not self.stopping.is_set():
                    self.misconfigured = service.name
                    self.say(service.name, "exited for a bad setting (its message is above): fix it in .env "
                                           "or the environment, then start again; stopping")
                    return
                if code is not None and not self.stopping.is_set():
                    service.restarts += 1
                    self.say(service.name, f"exited with code {code}; restarting in {RESTART_DELAY_SECS:.0f} s")
                    if self.stopping.wait(RESTART_DELAY_SECS):
                        return
                    self._spawn(service)

    def stop(self) -> None:
        self.stopping.set()
        for service in self.services:
            if service.process and service.process.poll() is None:
                _signal_group(service.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECS
        for service in self.services:
            if not service.process:
                continue
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(service.name, "did not stop in time: killing")
            # Whatever the service left in its group (e.g. gunicorn workers) goes too.
            _signal_group(service.process, signal.SIGKILL)
            service.process.wait()
            if service.pump:
                service.pump.join(timeout=2)
        if self.redis:
            self.redis.stop()
        self.say("playground", "stopped")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except Exception:
        return False


def run(env: Mapping[str, str]) -> int:
    try:
        launcher = Launcher(env)
    except ValueError as exc:
        print(f"playground: bad configuration: {exc}", file=sys.stderr)
        return BAD_CONFIGURATION_EXIT

    def on_signal(signum, _frame):
        launcher.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        launcher.start()
        launcher.supervise()
    finally:
        launcher.stop()
    return BAD_CONFIGURATION_EXIT if launcher.misconfigured else 0
