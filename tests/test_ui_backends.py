"""While a model loads, the prompt pages say what each backend is doing: the test publishes
backend states through the scheduler's own WorkerQueue heartbeat into the real Redis, and the
page (real frontend, real Chromium) follows without a reload."""
from __future__ import annotations

import os
import threading

import pytest
from playwright.sync_api import expect

from browser import DOCS_SCREENSHOTS, save_screenshots
from frontend.config import Config
from frontend.threaded import serving
from playground.protocol import BackendStatus, Stage
from playground.queue import JobQueue
from scheduler.worker_queue import WorkerQueue

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

POLL = {"timeout": 6000}  # the panel asks every 2 s while something is not ready
WEIGHTS = "dalle-mini/dalle-mini/flax_model.msgpack"


@pytest.fixture
def frontend_url(tmp_path, redis_url):
    with serving(Config(port=0, redis_url=redis_url, library_dir=tmp_path / "library")) as server:
        yield server.url


def downloading(done: int) -> dict:
    return {"stage": Stage.DOWNLOADING, "files": [
        {"name": "dalle-mini/dalle-mini/config.json", "bytes_done": 1200, "bytes_total": 1200},
        {"name": WEIGHTS, "bytes_done": done, "bytes_total": 1_750_000_000}]}


@pytest.mark.parametrize("page_path", ["", "advanced.html"])
def test_the_page_shows_the_download_then_hides_when_ready(page, frontend_url, redis_client, page_path, tmp_path):
    page.goto(f"{frontend_url}/{page_path}")
    panel = page.locator("#backends")
    expect(panel).to_contain_text("No scheduler is running yet", **POLL)

    worker = WorkerQueue(redis_client, "ui-test-worker", "http://backend:8080")
    assert worker.register()
    worker.heartbeat(BackendStatus.LOADING, model="mini", loading=downloading(512_000_000))
    expect(panel).to_contain_text("Model mini: downloading the model…", **POLL)
    weights = panel.locator(".download").filter(has_text=WEIGHTS)
    expect(weights.locator("progress")).to_have_attribute("value", "512000000", **POLL)
    expect(weights.locator("progress")).to_have_attribute("max", "1750000000")
    expect(weights.locator(".download-amount")).to_have_text("512 MB of 1.75 GB (29%)")
    expect(panel).to_contain_text("Prompts you send now wait in the queue.")
    if not page_path:  # for docs/docker.md's first-run walkthrough (UPDATE_SCREENSHOTS=1)
        folder = DOCS_SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
        assert all(path.stat().st_size for path in save_screenshots(page, "first-run", folder))

    worker.heartbeat(BackendStatus.LOADING, model="mini", loading=downloading(1_400_000_000))
    expect(weights.locator(".download-amount")).to_have_text("1.40 GB of 1.75 GB (80%)", **POLL)

    worker.heartbeat(BackendStatus.LOADING, model="mini", loading={"stage": Stage.COMPILING, "files": []})
    expect(panel).to_contain_text("Model mini: compiling", **POLL)
    expect(panel.locator(".download")).to_have_count(0)

    worker.heartbeat(BackendStatus.READY, model="mini")
    expect(panel).to_be_hidden(**POLL)
    worker.unregister()


def test_a_backend_that_cannot_load_shows_its_reason(page, frontend_url, redis_client):
    worker = WorkerQueue(redis_client, "ui-test-worker", "http://backend:8080")
    assert worker.register()
    reason = "no GPU found: set DALLE_DEVICE=cpu to run on the processor"
    worker.heartbeat(BackendStatus.ERROR, model="mega", backend_error=reason)
    page.goto(frontend_url)
    alert = page.locator("#backends").get_by_role("alert")
    expect(alert).to_have_text(f"Model mega failed to load: {reason}", **POLL)
    worker.unregister()


def test_the_model_choice_appears_when_backends_serve_two_models(page, frontend_url, redis_client):
    """One model: no choice, the server routes. Two: a choice, the server's default first,
    and the job runs on the chosen one."""
    beating: dict[WorkerQueue, str] = {}
    done = threading.Event()

    def heartbeats():  # as the scheduler's workers do, every second
        while not done.wait(1.0):
            for worker, model in list(beating.items()):
                worker.heartbeat(BackendStatus.READY, model=model)

    def serve(name: str, model: str) -> None:
        worker = WorkerQueue(redis_client, name, f"http://{name}:8080")
        assert worker.register() and worker.heartbeat(BackendStatus.READY, model=model)
        beating[worker] = model

    threading.Thread(target=heartbeats, daemon=True).start()
    try:
        serve("gpu0", "mini")
        with page.expect_response(lambda response: response.url.endswith("/health")):
            page.goto(frontend_url)  # both start hidden: look once the health has answered
        expect(page.locator("#model option")).to_have_text(["mini"])
        expect(page.locator("#backends")).to_be_hidden()
        expect(page.locator("#model-field")).to_be_hidden()

        serve("gpu1", "mega")
        page.reload()
        expect(page.locator("#model-field")).to_be_visible(**POLL)
        expect(page.locator("#model option")).to_have_text(["mega", "mini"])
        page.select_option("#model", "mini")
        page.fill("#text", "a small red circle")
        page.click("#submit")
        expect(page.locator("#form-status")).to_have_text("Queued. Your job is highlighted in the queue.")
        [job] = JobQueue(redis_client).unfinished()
        assert job.model == "mini"

        # A library link names its picture's model before the page knows the models served.
        page.goto(f"{frontend_url}/advanced.html?text=again&model=mini")
        expect(page.locator("#model-field")).to_be_visible(**POLL)
        expect(page.locator("#model")).to_have_value("mini")
    finally:
        done.set()
