"""A frontend serving from a background thread, for tests and benchmarks in one process."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from frontend.config import Config
from frontend.server import FrontendServer, create_server


@contextmanager
def serving(config: Config) -> Iterator[FrontendServer]:
    """The running server (port 0 in the config picks a free one; see `server.url`)."""
    server = create_server(config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="frontend", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
