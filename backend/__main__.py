"""`python -m backend`: the Flask app behind gunicorn (one process holds the model; threads serve
/health and /cancel while a generation streams)."""
from __future__ import annotations

import os
import signal
import sys

from gunicorn.app.base import BaseApplication

from backend.app import create_app
from backend.config import Config
from backend.device import apply_device_setting
from playground.settings import environment, start_service


# How long gunicorn's worker waits, once told to stop, for its open requests to end before it
# is killed. A running generation does not hold it: it is handed back at once
# (`hand_back_on_sigterm`), so this bounds only a request that will not end. Docker's
# stop_grace_period (docker-compose.yml) leaves room for it.
GRACEFUL_TIMEOUT_SECS = 5


def hand_back_on_sigterm(worker) -> None:
    """gunicorn's `post_worker_init` hook: on SIGTERM (`docker compose stop`, a launcher that
    stops) the worker first hands its running job back, then stops as gunicorn does. Else the
    job would be cut off after the graceful timeout and lose an attempt, as in a crash."""
    api = worker.wsgi.extensions["backend_api"]
    stop_gracefully = worker.handle_exit

    def on_sigterm(signum, frame) -> None:
        api.hand_back()
        stop_gracefully(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


class BackendServer(BaseApplication):
    def __init__(self, config: Config, log_level: str):
        self.config, self.log_level = config, log_level
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": f"{self.config.host}:{self.config.port}",
            # One process: the model is loaded once; the GPU holds one copy.
            "workers": 1,
            "worker_class": "gthread",
            "threads": 8,
            # gthread workers heartbeat from their main loop, so long generations are fine.
            "timeout": 120,
            "graceful_timeout": GRACEFUL_TIMEOUT_SECS,
            "post_worker_init": hand_back_on_sigterm,
            "keepalive": 5,
            "errorlog": "-",
            "loglevel": self.log_level.lower(),
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app(self.config)


def main() -> int:
    env = environment()
    config, log_level = start_service("backend", Config.from_env, env)
    # Let JAX take GPU memory as it needs it, so two backends can share one card.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    apply_device_setting(config.device, os.environ)  # before anything imports JAX
    BackendServer(config, log_level).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
