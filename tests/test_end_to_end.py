"""The walking skeleton: the launcher starts the four real processes with its default model
(the demo model); the original API's example request goes through frontend → Redis →
scheduler → backend → library, and a prompt in the demo model's words comes back as the
pictures it names; Ctrl-C stops everything and leaves no process behind."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from PIL import Image

from playground.redis_server import free_port
from training import evaluate

pytestmark = pytest.mark.timeout(300)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(predicate, timeout: float, what: str, log_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    log = log_path.read_text(errors="replace")[-5000:] if log_path and log_path.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n--- launcher log ---\n{log}")


def try_get(url: str):
    try:
        return http("GET", url)
    except OSError:
        return None


@pytest.fixture
def launcher(tmp_path, model_cache_dir):
    frontend_port, backend_port = free_port(), free_port()
    env = {
        **os.environ,
        "LOCAL_DATA_DIR": str(tmp_path / "data"),
        "LIBRARY_DIR": str(tmp_path / "library"),
        "MODEL_CACHE_DIR": str(model_cache_dir),
        "BACKEND_WARMUP_BATCH_SIZES": "4,6",
        "FRONTEND_PORT": str(frontend_port),
        "BACKEND_PORT": str(backend_port),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    env.pop("DALLE_MODEL", None)
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "playground"], env=env, cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT)
    yield process, f"http://127.0.0.1:{frontend_port}", tmp_path, log_path
    if process.poll() is None:
        process.kill()
        for child in psutil.Process(process.pid).children(recursive=True) if psutil.pid_exists(process.pid) else []:
            child.kill()


def test_prompt_goes_end_to_end_and_ctrl_c_cleans_up(launcher):
    process, base, workdir, log_path = launcher
    wait_for(lambda: try_get(base + "/"), 60, "the frontend", log_path)
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 4, [c.cmdline() for c in children]  # redis, backend (+worker), scheduler, frontend

    # The original README's example body, num_images as a string.
    status, body = http("POST", base + "/prompt", {
        "text": "the red squirrel dances in the moonlight, feet off the ground, backlit, photograph",
        "num_images": "6",
        "seed": 12345,
    })
    assert status == 200, body
    queue_id = json.loads(body)["queue_id"]

    def finished_entry(queue_id):
        status, body = http("GET", base + "/getlibrary")
        entries = [e for e in json.loads(body) if e["queue_id"] == queue_id] if status == 200 else []
        return entries[0] if entries else None

    status, body = http("GET", base + "/queue_status")
    assert status == 200
    listed = [item["num_images"] for item in json.loads(body) if item["queue_id"] == queue_id]
    # Listed with its size until it is finished, and then it is in the library.
    assert listed == [6] or (not listed and finished_entry(queue_id)), body

    entry = wait_for(lambda: finished_entry(queue_id), 240, "the job in /getlibrary", log_path)
    assert entry["text_prompt"].startswith("the red squirrel")
    assert entry["seed"] == 12345 and entry["num_images"] == 6
    assert isinstance(entry["creation_unixtime"], float) and entry["process_time_secs"] > 0
    assert len(entry["generated_images"]) == 6
    for url in entry["generated_images"]:
        assert url.startswith(f"library/{queue_id}/") and url.endswith(".png")
        status, data = http("GET", f"{base}/{url}")
        assert status == 200
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.size == (128, 128)  # the demo model's pictures
    library_json = json.loads((workdir / "library" / "library.json").read_text())
    assert any(e["queue_id"] == queue_id for e in library_json)

    status, body = http("POST", base + "/prompt", {"text": "a blue square on a white background",
                                                     "num_images": 4, "seed": 7})
    assert status == 200, body
    entry = wait_for(lambda: finished_entry(json.loads(body)["queue_id"]), 120, "the demo prompt", log_path)
    drawn = [evaluate.classify(Image.open(io.BytesIO(http("GET", f"{base}/{url}")[1])).convert("RGB"))
             for url in entry["generated_images"]]
    assert sum(found == ("blue", "square") for found in drawn) >= 3, drawn
    assert json.loads(http("GET", base + "/queue_status")[1]) == []

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    time.sleep(0.5)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [c.cmdline() for c in alive]
