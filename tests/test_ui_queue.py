"""The live queue, step by step: the test moves jobs through the real Redis queue with the
scheduler's own WorkerQueue (a worker whose backend fails on demand, which the real
tiny-model backend cannot be made to do), and the page follows without a reload."""
from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from browser import PHONE, submit_prompt
from frontend.config import Config
from frontend.threaded import serving
from playground.queue import JobQueue, eta
from playground.redis_server import RedisServer
from scheduler.worker_queue import WorkerQueue

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


STATIC = Path(__file__).resolve().parents[1] / "frontend" / "static"
STALLED_AFTER_SECS = eta.STALLED_AFTER_SECS
REQUEST_TIMEOUT_MS = int(re.search(r"REQUEST_TIMEOUT_MS = (\d+)", (STATIC / "js" / "api.js").read_text()).group(1))


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


def test_a_running_job_whose_backend_goes_quiet_shows_as_stalled(page, frontend_url, worker):
    page.goto(frontend_url)
    queue_id = submit_prompt(page, "a prompt whose backend will hang", num_images=2)
    row = page.locator(f'#queue [data-queue-id="{queue_id}"]')
    claimed = worker.claim(timeout=1, model="tiny")
    worker.progress(claimed, 64, 256)
    expect(row.locator(".badge")).to_have_text("Generating")
    expect(row).not_to_have_class(re.compile(r"\bstalled\b"))
    # Nothing more from the backend: after STALLED_AFTER_SECS the card says so.
    expect(row.locator(".badge")).to_have_text("Stalled", timeout=STALLED_AFTER_SECS * 1000 + 5000)
    expect(row.locator(".queue-meta")).to_contain_text("no progress for")
    worker.progress(claimed, 128, 256)  # it speaks again
    expect(row.locator(".badge")).to_have_text("Generating")


def test_finishing_only_once_the_last_token_is_drawn(page, frontend_url, worker):
    """Under a second left with tokens to come reads so; "finishing" means decoding."""
    worker.record_job_time(pictures=2, secs=0.5)  # the ETA of a 2-image job is below a second
    page.goto(frontend_url)
    queue_id = submit_prompt(page, "a prompt almost drawn", num_images=2)
    row = page.locator(f'#queue [data-queue-id="{queue_id}"]')
    claimed = worker.claim(timeout=1, model="tiny")
    worker.progress(claimed, 255, 256)
    expect(row.locator(".tokens")).to_have_text("255 / 256 tokens")
    expect(row.locator(".queue-meta")).to_have_text("2 images · under a second left")
    worker.progress(claimed, 256, 256)
    expect(row.locator(".tokens")).to_have_text("decoding images…")
    expect(row.locator(".queue-meta")).to_have_text("2 images · finishing")


def test_create_comes_back_when_the_server_does_not_answer(page, frontend_url):
    page.clock.install()  # a fake clock for the page (its AbortSignal.timeout too): the 20 s are skipped, not waited
    page.route("**/prompt", lambda route: None)  # the request goes out; no answer ever comes
    page.goto(frontend_url)
    page.fill("#text", "a prompt nobody answers")
    page.click("#submit")
    expect(page.locator("#submit")).to_be_disabled()
    page.clock.fast_forward(REQUEST_TIMEOUT_MS)
    expect(page.locator("#form-status")).to_contain_text(f"did not answer in {REQUEST_TIMEOUT_MS // 1000} s")
    expect(page.locator("#submit")).to_be_enabled()


def test_my_results_show_in_submission_order_however_they_finish(page, frontend_url, worker):
    page.goto(frontend_url)
    ids = [submit_prompt(page, f"prompt number {i}", num_images=2) for i in range(4)]
    claimed = {job.id: job for job in (worker.claim(timeout=1, model="tiny") for _ in ids)}
    cards = page.locator("#results .result")
    for shown, ending in ((2, ids[2:]), (4, ids[:2])):  # the two newest end first, then the two oldest
        for queue_id in ending:
            worker.finish_failed(claimed[queue_id], "stopped by the test")
        expect(cards).to_have_count(shown)
    assert [card.get_attribute("data-queue-id") for card in cards.all()] == list(reversed(ids))


