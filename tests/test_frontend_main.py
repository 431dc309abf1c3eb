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


def test_health_checks_are_not_logged_at_info_but_other_requests_are(redis_url, tmp_path):
    """Docker asks /health every 15 s: at INFO that would be most of the log."""
    from testkit.processes import frontend_process

    frontend = frontend_process(tmp_path, redis_url, tmp_path / "library", extra_env={"LOG_LEVEL": "INFO"}).start()
    try:
        frontend.wait_until(lambda: _answers(f"{frontend.url}/queue_status"), 20, "the frontend to answer")
        for _ in range(3):
            requests.get(f"{frontend.url}/health", timeout=5)
        requests.get(f"{frontend.url}/queue_status?after-the-health-checks", timeout=5)
        # Requests are logged as they are answered, in order: once the last one is in the log,
        # the health checks before it would be too.
        frontend.wait_until(lambda: "after-the-health-checks" in frontend.log_tail(), 10, "the access log line")
        log = frontend.log_tail()
        assert "GET /queue_status" in log and "GET /health" not in log, log
    finally:
        frontend.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
