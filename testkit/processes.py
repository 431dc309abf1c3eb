"""Start, stop and kill the services as real processes, for checks that need them to die.

Each process runs `python -m <module>` with the environment given (on top of this one),
in its own session so that kill -9 takes its children with it, and writes its output to a
log file whose tail goes into every failure message.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from playground.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m backend` finds the package


def run_as_prefix(uid: int) -> list[str]:
    """The command prefix that runs a program as uid:uid with no other groups, for checks of
    what a service does with a folder it may not write: the tests run as root in CI, and root
    writes anywhere. It keeps one capability, CAP_DAC_READ_SEARCH (read and traverse any
    folder, write nothing more), so the interpreter and the repository stay reachable wherever
    they are installed (e.g. under root's mode-700 home).
    Needs root and util-linux's setpriv."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        raise RuntimeError("running as another user needs root and setpriv (util-linux)")
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


class ServiceProcess:
    """One service process: `python -m module` with `env`, output in `log_path`."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path, url: str | None = None,
                 run_as: int | None = None):
        self.module = module
        self.env = env
        self.log_path = Path(log_path)
        self.url = url
        # A uid (and gid) to run as instead of ours (see `run_as_prefix`).
        self.run_as = run_as
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        prefix = [] if self.run_as is None else run_as_prefix(self.run_as)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", self.module], cwd=REPO_ROOT, env={**os.environ, **self.env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text[-chars:]

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
        """Poll `condition` until true; fail with the log tail if it is not, or if we die."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return
            if not self.alive():
                raise AssertionError(f"{self.module} exited ({self.process.returncode}) while waiting "
                                     f"for {what}; log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.module}: no {what} within {timeout} s; log {self.log_path}:\n"
                                     f"{self.log_tail()}")
            time.sleep(interval)

    def wait_healthy(self, timeout: float = 120.0, path: str = "/health") -> ServiceProcess:
        """Wait until GET url+path answers 200; fail at once if it reports status "error"."""
        def healthy() -> bool:
            try:
                response = requests.get(f"{self.url}{path}", timeout=2)
            except requests.RequestException:
                return False
            if response.status_code == 200:
                return True
            try:
                body = response.json()
            except ValueError:
                return False
            if isinstance(body, dict) and body.get("status") == "error":
                raise AssertionError(f"{self.module} reports an error: {body.get('error')}; "
                                     f"log {self.log_path}:\n{self.log_tail()}")
            return False
        self.wait_until(healthy, timeout, f"200 from {path}", interval=0.2)
        return self

    def kill(self) -> None:
        """kill -9 of the process and everything it started, as a crash would."""
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP of the process and its children: a suspended VM, a stalled machine."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then kill -9 after `timeout`; returns the exit status."""
        if self.alive():
            self.resume()  # a paused process cannot act on SIGTERM
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:
            try:  # children (e.g. a gunicorn worker) that outlived their parent
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return self.process.returncode
        return None


def backend_process(log_dir: Path, cache_dir: Path, model: str = "tiny", port: int | None = None,
                    extra_env: dict[str, str] | None = None, run_as: int | None = None) -> ServiceProcess:
    """A `python -m backend` on a free loopback port (not started)."""
    port = port or free_port()
    env = {"DALLE_MODEL": model, "MODEL_CACHE_DIR": str(cache_dir), "BACKEND_HOST": "127.0.0.1",
           "BACKEND_PORT": str(port), "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    return ServiceProcess("backend", env, Path(log_dir) / f"backend-{port}.log", url=f"http://127.0.0.1:{port}",
                          run_as=run_as)


def scheduler_process(log_dir: Path, redis_url: str, backend_urls: list[str], library_dir: Path,
                      extra_env: dict[str, str] | None = None, name: str = "scheduler") -> ServiceProcess:
    """A `python -m scheduler` for the given backends (not started)."""
    env = {"REDIS_URL": redis_url, "BACKEND_URLS": ",".join(backend_urls), "LIBRARY_DIR": str(library_dir),
           **(extra_env or {})}
    return ServiceProcess("scheduler", env, Path(log_dir) / f"{name}.log")


def frontend_process(log_dir: Path, redis_url: str, library_dir: Path, port: int | None = None,
                     extra_env: dict[str, str] | None = None) -> ServiceProcess:
    """A `python -m frontend` on a free loopback port (not started)."""
    port = port or free_port()
    env = {"REDIS_URL": redis_url, "LIBRARY_DIR": str(library_dir), "FRONTEND_HOST": "127.0.0.1",
           "FRONTEND_PORT": str(port), **(extra_env or {})}
    return ServiceProcess("frontend", env, Path(log_dir) / f"frontend-{port}.log", url=f"http://127.0.0.1:{port}")
