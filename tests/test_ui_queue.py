"""The live queue, step by step: the test moves jobs through the real Redis queue with the
scheduler's own WorkerQueue (a worker whose backend fails on demand, which the real
tiny-model backend cannot be made to do), and the page follows without a reload."""
from __future__ import annotations

import re
import threading

import pytest
from playwright.sync_api import expect

from browser import submit_prompt
from frontend.config import Config
from frontend.threaded import serving
from playground.queue import JobQueue
from playground.redis_server import RedisServer
from scheduler.worker_queue import WorkerQueue

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def frontend_url(tmp_path, redis_url):
    with serving(Config(port=0, redis_url=redis_url, library_dir=tmp_path / "library")) as server:
        yield server.url


@pytest.fixture
def worker(redis_client):
    """A live worker of a ready backend serving tiny: it beats every second, as the scheduler's
    do, so its jobs never look unserved, until the test ends or calls `worker.leave()`."""
    queue = WorkerQueue(redis_client, "ui-test-worker", "http://127.0.0.1:9")
    assert queue.register()
    stop = threading.Event()

    def beat():
        while queue.heartbeat("ready", model="tiny") and not stop.wait(1):
            pass
    beating = threading.Thread(target=beat, daemon=True)
    beating.start()

    def leave():
        stop.set()
        beating.join()
        queue.unregister()
    queue.leave = leave
    yield queue
    leave()


def test_progress_then_a_failure_with_its_reason(page, frontend_url, redis_client, worker):
    page.goto(frontend_url)
    queue_id = submit_prompt(page, "a prompt the backend will choke on", num_images=2)
    row = page.locator(f'#queue [data-queue-id="{queue_id}"]')
    expect(row).to_have_attribute("data-status", "queued")
    expect(row.locator(".badge")).to_have_text("Next")

    # Someone else's job, queued behind mine: listed, not highlighted, no cancel button.
    other = JobQueue(redis_client).submit({"text": "somebody else's prompt", "num_images": 4, "seed": 0, "model": "tiny"})
    other_row = page.locator(f'#queue [data-queue-id="{other.id}"]')
    expect(other_row.locator(".badge")).to_have_text("Position 2")
    expect(other_row).not_to_have_class(re.compile(r"\bmine\b"))
    expect(other_row.get_by_role("button", name="Cancel")).to_have_count(0)

    claimed = worker.claim(timeout=1, model="tiny")
    assert claimed.id == queue_id
    expect(row).to_have_attribute("data-status", "running")
    expect(row.locator(".badge")).to_have_text("Generating")
    worker.progress(claimed, 64, 256)
    expect(row.locator("progress")).to_have_attribute("value", "64")
    expect(row.locator(".tokens")).to_have_text("64 / 256 tokens")
    worker.progress(claimed, 192, 256)
    expect(row.locator("progress")).to_have_attribute("value", "192")
    expect(row.locator("progress")).to_have_attribute("max", "256")
    expect(other_row.locator(".badge")).to_have_text("Next")

    worker.finish_failed(claimed, "the backend ran out of memory")
    expect(row).to_have_count(0)
    failed = page.locator(f'#results .result[data-queue-id="{queue_id}"]')
    expect(failed).to_have_attribute("data-status", "failed")
    expect(failed.get_by_role("alert")).to_have_text("Failed: the backend ran out of memory")
    expect(page.locator("#results-status")).to_contain_text("failed")

    # A reload shows the finished job of mine again, from localStorage and GET /jobs/<id>.
    page.reload()
    expect(failed.get_by_role("alert")).to_have_text("Failed: the backend ran out of memory")


def test_polling_pauses_while_the_tab_is_hidden(page, frontend_url):
    """The queue's poll and the servers' health poll (every 2 s here: no scheduler yet)."""
    def is_poll(request) -> bool:
        return request.url.endswith(("/queue_status", "/health"))

    polls = []
    page.on("request", lambda request: polls.append(request.url) if is_poll(request) else None)
    page.goto(frontend_url)
    submit_prompt(page, "a job that keeps the page polling every second", num_images=2)
    for _ in range(3):  # a job of mine is waiting: the queue is asked every second
        with page.expect_request(lambda request: request.url.endswith("/queue_status"), timeout=1500):
            pass

    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(300)  # a poll already on its way may still land
    hidden_count = len(polls)
    page.wait_for_timeout(2500)
    assert len(polls) == hidden_count, polls[hidden_count:]

    with page.expect_request(lambda request: request.url.endswith("/queue_status"), timeout=1000):
        page.evaluate("""() => {
            Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
            document.dispatchEvent(new Event('visibilitychange'));
        }""")


