"""Continuations in a real Chromium on the real stack (tiny model): variations from the
library's full-size view (row slider over the picture), "Use as start", an upload (chosen and
dropped) on the advanced page, and "recall" of a PNG of ours dropped on a prompt page."""
from __future__ import annotations

import base64
import io
import json
import time

import pytest
import requests
from PIL import Image
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

SETTINGS = {"text": "a lighthouse at dusk, continued", "num_images": 2, "seed": 9876,
            "gen_top_k": 33, "gen_top_p": 0.95, "temperature": 0.9, "condition_scale": 4.5}


def wait_done(url: str, queue_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/jobs/{queue_id}", timeout=10).json()
        if status["status"] not in ("queued", "running"):
            assert status["status"] == "done", status
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {queue_id} did not finish")


@pytest.fixture(scope="module")
def fresh(ui_stack):
    response = requests.post(ui_stack.frontend.url + "/prompt", json=SETTINGS, timeout=10)
    return wait_done(ui_stack.frontend.url, response.json()["queue_id"])


def prompt_bodies(page) -> list[dict]:
    sent = []
    page.on("request", lambda request: sent.append(json.loads(request.post_data))
            if request.url.endswith("/prompt") and request.method == "POST" else None)
    return sent


def set_slider(locator, value: int) -> None:
    locator.evaluate("(slider, value) => { slider.value = value; slider.dispatchEvent(new Event('input')); }", value)


def drop_file(page, selector: str, data: bytes, name: str, mime: str) -> None:
    """A file dropped on `selector`, as a user's drag from the desktop ends."""
    transfer = page.evaluate_handle(
        """([b64, name, type]) => {
             const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
             const transfer = new DataTransfer();
             transfer.items.add(new File([bytes], name, { type }));
             return transfer;
           }""", [base64.b64encode(data).decode(), name, mime])
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_variations_from_the_library_viewer(page, ui_stack, fresh):
    source = fresh["images"][0]
    page.goto(f"{ui_stack.frontend.url}/library.html")
    card = page.locator(f'article.job[data-queue-id="{fresh["queue_id"]}"]')
    expect(card.locator(".lineage")).to_have_count(0)  # a fresh job started from nothing
    assert "null" not in card.inner_text() and "false" not in card.inner_text()
    card.locator(".thumb").first.click()
    viewer = page.locator("dialog.viewer[open]")
    expect(viewer.get_by_role("link", name="Use as start")).to_have_attribute("href", f"advanced.html?{_query(source)}")
    viewer.get_by_role("button", name="Variations").click()
    frame = viewer.locator(".row-frame")
    expect(frame).to_have_attribute("data-keep-rows", "8")
    set_slider(viewer.locator(".row-slider"), 5)
    expect(viewer.locator(".row-control")).to_contain_text("Keep the top 5 of 16 rows")
    assert viewer.locator(".row-line").evaluate("line => line.style.top") == "31.25%"
    sent = prompt_bodies(page)
    viewer.get_by_role("button", name="Make variations").click()
    expect(viewer.locator(".viewer-status")).to_contain_text("Queued")
    body = sent[0]
    assert (body["init_image"], body["keep_rows"], body["extend"], body["seed"]) == (source, 5, None, 0)
    assert {k: body[k] for k in ("text", "num_images", "gen_top_k", "temperature")} == {
        k: SETTINGS[k] for k in ("text", "num_images", "gen_top_k", "temperature")}
    assert body["model"] == fresh["result"]["model"] == "tiny"  # a variation runs on its picture's model

    queue_id = page.evaluate("JSON.parse(localStorage.getItem('dalle-playground.my-jobs'))[0].queue_id")
    done = wait_done(ui_stack.frontend.url, queue_id)
    page.reload()
    new_card = page.locator(f'article.job[data-queue-id="{queue_id}"]')
    expect(new_card.locator(".lineage")).to_contain_text("5 of 16 rows kept")
    expect(new_card.locator(".lineage a")).to_have_attribute("href", source)
    kept = [_codes(c)[:80] for c in done["codes"]]
    assert kept[0] == kept[1] == _codes(fresh["codes"][0])[:80]

    # "Extend" under each picture: the slider then keeps the bottom rows.
    new_card.get_by_role("button", name="Extend").first.click()
    expect(viewer.locator(".row-control")).to_contain_text("Continue from the bottom 8 rows")
    viewer.get_by_role("button", name="Close").click()


def test_use_as_start_then_upload_and_drop_on_the_advanced_page(page, ui_stack, fresh):
    source = fresh["images"][1]
    page.goto(f"{ui_stack.frontend.url}/advanced.html?{_query(source)}")
    expect(page.locator("#text")).to_have_value(SETTINGS["text"])
    expect(page.locator("#start-picker .row-image")).to_have_attribute("src", source)
    expect(page.locator("#start-source")).to_have_text("From the library")

    # An upload replaces it: chosen with the file input, drawn square with the slider over it.
    picture = io.BytesIO()
    Image.new("RGB", (300, 200), (30, 160, 90)).save(picture, "JPEG")
    page.set_input_files("#start-file", files=[{"name": "field.jpg", "mimeType": "image/jpeg",
                                                "buffer": picture.getvalue()}])
    expect(page.locator("#start-source")).to_have_text("Uploaded: field.jpg")
    expect(page.locator("#start-picker .row-frame.square")).to_be_visible()
    set_slider(page.locator("#start-picker .row-slider"), 12)
    page.check("#extend")
    expect(page.locator("#start-picker .row-control")).to_contain_text("Continue from the bottom 12 rows")
    sent = prompt_bodies(page)
    page.click("#submit")
    expect(page.locator("#form-status")).to_contain_text("Queued")
    body = sent[0]
    assert base64.b64decode(body["init_image_data"]) == picture.getvalue()
    assert (body["keep_rows"], body["extend"], "init_image" in body) == (12, "down", False)
    queue_id = page.evaluate("JSON.parse(localStorage.getItem('dalle-playground.my-jobs'))[0].queue_id")
    done = wait_done(ui_stack.frontend.url, queue_id)
    assert done["result"]["init_source"] == "encoded" and len(done["result"]["extended_images"]) == 2

    # Dropped on the start field: a PNG that is not ours becomes the start picture.
    plain = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 20, 20)).save(plain, "PNG")
    drop_file(page, "#start-drop", plain.getvalue(), "red.png", "image/png")
    expect(page.locator("#start-source")).to_have_text("Uploaded: red.png")
    drop_file(page, "#start-drop", b"GIF89a", "moving.gif", "image/gif")
    expect(page.locator("#start-error")).to_have_text("Choose a PNG, JPEG or WebP picture.")
    drop_file(page, "#start-drop", b"\x89PNG\r\n\x1a\n but no picture after it", "fake.png", "image/png")
    expect(page.locator("#start-error")).to_have_text(
        "fake.png is not a picture this browser can open (a damaged or mislabelled file).")
    expect(page.locator("#start-source")).to_have_text("Uploaded: red.png")  # the last good one stays
    page.click("#start-remove")
    expect(page.locator("#start-picker .row-frame")).to_have_count(0)
    expect(page.locator("#start-error")).to_have_text("")  # no error left under an empty field
    sent.clear()
    page.fill("#text", "no start any more")
    page.click("#submit")
    expect(page.locator("#form-status")).to_contain_text("Queued")
    assert not {"init_image", "init_image_data", "keep_rows"} & set(sent[0])


