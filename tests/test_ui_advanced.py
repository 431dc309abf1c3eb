"""The advanced page in a real Chromium: sampling fields with their defaults, validation
before anything is sent, the body that is sent, and prefilling from the URL."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect


pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

DEFAULTS = {"gen_top_k": "50", "gen_top_p": "1.0", "temperature": "1.0", "condition_scale": "10"}


def prompt_requests(page) -> list:
    sent = []
    page.on("request", lambda request: sent.append(request) if request.url.endswith("/prompt") else None)
    return sent


def test_defaults_are_shown(page, ui_stack):
    page.goto(f"{ui_stack.frontend.url}/advanced.html")
    for field, value in DEFAULTS.items():
        expect(page.locator(f"#{field}")).to_have_value(value)
        expect(page.get_by_label({"gen_top_k": "Top-k", "gen_top_p": "Top-p", "temperature": "Temperature",
                                  "condition_scale": "Condition scale"}[field])).to_be_visible()
    expect(page.locator("#gen_top_k-hint")).to_contain_text("Default 50")
    expect(page.locator("#condition_scale-hint")).to_contain_text("Default 10")


INVALID = [
    ("gen_top_k", "0", "Top-k must be a whole number from 1 to {top_k}."),
    ("gen_top_k", "2.5", "Top-k must be a whole number from 1 to {top_k}."),
    ("gen_top_k", "99999", "Top-k must be a whole number from 1 to {top_k}."),
    ("gen_top_p", "0", "Top-p must be above 0 and at most 1."),
    ("gen_top_p", "1.5", "Top-p must be above 0 and at most 1."),
    ("temperature", "0", "Temperature must be above 0."),
    ("condition_scale", "-1", "Condition scale must be 0 or more."),
    ("seed", "4294967297", "The seed is a whole number from 0 to 4294967296."),
    ("seed", "-3", "The seed is a whole number from 0 to 4294967296."),
]


def test_invalid_values_are_refused_before_sending(page, ui_stack):
    page.goto(f"{ui_stack.frontend.url}/advanced.html")
    sent = prompt_requests(page)
    page.fill("#text", "a fox in a field")
    top_k = page.request.get(f"{ui_stack.frontend.url}/limits").json()["image_codes"]  # the served model's
    expect(page.locator("#gen_top_k-hint")).to_contain_text(f"from 1 to {top_k}")
    for field, value, message in INVALID:
        page.fill(f"#{field}", value)
        page.click("#submit")
        expect(page.locator(f"#{field}-error")).to_have_text(message.format(top_k=top_k))
        expect(page.locator(f"#{field}")).to_have_attribute("aria-invalid", "")
        expect(page.locator(f"#{field}")).to_be_focused()
        expect(page.locator("#form-status")).to_have_class("form-status is-error")
        page.fill(f"#{field}", {"seed": "0", **DEFAULTS}[field])
    page.wait_for_timeout(200)
    assert sent == []


def test_a_valid_form_sends_numbers_and_clears_old_errors(page, ui_stack):
    page.goto(f"{ui_stack.frontend.url}/advanced.html")
    sent = prompt_requests(page)
    page.fill("#text", "  a fox in a field  ")
    page.fill("#gen_top_p", "0")
    page.click("#submit")
    expect(page.locator("#gen_top_p-error")).not_to_be_empty()

    page.click("label[for=num-2]")
    page.fill("#seed", "4294967296")
    page.fill("#gen_top_k", "64")
    page.fill("#gen_top_p", "0.9")
    page.fill("#temperature", "")  # empty: the model's default, so not sent
    page.fill("#condition_scale", "0")
    with page.expect_response(lambda response: response.url.endswith("/prompt")) as answer:
        page.click("#submit")
    assert answer.value.status == 200
    assert sent[-1].post_data_json == {"text": "a fox in a field", "num_images": 2, "seed": 4294967296,
                                       "gen_top_k": 64, "gen_top_p": 0.9, "condition_scale": 0}
    expect(page.locator("#gen_top_p-error")).to_be_empty()
    expect(page.locator("#gen_top_p")).not_to_have_attribute("aria-invalid", "")

    queue_id = answer.value.json()["queue_id"]
    job = page.locator(f'#queue .queue-item.mine[data-queue-id="{queue_id}"]')
    expect(job).to_be_visible()
    job.get_by_role("button", name="Cancel").click()
    expect(job).to_have_count(0, timeout=20_000)


def test_the_url_prefills_the_form(page, ui_stack):
    page.goto(f"{ui_stack.frontend.url}/advanced.html?text=%3Cb%3Ebold%3C%2Fb%3E+cat&num_images=8&seed=7"
              "&gen_top_k=12&gen_top_p=0.5&temperature=0.7&condition_scale=3")
    expect(page.locator("#text")).to_have_value("<b>bold</b> cat")
    expect(page.locator("#num-8")).to_be_checked()
    for field, value in {"seed": "7", "gen_top_k": "12", "gen_top_p": "0.5", "temperature": "0.7",
                         "condition_scale": "3"}.items():
        expect(page.locator(f"#{field}")).to_have_value(value)


def test_a_refusal_from_the_server_is_shown_at_its_field(page, ui_stack):
    """What only the server can check comes back naming its field: the message goes there,
    in the form's words, not next to Create under the API's name."""
    page.route("**/prompt", lambda route: route.fulfill(status=400, json={
        "error": "gen_top_p: the server says no to 0.5", "field": "gen_top_p"}))
    page.goto(f"{ui_stack.frontend.url}/advanced.html")
    page.fill("#text", "a fox in a field")
    page.fill("#gen_top_p", "0.5")
    page.click("#submit")
    expect(page.locator("#gen_top_p-error")).to_have_text("Top-p: the server says no to 0.5")
    expect(page.locator("#gen_top_p")).to_be_focused()
    expect(page.locator("#form-status")).to_have_text("Please correct the highlighted field.")


def test_upscale_x4_asks_for_the_upscales(page, ui_stack):
    """The checkbox sends `upscale: 4`; the job keeps it (its upscales are the stack test's)."""
    page.goto(f"{ui_stack.frontend.url}/advanced.html")
    sent = prompt_requests(page)
    page.fill("#text", "a fox upscaled")
    page.get_by_label("Upscale ×4").check()
    with page.expect_response(lambda response: response.url.endswith("/prompt")) as answer:
        page.click("#submit")
    assert answer.value.status == 200
    assert sent[-1].post_data_json["upscale"] == 4
    queue_id = answer.value.json()["queue_id"]
    assert page.request.get(f"{ui_stack.frontend.url}/jobs/{queue_id}").json()["upscale"] == 4
    page.request.post(f"{ui_stack.frontend.url}/jobs/{queue_id}/cancel")
