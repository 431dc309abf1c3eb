"""`python -m frontend` as a real process: configured from the environment, stops cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from playground.redis_server import free_port


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_python_m_frontend_serves_then_stops_cleanly(redis_url, tmp_path, stop_signal):
    port = free_port()
    env = {**os.environ, "FRONTEND_PORT": str(port), "REDIS_URL": redis_url,
           "LIBRARY_DIR": str(tmp_path / "library"), "API_TOKEN": "t0k3n"}
    process = subprocess.Popen([sys.executable, "-m", "frontend"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                response = requests.get(f"{url}/queue_status", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
                time.sleep(0.1)
        assert response.status_code == 200 and response.json() == []
        assert requests.get(f"{url}/").status_code == 200  # the package's own UI pages
        assert requests.post(f"{url}/prompt", json={"text": "x", "num_images": 2}).status_code == 401
        # An idle keep-alive connection must not hold up the shutdown.
        idle = requests.Session()
        idle.get(f"{url}/queue_status")
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
        output = process.stdout.read().decode()
        assert "shutting down" in output and "frontend stopped" in output
        assert "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
