"""Upscales through the whole stack (real Redis, backend, scheduler and frontend processes;
the tiny model draws, the demo upscaler enlarges): POST /upscale of a library picture is a job
whose entry holds the picture four times the size, and a running upscale is cancelled."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from backend.engine.upscaler import load_upscaler
from testkit.stack import Stack

pytestmark = pytest.mark.timeout(600)
PROMPT = {"text": "a yellow triangle above a blue circle", "num_images": 2, "seed": 4242}
TILE_DELAY_SECS = 10.0  # each upscale waits this long after its tile (cancel cuts it short): time to cancel one


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_cache_dir):
    with Stack(tmp_path_factory.mktemp("stack-upscale"), model_cache_dir, model="tiny", warm_up_batch_sizes="2",
               backend_env={"UPSCALE_MODEL": "demo", "BACKEND_TEST_TILE_DELAY_SECS": str(TILE_DELAY_SECS)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def drawn(stack):
    return stack.run_prompt(PROMPT, timeout=120)


def png(stack: Stack, path: str) -> Image.Image:
    return Image.open(io.BytesIO(requests.get(f"{stack.frontend.url}/{path}", timeout=10).content))


def status(stack: Stack, job_id: str) -> dict:
    return requests.get(f"{stack.frontend.url}/jobs/{job_id}", timeout=10).json()


def test_a_library_picture_is_upscaled_as_a_job(stack, drawn):
    source = drawn["images"][0]
    done = stack.run_prompt({"path": source}, timeout=180, route="/upscale")
    assert (done["kind"], done["upscale_of"], done["text"]) == ("upscale", source, PROMPT["text"])
    entry = done["result"]
    assert (entry["upscale_of"], entry["upscale_model"], entry["upscale_scale"]) == (source, "demo", 4)
    [big_path] = entry["generated_images"]
    big, small = png(stack, big_path), png(stack, source)
    assert big.size == (small.width * 4, small.height * 4)
    expected = load_upscaler("demo").upscale(np.asarray(small.convert("RGB")))
    assert np.array_equal(np.asarray(big.convert("RGB")), expected)
    assert (big.text["upscale_of"], big.text["upscale_model"], big.text["upscale_scale"]) == (source, "demo", "4")
    assert big.text["prompt"] == PROMPT["text"] and "dalle_codes" not in big.text
    listed = requests.get(stack.frontend.url + "/getlibrary", timeout=10).json()
    assert any(e["queue_id"] == done["queue_id"] and e["generated_images"] == [big_path] for e in listed)
    # Once upscaled, neither the picture nor its upscale is upscaled again.
    for path, why in ((source, "is upscaled already"), (big_path, "is itself an upscale")):
        response = requests.post(stack.frontend.url + "/upscale", json={"path": path}, timeout=30)
        assert response.status_code == 400 and response.json()["field"] == "path", response.text
        assert why in response.json()["error"]


def test_a_running_upscale_is_cancelled(stack, drawn):
    response = requests.post(stack.frontend.url + "/upscale", json={"path": drawn["images"][1]}, timeout=30)
    assert response.status_code == 200, response.text
    job_id = response.json()["queue_id"]
    deadline = time.monotonic() + 120
    while status(stack, job_id)["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(stack, job_id)["status"] == "running", stack.logs_tail()
    assert requests.post(f"{stack.frontend.url}/jobs/{job_id}/cancel", timeout=10).status_code == 200
    while status(stack, job_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(stack, job_id)["status"] == "cancelled", stack.logs_tail()
    listed = requests.get(stack.frontend.url + "/getlibrary", timeout=10).json()
    assert not any(e["queue_id"] == job_id for e in listed)
    # The picture was not upscaled: it still can be.
    assert stack.run_prompt({"path": drawn["images"][1]}, timeout=180, route="/upscale")["status"] == "done"


def test_an_upscale_whose_scheduler_dies_mid_run_is_run_again(stack):
    """Crash recovery is the generations': the restarted worker takes its job back and runs it."""
    path = stack.run_prompt({**PROMPT, "seed": 77}, timeout=120)["images"][0]
    response = requests.post(stack.frontend.url + "/upscale", json={"path": path}, timeout=30)
    assert response.status_code == 200, response.text
    job_id = response.json()["queue_id"]
    deadline = time.monotonic() + 120
    while status(stack, job_id)["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(stack, job_id)["status"] == "running", stack.logs_tail()
    stack.scheduler.kill()  # mid-tile: the upscale waits TILE_DELAY_SECS after it
    stack.scheduler.start()
    while status(stack, job_id)["status"] in ("queued", "running") and time.monotonic() < deadline + 120:
        time.sleep(0.1)
    done = status(stack, job_id)
    assert done["status"] == "done" and done["attempts"] >= 2, (done, stack.logs_tail())
    assert done["result"]["upscale_of"] == path and len(done["result"]["generated_images"]) == 1
