"""What a new user sees first, in a real Chromium: the model in use named on the create page
with an example prompt it can draw, and a library that says why it shows nothing."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from browser import add_library_job
from frontend.config import Config
from frontend.threaded import serving
from scheduler.worker_queue import WorkerQueue

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def frontend(tmp_path, redis_url):
    with serving(Config(port=0, redis_url=redis_url, library_dir=tmp_path / "library")) as server:
        yield server.url, tmp_path / "library"


def test_the_create_page_names_the_model_and_suggests_what_it_can_draw(page, frontend, redis_client):
    url, _ = frontend
    worker = WorkerQueue(redis_client, "demo-backend", "http://127.0.0.1:9")
    assert worker.register()
    worker.heartbeat("ready", model="demo", image_codes=1161)
    page.goto(url)
    expect(page.locator("#model-in-use")).to_have_text(
        "Model: demo (a small demonstration model that draws circles, squares and triangles)")
    expect(page.locator("#text")).to_have_attribute(
        "placeholder", "a small blue square in the top left on a black background")

    other = WorkerQueue(redis_client, "mini-backend", "http://127.0.0.1:10")
    assert other.register()
    other.heartbeat("ready", model="mini", image_codes=16384)
    page.reload()
    expect(page.locator("#model-in-use")).to_have_text("Models: demo, mini")
    expect(page.locator("#text")).to_have_attribute(
        "placeholder", "a red squirrel dancing in the moonlight, photograph, golden hour")


def test_an_empty_library_and_a_filter_without_matches_say_so(page, frontend):
    url, library_dir = frontend
    page.goto(f"{url}/library.html")
    expect(page.locator("#library-empty")).to_be_visible()
    expect(page.locator("#library-empty-text")).to_have_text("The library is empty: the pictures you create appear here.")
    expect(page.get_by_role("link", name="Create images")).to_have_attribute("href", "index.html")

    add_library_job(library_dir, "a red circle")
    page.reload()
    expect(page.locator("article.job")).to_have_count(1)
    expect(page.locator("#library-empty")).to_be_hidden()
    page.fill("#filter", "squirrel")
    expect(page.locator("#library-empty-text")).to_have_text("No prompt in the library contains “squirrel”.")
    page.get_by_role("link", name="Show the whole library").click()
    expect(page.locator("article.job")).to_have_count(1)