def test_the_forming_pictures_and_the_queue_give_one_count(page, frontend_url, worker):
    """The preview on screen may be a little behind the job (here 144 tokens against 160): the
    page still gives one count, the job's, in both places."""
    page.goto(frontend_url)
    queue_id = submit_prompt(page, "a job drawn before my eyes", num_images=2)
    claimed = worker.claim(timeout=1, model="tiny")
    picture = io.BytesIO()
    Image.new("RGB", (128, 128), (90, 60, 240)).save(picture, format="JPEG")
    worker.preview(claimed, 144, [picture.getvalue()] * 2)
    worker.progress(claimed, 160, 256)
    expect(page.locator(f'#queue [data-queue-id="{queue_id}"] .tokens')).to_have_text("160 / 256 tokens")
    expect(page.locator(f'#results .forming[data-queue-id="{queue_id}"] .meta')).to_have_text(
        "Drawing… 160 / 256 tokens")


def test_the_queued_message_goes_when_the_job_ends(page, frontend_url, worker):
    page.goto(frontend_url)
    queue_id = submit_prompt(page, "a job that will not last", num_images=2)
    expect(page.locator("#form-status")).to_have_text("Queued. Your job is highlighted in the queue.")
    worker.finish_failed(worker.claim(timeout=1, model="tiny"), "stopped by the test")
    expect(page.locator(f'#results .result[data-queue-id="{queue_id}"]')).to_have_attribute("data-status", "failed")
    expect(page.locator("#form-status")).to_have_text("")


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_my_running_job_s_pictures_are_in_view_without_scrolling(page, frontend_url, redis_client, worker, device):
    """Six other prompts queued (a long queue panel): the pictures of my running job still
    show in the first screen, on a desktop and on a phone, right after Create."""
    if device == "phone":
        page.set_viewport_size(PHONE)
    others = JobQueue(redis_client)
    for number in range(6):
        others.submit({"text": f"somebody else's prompt {number}", "num_images": 4, "seed": 0, "model": "tiny"})
    page.goto(frontend_url)
    queue_id = submit_prompt(page, "my prompt, drawn before my eyes", num_images=4)
    claimed = None
    while claimed is None or claimed.id != queue_id:  # the others run first: fail them quickly
        if claimed is not None:
            worker.finish_failed(claimed, "not this one")
        claimed = worker.claim(timeout=1, model="tiny")
    picture = io.BytesIO()
    Image.new("RGB", (128, 128), (90, 60, 240)).save(picture, format="JPEG")
    for number in range(6):
        others.submit({"text": f"another prompt {number}", "num_images": 4, "seed": 0, "model": "tiny"})
    worker.preview(claimed, 64, [picture.getvalue()] * 4)
    previews = page.locator(f'#results .forming[data-queue-id="{queue_id}"] .previews img')
    expect(previews).to_have_count(4)
    expect(previews.first).to_be_in_viewport()  # shown where the eye is, or brought there
    if device == "desktop":
        assert page.evaluate("window.scrollY") == 0  # right under the form: nothing moved


def test_the_tab_title_follows_my_job_and_a_notification_says_when_it_ends(page, frontend_url, worker):
    page.context.grant_permissions(["notifications"])
    page.add_init_script("""
      window.notified = [];
      window.Notification = class extends window.Notification {
        constructor(title, options) { super(title, options); window.notified.push([title, options.body]); }
      };""")
    page.goto(frontend_url)
    base = page.title()
    page.check("#notify")  # opted in
    queue_id = submit_prompt(page, "a job I will not watch", num_images=2)
    expect(page).to_have_title(f"Queued · {base}")
    claimed = worker.claim(timeout=1, model="tiny")
    worker.progress(claimed, 64, 256)
    expect(page).to_have_title(f"25% · {base}")
    worker.finish_failed(claimed, "stopped by the test")
    expect(page.locator(f'#results .result[data-queue-id="{queue_id}"]')).to_have_attribute("data-status", "failed")
    expect(page).to_have_title(base)
    page.wait_for_function("window.notified.length > 0")
    assert page.evaluate("window.notified") == [["Your job failed", "a job I will not watch"]]
