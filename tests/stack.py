"""The whole playground as real processes — Redis, backend (tiny model unless told), scheduler, frontend —
on free loopback ports with a temporary library, for browser and end-to-end tests.

    with Stack(tmp_path, model_cache_dir) as stack:
        requests.post(stack.frontend_url + "/prompt", json={...})
"""
from __future__ import annotations

from pathlib import Path

from playground.redis_server import RedisServer
from processes import backend_process, frontend_process, scheduler_process


class Stack:
    def __init__(self, workdir: Path, model_cache_dir: Path, warm_up_batch_sizes: str = "2,4",
                 frontend_env: dict[str, str] | None = None, model: str = "tiny"):
        self.workdir = Path(workdir)
        self.library_dir = self.workdir / "library"
        self.redis = RedisServer(self.workdir / "redis")
        logs = self.workdir / "logs"
        self.backend = backend_process(logs, model_cache_dir, model=model,
                                       extra_env={"BACKEND_WARMUP_BATCH_SIZES": warm_up_batch_sizes})
        self.scheduler = scheduler_process(logs, self.redis.url, [self.backend.url], self.library_dir)
        self.frontend = frontend_process(logs, self.redis.url, self.library_dir, extra_env=frontend_env)

    @property
    def frontend_url(self) -> str:
        return self.frontend.url

    def start(self) -> "Stack":
        self.redis.start()
        self.backend.start()
        self.frontend.start()
        self.backend.wait_healthy(timeout=240)
        self.scheduler.start()
        self.frontend.wait_healthy(timeout=60, path="/")
        return self

    def stop(self) -> None:
        for service in (self.frontend, self.scheduler, self.backend):
            service.stop()
        self.redis.stop()

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