def test_a_cancel_that_fails_says_so_in_its_row(page, tmp_path):
    redis = RedisServer(tmp_path / "redis").start()  # its own, to stop
    try:
        with serving(Config(port=0, redis_url=redis.url, library_dir=tmp_path / "library")) as server:
            page.goto(server.url)
            queue_id = submit_prompt(page, "a job whose cancel will not get through", num_images=2)
            row = page.locator(f'#queue [data-queue-id="{queue_id}"]')
            expect(row.get_by_role("button", name="Cancel")).to_be_visible()
            redis.stop()
            row.get_by_role("button", name="Cancel").click()
            refusal = row.get_by_role("status")
            expect(refusal).to_contain_text("Could not cancel: ")
            expect(row.get_by_role("button", name="Cancel")).to_be_enabled()
            # The polls that fail meanwhile say so in their own place and leave it there.
            expect(page.locator("#connection")).to_contain_text("Trying again")
            expect(refusal).to_contain_text("Could not cancel: ")
    finally:
        redis.stop()


def test_a_job_another_tab_submitted_becomes_mine_here(page, frontend_url, redis_client, worker):
    page.goto(frontend_url)
    job = JobQueue(redis_client).submit({"text": "sent from my other tab", "num_images": 2, "seed": 0, "model": "tiny"})
    row = page.locator(f'#queue [data-queue-id="{job.id}"]')
    expect(row.locator(".badge")).to_have_text("Next", timeout=10_000)
    expect(row).not_to_have_class(re.compile(r"\bmine\b"))
    # What the other tab's submit leaves in this browser's storage (myjobs.js).
    page.evaluate("""id => localStorage.setItem('dalle-playground.my-jobs',
                         JSON.stringify([{ queue_id: id, text: 'sent from my other tab' }]))""", job.id)
    expect(row).to_have_class(re.compile(r"\bmine\b"), timeout=10_000)
    expect(row.locator(".mine-tag")).to_be_visible()
    expect(row.get_by_role("button", name="Cancel")).to_be_visible()


def test_a_job_no_backend_can_run_says_so_and_any_browser_can_cancel_it(page, frontend_url, redis_client, worker):
    """Someone else's job for a model no live backend serves: shown as such, with a Cancel
    button in this browser too; when the last backend leaves, the other waiting job says so."""
    queue = JobQueue(redis_client)
    stranded = queue.submit({"text": "for a model nobody serves", "num_images": 2, "seed": 0, "model": "mega"})
    waiting = queue.submit({"text": "for the served model", "num_images": 2, "seed": 0, "model": "tiny"})
    page.goto(frontend_url)
    stranded_row = page.locator(f'#queue [data-queue-id="{stranded.id}"]')
    waiting_row = page.locator(f'#queue [data-queue-id="{waiting.id}"]')
    expect(stranded_row.locator(".badge")).to_have_text("No backend")
    expect(stranded_row.locator(".unserved-note")).to_have_text(
        "No running backend serves the model mega. This prompt waits until one does; cancel it if it should not.")
    expect(stranded_row).not_to_have_class(re.compile(r"\bmine\b"))
    expect(waiting_row.locator(".badge")).to_have_text("Next")
    expect(waiting_row.locator(".unserved-note")).to_be_hidden()
    expect(waiting_row.get_by_role("button", name="Cancel")).to_have_count(0)  # served, and not mine

    worker.leave()  # its only backend leaves; seen at the next poll (5 s apart for others' jobs)
    expect(waiting_row.locator(".badge")).to_have_text("No backend", timeout=15_000)
    expect(waiting_row.locator(".unserved-note")).to_have_text(re.compile(r"^No running backend serves the model tiny\."))

    stranded_row.get_by_role("button", name="Cancel").click()
    expect(stranded_row).to_have_count(0)
    assert queue.get(stranded.id).status == "cancelled"
    waiting_row.get_by_role("button", name="Cancel").click()
    expect(waiting_row).to_have_count(0)
    assert queue.get(waiting.id).status == "cancelled"
