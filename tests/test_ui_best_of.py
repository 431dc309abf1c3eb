"""Best of N in a real Chromium against the real stack (tiny model, the demo's CLIP): choose
"Best of 4×", the job makes 8 candidates, and the library shows each kept picture's score and
sorts by score."""
from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
from playwright.sync_api import expect

from browser import my_job_ids

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


def test_best_of_four_shows_scores_in_the_library(page, ui_stack):
    prompt = f"a green square on a white background {uuid.uuid4().hex[:8]}"
    page.goto(ui_stack.frontend.url)
    before = my_job_ids(page)
    page.fill("#text", prompt)
    page.click("label[for=num-2]")
    page.click("label[for=best-4]")
    page.fill("#seed", "9")
    page.press("#text", "Enter")
    page.wait_for_function("n => JSON.parse(localStorage.getItem('dalle-playground.my-jobs') ?? '[]').length > n",
                           arg=len(before))
    queue_id = next(job for job in my_job_ids(page) if job not in before)
    deadline = time.monotonic() + 150
    while True:
        status = requests.get(f"{ui_stack.frontend.url}/jobs/{queue_id}", timeout=10).json()
        if status["status"] == "done":
            break
        assert status["status"] in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["candidates"] == 8 and status["rank"] is True and len(status["clip_scores"]) == 2

    page.goto(f"{ui_stack.frontend.url}/library.html")
    card = page.locator(f'.job[data-queue-id="{queue_id}"]')
    scores = card.locator(".clip-score")
    expect(scores).to_have_count(2)
    expect(scores.first).to_have_text(f"Best match · {status['clip_scores'][0]:.1f}")
    expect(scores.nth(1)).to_have_text(f"Match 2 of 2 · {status['clip_scores'][1]:.1f}")
    expect(scores.first).to_have_attribute("title", re.compile(r"^CLIP score .*higher is closer"))
    page.select_option("#sort", "score")
    expect(page).to_have_url(f"{ui_stack.frontend.url}/library.html?sort=score")
    expect(page.locator(f'.job[data-queue-id="{queue_id}"] .clip-score')).to_have_count(2)

    # "Use these settings again" asks for Best of 4× again.
    card = page.locator(f'.job[data-queue-id="{queue_id}"]')
    card.get_by_role("link", name="Use these settings again").click()
    page.wait_for_url("**/advanced.html?*")
    expect(page.locator("#best-4")).to_be_checked()
    expect(page.locator("#num-2")).to_be_checked()
