"""A grid sweep made from the advanced page in a real Chromium against the running stack: the
Grid fields' checks before sending, the body sent, then the job's labelled sheet and its cells."""
from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def test_a_grid_made_from_the_advanced_page_shows_its_sheet_and_cells(page, ui_stack):
    prompt = f"a red squirrel in the snow {uuid.uuid4().hex[:8]}"
    page.goto(f"{ui_stack.frontend.url}/advanced.html")
    sent = []
    page.on("request", lambda request: sent.append(request) if request.url.endswith("/prompt") else None)
    page.fill("#text", prompt)
    page.select_option("#grid_x_field", "temperature")
    page.fill("#grid_x_values", "0.5, 0")
    page.click("#submit")
    expect(page.locator("#grid_x_values-error")).to_have_text("Value 2 (“0”): Temperature must be above 0.")
    expect(page.locator("#grid_x_values")).to_be_focused()
    page.fill("#grid_x_values", "0.5, 1.5")
    page.select_option("#grid_y_field", "temperature")
    page.fill("#grid_y_values", "1, 2")
    page.click("#submit")
    expect(page.locator("#grid_y_values-error")).to_have_text("Choose another field than X.")
    page.select_option("#grid_y_field", "seed")
    page.fill("#grid_y_values", "1, 2, 3, 4, 5, 6, 7, 8, 9")
    page.click("#submit")
    expect(page.locator("#grid_y_values-error")).to_have_text("That makes 18 pictures; at most 16.")
    assert sent == []

    page.fill("#grid_y_values", "7, 8")
    with page.expect_response(lambda response: response.url.endswith("/prompt")) as answer:
        page.click("#submit")
    assert answer.value.status == 200
    body = sent[-1].post_data_json
    assert body["grid"] == {"x": {"field": "temperature", "values": [0.5, 1.5]},
                            "y": {"field": "seed", "values": [7, 8]}}
    assert "num_images" not in body and "candidates" not in body
    expect(page.locator("#grid_x_values-error")).to_be_empty()

    queue_id = answer.value.json()["queue_id"]
    card = page.locator(f'#results .result[data-queue-id="{queue_id}"]')
    expect(card).to_have_attribute("data-status", "done", timeout=240_000)
    sheet = card.locator(".grid-sheet img")
    expect(sheet).to_have_attribute("alt", f"Grid sheet of {prompt}")
    page.wait_for_function("img => img.complete && img.naturalWidth > 2 * 256", arg=sheet.element_handle())
    expect(card.locator(".thumb img")).to_have_count(4)
    # The library card shows the sheet too.
    library = page.context.new_page()
    library.goto(f"{ui_stack.frontend.url}/library.html")
    job = library.locator(f'.job[data-queue-id="{queue_id}"]')
    expect(job.locator(".grid-sheet img")).to_have_attribute("alt", f"Grid sheet of {prompt}")
    # "Use these settings again" fills in the same grid; sent, it asks for the same job.
    job.get_by_role("link", name="Use these settings again").click()
    library.wait_for_url("**/advanced.html?*")
    expect(library.locator("#grid_x_field")).to_have_value("temperature")
    expect(library.locator("#grid_x_values")).to_have_value("0.5, 1.5")
    expect(library.locator("#grid_y_field")).to_have_value("seed")
    expect(library.locator("#grid_y_values")).to_have_value("7, 8")
    library.route("**/prompt", lambda route: route.abort())  # seen, not queued
    with library.expect_request(lambda request: request.url.endswith("/prompt")) as again:
        library.click("#submit")
    assert again.value.post_data_json["grid"] == body["grid"]
    assert again.value.post_data_json["text"] == prompt
    assert "num_images" not in again.value.post_data_json
    library.close()
    # A cell in the viewer says its own values.
    card.locator(".thumb").nth(3).click()
    details = page.locator(".picture-details")
    expect(details).to_contain_text("Grid celltemperature 1.5 · seed 8")
    expect(details).to_contain_text("Seed8Settingstop-k 50 · top-p 1 · temperature 1.5 ·")


def test_a_grid_of_prompts_needs_no_prompt(page, ui_stack):
    page.goto(f"{ui_stack.frontend.url}/advanced.html")
    sent = []
    page.on("request", lambda request: sent.append(request) if request.url.endswith("/prompt") else None)
    page.select_option("#grid_x_field", "text")
    page.fill("#grid_x_values", "a fox, in a field | a cat")
    with page.expect_response(lambda response: response.url.endswith("/prompt")) as answer:
        page.click("#submit")
    assert answer.value.status == 200
    assert sent[-1].post_data_json["grid"] == {"x": {"field": "text", "values": ["a fox, in a field", "a cat"]}}
    assert "text" not in sent[-1].post_data_json
    page.request.post(f"{ui_stack.frontend.url}/jobs/{answer.value.json()['queue_id']}/cancel")
