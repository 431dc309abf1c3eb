"""The scheduler: one worker thread per slot of each backend (one job each), all sharing one
Redis connection pool.

Threads, not processes: a worker spends its time waiting on Redis and HTTP, so threads
cost nothing in speed, share one connection pool, and leave a single process to signal,
supervise and (in tests) kill -9. A killed scheduler loses every worker at once, which
recovery handles the same way as one lost worker.
"""
from __future__ import annotations

import logging
import threading

import redis

from playground.backend_registry import BackendRegistry
from playground.library import LibraryStore
from scheduler.config import Config
from scheduler.worker import Worker, worker_id_for

log = logging.getLogger(__name__)


class Scheduler:
    """A worker for each backend of BACKEND_URLS, and one for each backend that announces
    itself in Redis (playground/backend_registry.py) for as long as it does."""

    def __init__(self, config: Config, redis_client: redis.Redis | None = None):
        self.config = config
        # Bounded reads (well above the workers' 1 s BLMOVE) and keepalive: a Redis host that
        # vanishes without a reset raises an error the workers back off from, never a hang.
        self.redis = redis_client or redis.Redis.from_url(config.redis_url, health_check_interval=30,
                                                          socket_connect_timeout=5, socket_timeout=10,
                                                          socket_keepalive=True)
        self.library = LibraryStore(config.library_dir)
        self.registry = BackendRegistry(self.redis, config.redis_prefix)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[str, tuple[Worker, threading.Thread]] = {}

    @property
    def workers(self) -> list[Worker]:
        with self._lock:
            return [worker for worker, _ in self._workers.values()]

    def start(self) -> Scheduler:
        if self.library.rebuild():
            log.warning("rebuilt %s from the job folders", self.library.index_path)
        for url in self.config.backend_urls:
            self._start_worker(url, announced=False)
        threading.Thread(target=self._discover, name="discovery", daemon=True).start()
        return self

    def _start_worker(self, url: str, announced: bool, slot: int = 0) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            current = self._workers.get(worker_id_for(url, slot))
            if current and current[1].is_alive():
                return
            # The first slot's worker learns how many the backend has, and starts the others.
            on_slots = (lambda slots: self._start_slots(url, announced, slots)) if slot == 0 else None
            worker = Worker(self.config, url, self.redis, self.library, threading.Event(),
                            registry=self.registry if announced else None, slot=slot, on_slots=on_slots)
            thread = threading.Thread(target=worker.run, name=f"worker {worker.worker_id}")
            self._workers[worker.worker_id] = (worker, thread)
            thread.start()
        if announced and slot == 0:
            log.info("backend %s announced itself: serving it", url)

    def _start_slots(self, url: str, announced: bool, slots: int) -> None:
        """A worker for each of the backend's slots past the first (each stops when its slot goes)."""
        for slot in range(1, slots):
            self._start_worker(url, announced, slot)

    def _discover(self) -> None:
        """Serve every announced backend; its worker lets go when the announcements stop."""
        delay = 0.0
        while not self._stopping.wait(delay):
            delay = self.config.discovery_interval_secs
            try:
                announced = self.registry.live()
            except redis.RedisError as exc:
                log.warning("cannot read the announced backends: %s", exc)
                continue
            for url in announced:
                self._start_worker(url, announced=True)

    def stop(self) -> None:
        """Ask every worker to stop; a running job goes back to the front of the queue."""
        self._stopping.set()
        for worker in self.workers:
            worker.stop.set()

    def _threads(self) -> list[threading.Thread]:
        with self._lock:
            return [thread for _, thread in self._workers.values()]

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the workers to finish; True if all have."""
        threads = self._threads()
        if not threads:  # none yet: announced backends may still come
            self._stopping.wait(timeout)
        for thread in threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads())

    def running(self) -> bool:
        """Until stopped: announced backends may come at any time, even with no worker now."""
        return not self._stopping.is_set() or any(thread.is_alive() for thread in self._threads())
