"""Headless Chromium for the UI tests, driven by Playwright (Python).

Playwright cannot download its own browsers here, so it drives the distribution's
`chromium` package (`apt-get install chromium`); CHROMIUM_PATH overrides where it is.
Each test gets a fresh browser context: its own localStorage, cookies and cache, so
"my jobs" never leak from one test into the next. Playwright also gives every launch a
fresh temporary user-data-dir.

The fixtures are registered for every test module in conftest.py.
"""
from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from playground.library import LibraryStore
from testkit.stack import Stack

# How long a page action or an assertion waits for the page (a busy machine is slow).
UI_TIMEOUT_MS = 15_000

DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    if not chromium_path():
        message = "no chromium found: apt-get install chromium, or set CHROMIUM_PATH"
        if os.environ.get("CI") == "true":  # CI must run the browser tests, not pass without them
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait as long as actions do: their 5 s default fails on a busy machine.
    expect.set_options(timeout=UI_TIMEOUT_MS)

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory, model_cache_dir):
    """The real playground (Redis, backend with the tiny model, scheduler, frontend), one
    for all UI test modules: starting it takes most of a minute. Tests share its queue and
    library, so each looks only at its own jobs and cancels what it leaves unfinished."""
    with Stack(tmp_path_factory.mktemp("ui-stack"), model_cache_dir) as running:
        yield running


@pytest.fixture
def page(browser):
    """A page in a fresh context. Fails the test on an uncaught script error or a
    Content-Security-Policy violation, which would otherwise pass unnoticed."""
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    context.set_default_timeout(UI_TIMEOUT_MS)
    new_page = context.new_page()
    problems: list[str] = []
    new_page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    new_page.on("console", lambda message: problems.append(f"console: {message.text}")
                if message.type == "error" and "Content Security Policy" in message.text else None)
    yield new_page
    context.close()
    assert not problems, problems


def save_screenshots(page, name: str, folder: Path) -> list[Path]:
    """The current page in light and dark, at desktop and phone width:
    <folder>/<name>-<light|dark>-<desktop|phone>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for device, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            path = folder / f"{name}-{scheme}-{device}.png"
            if device == "phone":  # a phone screen shows little: take up to three of them
                height = min(page.evaluate("document.documentElement.scrollHeight"), 3 * PHONE["height"])
                page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, **PHONE, "height": height},
                                animations="disabled")
            else:
                page.screenshot(path=str(path), animations="disabled")
            saved.append(path)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(DESKTOP)
    return saved


# -- helpers for the UI tests ------------------------------------------------------------

def submit_prompt(page, text: str, num_images: int = 2, seed: int = 0) -> str:
    """Fill the prompt form of the open page, press Enter, return the new job's queue_id."""
    before = my_job_ids(page)
    page.fill("#text", text)
    page.click(f"label[for=num-{num_images}]")
    page.fill("#seed", str(seed))
    page.press("#text", "Enter")
    page.wait_for_function("n => JSON.parse(localStorage.getItem('dalle-playground.my-jobs') ?? '[]').length > n",
                           arg=len(before))
    return next(queue_id for queue_id in my_job_ids(page) if queue_id not in before)


def my_job_ids(page) -> list[str]:
    """The queue_ids this browser remembers as its own, newest first."""
    return page.evaluate("JSON.parse(localStorage.getItem('dalle-playground.my-jobs') ?? '[]').map(j => j.queue_id)")


def solid_png(rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def add_library_job(library_dir: Path, text: str, *, num_images: int = 2, seed: int = 1,
                    created: float | None = None) -> dict:
    """A finished job written straight into the library, as the scheduler would."""
    entry = {
        "queue_id": str(uuid.uuid4()), "text_prompt": text, "creation_unixtime": created or time.time(),
        "process_time_secs": 3.2 * num_images, "seed": seed, "num_images": num_images,
        "gen_top_k": 40, "gen_top_p": 0.9, "temperature": 0.8, "condition_scale": 7.5, "model": "tiny",
    }
    colours = [(91, 61, 245), (255, 111, 168), (31, 138, 91), (240, 180, 40)]
    return LibraryStore(library_dir).add_job(entry, [solid_png(colours[i % 4]) for i in range(num_images)])
