"""The whole playground as real processes: Redis, the backend (tiny model unless told), the
scheduler and the frontend, on free loopback ports with a library of its own, restartable one
by one. For the browser tests and the reliability suite.

    with Stack(workdir, model_cache_dir) as stack:
        requests.post(stack.frontend.url + "/prompt", json={...})

The library can live on a small tmpfs of its own (when mounting is permitted), so that "disk
full" and "read-only" can be real.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import requests

from playground.redis_server import RedisServer
from testkit.processes import ServiceProcess, backend_process, frontend_process, scheduler_process


class Stack:
    """Redis + backend + scheduler + frontend as real processes; `start()` waits until the
    frontend's /health says every part is ready."""

    def __init__(self, workdir: Path, model_cache_dir: Path, *, model: str = "tiny",
                 warm_up_batch_sizes: str = "2,4", frontend_env: dict[str, str] | None = None,
                 redis_appendonly: bool = False, library_tmpfs_mb: int | None = None,
                 backend_env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.library_dir = self.workdir / "library"
        self.library_dir.mkdir(exist_ok=True)
        self.mounted = False
        self.mount_refused: str | None = "not asked to mount the library"
        if library_tmpfs_mb:
            self._mount_library(library_tmpfs_mb)
        self.frontend_env = {"PYTHONUNBUFFERED": "1", **(frontend_env or {})}
        self.redis = RedisServer(self.workdir / "redis", appendonly=redis_appendonly)
        self.backend = backend_process(self.logs, model_cache_dir, model=model, extra_env={
            "BACKEND_WARMUP_BATCH_SIZES": warm_up_batch_sizes, "PYTHONUNBUFFERED": "1", **(backend_env or {})})
        self.scheduler = scheduler_process(self.logs, self.redis.url, [self.backend.url], self.library_dir,
                                           extra_env={"PYTHONUNBUFFERED": "1"})
        self.frontend = frontend_process(self.logs, self.redis.url, self.library_dir, extra_env=self.frontend_env)
        self.extra_frontends: list[ServiceProcess] = []

    # -- the library's own file system -----------------------------------------------------

    def _mount_library(self, size_mb: int) -> None:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs",
                                 str(self.library_dir)], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            self.mounted, self.mount_refused = True, None
        else:
            self.mount_refused = (result.stderr or result.stdout).strip() or f"mount exited {result.returncode}"

    def remount(self, options: str) -> None:
        """`ro` or `rw` on the library's tmpfs."""
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.library_dir)], check=True,
                       capture_output=True)

    def _unmount_library(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.library_dir)], capture_output=True, check=False)
            self.mounted = False

    # -- the processes ---------------------------------------------------------------------

    def start(self) -> Stack:
        self.redis.start()
        self.backend.start()
        self.frontend.start()
        self.scheduler.start()
        self.frontend.wait_healthy(timeout=60, path="/openapi.json")
        self.backend.wait_healthy(timeout=300)
        self.wait_healthy(timeout=60)
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until the frontend's /health says every part is ready."""
        def healthy() -> bool:
            try:
                return requests.get(self.frontend.url + "/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False
        self.frontend.wait_until(healthy, timeout, "200 from /health (every part ready)", interval=0.3)

    def run_prompt(self, body: dict, timeout: float = 180, route: str = "/prompt") -> dict:
        """POST /prompt (or another route that queues a job: /upscale) and wait for the job: its
        finished status (with the library entry), which must be done."""
        response = requests.post(self.frontend.url + route, json=body, timeout=30)
        assert response.status_code == 200, response.text
        job_id = response.json()["queue_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = requests.get(f"{self.frontend.url}/jobs/{job_id}", timeout=10).json()
            if status["status"] not in ("queued", "running"):
                assert status["status"] == "done", (status, self.logs_tail())
                return status
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish\n{self.logs_tail()}")

    def restart_redis(self) -> None:
        self.redis.start()

    def start_extra_frontend(self, env: dict[str, str]) -> ServiceProcess:
        """Another frontend on the same Redis and library (e.g. with an API token)."""
        process = frontend_process(self.logs, self.redis.url, self.library_dir,
                                   extra_env={**self.frontend_env, **env}).start()
        self.extra_frontends.append(process)
        process.wait_healthy(timeout=60, path="/openapi.json")
        return process

    def stop(self) -> None:
        for process in [*self.extra_frontends, self.frontend, self.scheduler, self.backend]:
            process.stop()
        self.redis.stop()
        self._unmount_library()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.module} ({p.log_path.name}) ---\n{p.log_tail(chars)}"
                         for p in (self.backend, self.scheduler, self.frontend))

    @property
    def frontend_port(self) -> int:
        """The frontend's loopback port, for checks that speak raw sockets to it."""
        return int(self.frontend.url.rsplit(":", 1)[1])