@pytest.mark.parametrize("page_name", ["index.html", "advanced.html"])
def test_dropping_a_png_of_ours_restores_its_settings(page, ui_stack, fresh, page_name):
    png = requests.get(f"{ui_stack.frontend.url}/{fresh['images'][1]}", timeout=10).content
    page.goto(f"{ui_stack.frontend.url}/{page_name}")
    drop_file(page, "main", png, "ours.png", "image/png")
    expect(page.locator("#form-status")).to_have_text("Settings restored from ours.png.")
    expect(page.locator("#text")).to_have_value(SETTINGS["text"])
    expect(page.locator("#seed")).to_have_value(str(SETTINGS["seed"]))
    if page_name == "advanced.html":
        for field in ("gen_top_k", "gen_top_p", "temperature", "condition_scale"):
            assert float(page.input_value(f"#{field}")) == SETTINGS[field]
        expect(page.locator("#start-picker .row-frame")).to_have_count(0)  # recalled, not a start
    if page_name == "index.html":
        # A prompt beyond Latin-1 travels in an iTXt chunk.
        from backend.png import encode_png

        unicode_png = encode_png(Image.new("RGB", (8, 8)), {"prompt": "Ein Eichhörnchen 🐿️ 松鼠", "seed": "77",
                                                             "software": "dalle-playground"})
        drop_file(page, "main", unicode_png, "squirrel.png", "image/png")
        expect(page.locator("#text")).to_have_value("Ein Eichhörnchen 🐿️ 松鼠")
        expect(page.locator("#seed")).to_have_value("77")
        # A picture from elsewhere has no settings to restore.
        other = io.BytesIO()
        Image.new("RGB", (8, 8)).save(other, "PNG")
        drop_file(page, "main", other.getvalue(), "other.png", "image/png")
        expect(page.locator("#form-status")).to_contain_text("not a picture made here")
        # A prompt typed here stays: the drop restores the rest, and says so.
        page.fill("#text", "my own words")
        drop_file(page, "main", png, "ours.png", "image/png")
        expect(page.locator("#form-status")).to_have_text(
            f"Settings restored from ours.png; your prompt was kept (the picture's: “{SETTINGS['text']}”).")
        expect(page.locator("#text")).to_have_value("my own words")
        expect(page.locator("#seed")).to_have_value(str(SETTINGS["seed"]))


def _query(source: str) -> str:
    from urllib.parse import urlencode

    values = {"text": SETTINGS["text"], "num_images": 2, "gen_top_k": 33, "gen_top_p": 0.95, "temperature": 0.9,
              "condition_scale": 4.5, "model": "tiny", "seed": 9876, "init_image": source, "keep_rows": 8}
    return urlencode(values)


def _codes(packed: str) -> list[int]:
    from playground import pictures

    return pictures.unpack_codes(packed)
