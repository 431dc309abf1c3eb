"""Screenshots of every page, light and dark, desktop and phone, taken from the real stack
with the default (demo) model while a job is generating: <page>-<scheme>-<device>.png in a
temporary folder, or in docs/screenshots with UPDATE_SCREENSHOTS=1 (so that a test run
leaves the tree alone)."""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from browser import DOCS_SCREENSHOTS, save_screenshots, submit_prompt
from testkit.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory, model_cache_dir):
    with Stack(tmp_path_factory.mktemp("demo-stack"), model_cache_dir, model="demo",
               warm_up_batch_sizes="4,8") as running:
        yield running


@pytest.fixture
def screenshot_dir(tmp_path):
    return DOCS_SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "screenshots"


def test_screenshots_of_every_page(page, demo_stack, screenshot_dir):
    page.goto(demo_stack.frontend.url)
    submit_prompt(page, "a yellow triangle above a purple circle on a gray background", num_images=4, seed=7)
    finished = submit_prompt(page, "a red circle on a black background", num_images=4, seed=2024)
    expect(page.locator(f'#results [data-queue-id="{finished}"]')).to_have_attribute(
        "data-status", "done", timeout=150_000)
    # Variations of its first picture (top half kept), so the library shows a job's lineage.
    source = page.request.get(f"{demo_stack.frontend.url}/jobs/{finished}").json()["images"][0]
    variation = page.request.post(f"{demo_stack.frontend.url}/prompt", data={
        "text": "a blue square at the bottom", "num_images": 4, "seed": 99, "init_image": source,
        "keep_rows": 8, "keep_previews": True}).json()["queue_id"]
    page.wait_for_function("async ([url]) => (await (await fetch(url)).json()).status === 'done'",
                           arg=[f"{demo_stack.frontend.url}/jobs/{variation}"], timeout=150_000, polling=500)
    # Four more, so that one is generating and others wait while the pictures are taken: 8
    # images each, as a small model can finish 4 before the page has shown any progress.
    unfinished = [submit_prompt(page, text, num_images=8) for text in (
        "a small blue square in the top left", "a large green triangle on a white background",
        "an orange circle to the left of a blue square", "a yellow square at the bottom")]
    # The running job's pictures forming (live previews) in its card and under "Your images".
    page.wait_for_function("() => document.querySelector('#queue .queue-item.running progress')?.value > 0"
                           " && document.querySelector('#queue .queue-item.running .previews img')?.naturalWidth > 0"
                           " && document.querySelector('#results .forming img')?.naturalWidth > 0",
                           timeout=60_000, polling=50)
    page.fill("#text", "")
    saved = save_screenshots(page, "create", screenshot_dir)

    page.goto(f"{demo_stack.frontend.url}/advanced.html?text=a+red+circle+on+a+black+background&num_images=6&seed=7"
              f"&gen_top_k=64&gen_top_p=0.9&temperature=0.8&condition_scale=5&init_image={source}&keep_rows=6")
    page.wait_for_function("() => document.querySelector('#start-picker .row-image')?.naturalWidth > 0")
    saved += save_screenshots(page, "advanced", screenshot_dir)

    page.goto(f"{demo_stack.frontend.url}/library.html")
    entry = page.locator(f'article.job[data-queue-id="{finished}"]')
    expect(entry).to_be_visible()
    page.wait_for_function("() => [...document.querySelectorAll('.thumb img')].slice(0, 4)"
                           ".every(img => img.complete && img.naturalWidth > 0)")

    expect(page.locator(f'article.job[data-queue-id="{variation}"] .lineage')).to_contain_text("8 of 16 rows kept")
    expect(page.locator(f'article.job[data-queue-id="{variation}"] a.reveal')).to_have_count(4)
    saved += save_screenshots(page, "library", screenshot_dir)

    entry.locator(".thumb").first.click()
    expect(page.locator("dialog.viewer[open] img")).to_be_visible()
    page.screenshot(path=str(screenshot_dir / "viewer-light-desktop.png"))
    page.locator("dialog.viewer[open]").get_by_role("button", name="Variations").click()
    expect(page.locator("dialog.viewer[open] .row-line")).to_be_visible()
    page.screenshot(path=str(screenshot_dir / "viewer-variations-light-desktop.png"))
    page.keyboard.press("Escape")

    for queue_id in unfinished:
        page.request.post(f"{demo_stack.frontend.url}/jobs/{queue_id}/cancel")
    assert len(saved) == 12 and all(path.stat().st_size > 10_000 for path in saved)
