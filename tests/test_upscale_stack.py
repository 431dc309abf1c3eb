"""Upscales through the whole stack (real Redis, backend, scheduler and frontend processes;
the tiny model draws, the demo upscaler enlarges): POST /upscale of a library picture is a job
whose entry holds the picture four times the size, and a running upscale is cancelled."""
from __future__ import annotations

import io
import time

import numpy as np
import redis
import pytest
import requests
from PIL import Image

from backend.engine.upscaler import load_upscaler
from playground.queue import Keys
from playground.queue.eta import job_times
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
    # Its time is kept with the worker's upscales (the ETAs' fit), apart from its generations.
    keys, client = Keys(), redis.Redis.from_url(stack.redis.url)
    upscales = [sample for times in client.hvals(keys.upscale_speed) for sample in job_times(times)]
    generations = [sample for times in client.hvals(keys.speed) for sample in job_times(times)]
    assert len(upscales) == 1 and upscales[0][0] == 1 and upscales[0][1] > 0
    assert [pictures for pictures, _ in generations] == [PROMPT["num_images"]]
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


def test_a_prompt_with_upscale_queues_an_upscale_of_each_picture(stack):
    """`upscale: 4` on POST /prompt: the job's commit queues one upscale job per picture, in
    picture order; its result lists them, and each one's entry holds its big picture."""
    done = stack.run_prompt({**PROMPT, "seed": 99, "upscale": 4}, timeout=120)
    entry = done["result"]
    assert entry["upscale"] == 4 and len(entry["upscale_jobs"]) == len(entry["generated_images"]) == 2, entry
    deadline = time.monotonic() + 300
    upscales = []
    for job_id, source in zip(entry["upscale_jobs"], entry["generated_images"]):
        while status(stack, job_id)["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
        upscale = status(stack, job_id)
        assert upscale["status"] == "done", (upscale, stack.logs_tail())
        assert (upscale["kind"], upscale["upscale_of"], upscale["text"]) == ("upscale", source, PROMPT["text"])
        [big_path] = upscale["result"]["generated_images"]
        assert png(stack, big_path).size == tuple(4 * side for side in png(stack, source).size)
        upscales.append(upscale)
    assert upscales[0]["created_at"] <= upscales[1]["created_at"] and \
        upscales[0]["started_at"] <= upscales[1]["started_at"]  # queued, and so run, in picture order
    listed = {e["queue_id"]: e for e in requests.get(stack.frontend.url + "/getlibrary", timeout=10).json()}
    assert listed[done["queue_id"]]["upscale_jobs"] == entry["upscale_jobs"]
    assert all(listed[job_id]["upscale_of"] == source
               for job_id, source in zip(entry["upscale_jobs"], entry["generated_images"]))
