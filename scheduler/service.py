"""The scheduler: one worker thread per backend URL, all sharing one Redis connection pool.

Threads, not processes: a worker spends its time waiting on Redis and HTTP, so threads
cost nothing in speed, share one connection pool, and leave a single process to signal,
supervise and (in tests) kill -9. A killed scheduler loses every worker at once, which
recovery handles the same way as one lost worker.
"""
from __future__ import annotations

import logging
import threading

import redis

from playground.library import LibraryStore
from scheduler.config import Config
from scheduler.worker import Worker

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: Config, redis_client: redis.Redis | None = None):
        self.config = config
        self.redis = redis_client or redis.Redis.from_url(config.redis_url, health_check_interval=30)
        self.library = LibraryStore(config.library_dir)
        self.workers = [Worker(config, url, self.redis, self.library, threading.Event())
                        for url in config.backend_urls]
        self._threads: list[threading.Thread] = []

    def start(self) -> Scheduler:
        if self.library.rebuild():
            log.warning("rebuilt %s from the job folders", self.library.index_path)
        for worker in self.workers:
            thread = threading.Thread(target=worker.run, name=f"worker {worker.worker_id}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Ask every worker to stop; a running job goes back to the front of the queue."""
        for worker in self.workers:
            worker.stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the workers to finish; True if all have."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)
