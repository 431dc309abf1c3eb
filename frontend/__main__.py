"""`python -m frontend`: serve the UI and the API until SIGTERM or SIGINT."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from frontend.config import Config
from frontend.server import create_server
from playground.settings import environment, start_service
from playground.writable import FolderNotWritable, ensure_writable

log = logging.getLogger("frontend")


def main() -> int:
    env = environment()
    config, _ = start_service("frontend", Config.from_env, env)
    try:  # deleting pictures writes the library: say so now, not on the first click
        ensure_writable(config.library_dir, "LIBRARY_DIR", env)
    except FolderNotWritable as exc:
        print(f"frontend: {exc}", file=sys.stderr)
        return 1
    server = create_server(config)
    stopping = threading.Event()

    def stop(signum, frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        # shutdown() waits for serve_forever to return, so it must run off the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("frontend serving on %s", server.url)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    log.info("frontend stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
