"""`python -m scheduler`: run one worker per BACKEND_URLS entry until SIGTERM or SIGINT."""
from __future__ import annotations

import logging
import signal
import sys
import time

from playground.settings import environment, start_service
from playground.writable import FolderNotWritable, ensure_writable
from scheduler.config import Config
from scheduler.service import Scheduler

log = logging.getLogger("scheduler")

# Enough for a worker to hang up on its backend and put the job back.
SHUTDOWN_GRACE_SECS = 20


def main() -> int:
    env = environment()
    config, _ = start_service("scheduler", Config.from_env, env)
    try:  # before any job is taken: a library that cannot be written fails jobs after generating
        ensure_writable(config.library_dir, "LIBRARY_DIR", env)
    except FolderNotWritable as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 1
    scheduler = Scheduler(config)
    stop_deadline: list[float] = []

    def on_signal(signum, _frame):
        log.info("got signal %d: stopping", signum)
        scheduler.stop()
        stop_deadline.append(time.monotonic() + SHUTDOWN_GRACE_SECS)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheduler.start()
    # Join in short steps so the main thread stays free to run signal handlers.
    while scheduler.running():
        scheduler.join(timeout=0.5)
        if stop_deadline and time.monotonic() > stop_deadline[0]:
            # A job still in a processing list is put back by the next scheduler's start.
            log.error("workers did not stop within %d s; exiting anyway", SHUTDOWN_GRACE_SECS)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
