"""A wrong setting stops a service with one line that names it and exit code 2, never a
traceback; the local launcher then stops everything instead of restarting it forever."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from playground.redis_server import free_port
from playground.settings import BAD_CONFIGURATION_EXIT


def run_module(module: str, tmp_path, redis_url: str, timeout: float = 60, **settings) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": redis_url, "LIBRARY_DIR": str(tmp_path / "library"),
           "FRONTEND_PORT": str(free_port()), "BACKEND_PORT": str(free_port()), **settings}
    return subprocess.run([sys.executable, "-m", module], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("module,name,value", [
    ("backend", "LOG_LEVEL", "LOUD"), ("scheduler", "LOG_LEVEL", "LOUD"), ("frontend", "LOG_LEVEL", "LOUD"),
    ("backend", "BACKEND_PORT", "80a"), ("backend", "PREVIEW_EVERY_TOKENS", "often"),
    ("backend", "UPSCALE_MODEL", "x4v3"),
    ("scheduler", "SCHEDULER_MAX_ATTEMPTS", "three"), ("frontend", "FRONTEND_PORT", "http"),
])
def test_a_bad_setting_exits_with_one_line(module, name, value, tmp_path, redis_url):
    done = run_module(module, tmp_path, redis_url, **{name: value})
    assert done.returncode == BAD_CONFIGURATION_EXIT, done.stderr
    assert done.stderr.startswith(f"{module}: bad configuration: {name} ") and f"{value!r}" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_the_launcher_stops_when_a_service_is_misconfigured(tmp_path, redis_url):
    done = run_module("playground", tmp_path, redis_url, LOG_LEVEL="loud", PYTHONUNBUFFERED="1")
    assert done.returncode == BAD_CONFIGURATION_EXIT, done.stdout + done.stderr
    assert "exited for a bad setting" in done.stdout and "restarting" not in done.stdout
    assert "bad configuration: LOG_LEVEL must be one of" in done.stdout
    assert done.stdout.rstrip().endswith("| stopped")


def test_the_launcher_names_its_own_bad_setting(tmp_path, redis_url):
    done = run_module("playground", tmp_path, redis_url, FRONTEND_PORT="eight thousand")
    assert done.returncode == BAD_CONFIGURATION_EXIT
    assert done.stderr.strip() == "playground: bad configuration: FRONTEND_PORT must be an integer, got 'eight thousand'"
