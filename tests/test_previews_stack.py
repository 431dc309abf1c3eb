"""Live previews through the whole stack (real Redis, backend with the demo model, scheduler,
frontend and Chromium): a running job shows several distinct previews, each a JPEG of the
stated size, through GET /jobs/<id>/preview; when it ends they are gone, from the API and
from Redis; a job that keeps them has a reveal per image in the library. The backend pauses after each chunk of tokens (a test-only setting), so the
small model runs long enough to show several."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import redis
import requests
from PIL import Image
from playwright.sync_api import expect

from browser import submit_prompt
from testkit.stack import Stack

pytestmark = pytest.mark.timeout(300)
CHUNK_DELAY_SECS = "0.15"  # 32 chunks: about 5 s per job


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_cache_dir):
    with Stack(tmp_path_factory.mktemp("previews-stack"), model_cache_dir, model="demo", warm_up_batch_sizes="2",
               backend_env={"BACKEND_TEST_CHUNK_DELAY_SECS": CHUNK_DELAY_SECS}) as running:
        yield running


def test_a_running_job_shows_distinct_previews_that_go_when_it_ends(stack):
    url = stack.frontend.url
    response = requests.post(f"{url}/prompt", json={"text": "a blue square", "num_images": 2, "seed": 11}, timeout=30)
    job_id = response.json()["queue_id"]
    seen: dict[int, list[bytes]] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if status["status"] not in ("queued", "running"):
            break
        tokens = status["preview_tokens"]
        if tokens is not None and tokens not in seen:
            pictures = [requests.get(f"{url}/jobs/{job_id}/preview", params={"image": i}, timeout=10) for i in (0, 1)]
            if all(p.status_code == 200 for p in pictures):  # else it ended just now
                seen[int(pictures[0].headers["X-Preview-Tokens"])] = [p.content for p in pictures]
        time.sleep(0.1)
    assert status["status"] == "done", (status, stack.logs_tail())
    assert len(seen) >= 2, (seen.keys(), stack.logs_tail())
    assert len({tuple(pictures) for pictures in seen.values()}) == len(seen)  # each one shows more
    for tokens, pictures in seen.items():
        assert 0 < tokens < 256
        for content in pictures:
            picture = Image.open(io.BytesIO(content))
            assert picture.format == "JPEG" and picture.size == (128, 128)

    assert requests.get(f"{url}/jobs/{job_id}/preview", timeout=10).status_code == 404
    assert requests.get(f"{url}/jobs/{job_id}", timeout=10).json()["preview_tokens"] is None
    assert redis.Redis.from_url(stack.redis.url).keys("*preview*") == []


@pytest.mark.browser
def test_the_running_jobs_card_shows_its_pictures_forming(stack, page):
    page.goto(stack.frontend.url)
    queue_id = submit_prompt(page, "a red circle on a black background", num_images=2, seed=5)
    row = page.locator(f'#queue [data-queue-id="{queue_id}"]')
    forming = page.locator(f'#results .forming[data-queue-id="{queue_id}"]')
    expect(row.locator(".previews img")).to_have_count(2, timeout=60_000)
    # Seen while the job runs: its row is still in the queue, marked running.
    assert row.get_attribute("data-status") == "running"
    assert row.locator(".previews img").first.evaluate("img => img.complete && img.naturalWidth") == 128
    expect(forming.locator("img")).to_have_count(2)
    first = int(row.locator(".previews").get_attribute("data-tokens"))
    expect(row.locator(".previews")).not_to_have_attribute("data-tokens", str(first), timeout=30_000)
    # Then the finished pictures take the forming card's place.
    done = page.locator(f'#results .result[data-queue-id="{queue_id}"][data-status="done"]')
    expect(done.locator(".thumbs img")).to_have_count(2, timeout=60_000)
    expect(forming).to_have_count(0)
    expect(row).to_have_count(0)


def test_a_job_that_keeps_its_previews_has_a_reveal_per_image(stack):
    url = stack.frontend.url
    body = {"text": "a green triangle", "num_images": 2, "seed": 12, "keep_previews": True}
    job_id = requests.post(f"{url}/prompt", json=body, timeout=30).json()["queue_id"]
    deadline = time.monotonic() + 120
    while (status := requests.get(f"{url}/jobs/{job_id}", timeout=10).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, stack.logs_tail()
        time.sleep(0.2)
    entry = status["result"]
    assert status["status"] == "done" and entry["keep_previews"] is True
    assert len(entry["reveal_images"]) == 2
    # The option and the reveals are in the job's own folder.
    on_disk = json.loads((stack.library_dir / job_id / "job.json").read_text())
    assert on_disk["keep_previews"] is True and on_disk["reveal_images"] == entry["reveal_images"]
    for path, png in zip(entry["reveal_images"], entry["generated_images"]):
        response = requests.get(f"{url}/{path}", timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/webp"
        reveal = Image.open(io.BytesIO(response.content))
        assert reveal.format == "WEBP" and reveal.size == (128, 128)
        assert reveal.n_frames >= 3  # at least two previews, then the finished picture
        reveal.seek(reveal.n_frames - 1)
        final = Image.open(io.BytesIO(requests.get(f"{url}/{png}", timeout=10).content)).convert("RGB")
        difference = np.abs(np.asarray(reveal.convert("RGB"), float) - np.asarray(final.resize((128, 128)), float))
        assert difference.mean() < 12  # the last frame is the finished picture

    # Without the option: no reveal.
    plain = requests.post(f"{url}/prompt", json={**body, "keep_previews": False}, timeout=30).json()["queue_id"]
    while (status := requests.get(f"{url}/jobs/{plain}", timeout=10).json())["status"] in ("queued", "running"):
        time.sleep(0.2)
    assert "reveal_images" not in status["result"] and "keep_previews" not in status["result"]
    assert not list((stack.library_dir / plain).glob("*.webp"))
