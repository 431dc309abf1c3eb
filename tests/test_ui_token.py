"""A playground started with API_TOKEN: the UI asks for the token when a change answers 401,
keeps it in localStorage, and asks again when it is wrong."""
from __future__ import annotations

import pytest
import requests
from playwright.sync_api import expect

from frontend.config import Config
from frontend.threaded import serving

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TOKEN = "correct horse battery staple"


@pytest.fixture
def guarded_frontend(tmp_path, redis_url):
    with serving(Config(port=0, redis_url=redis_url, library_dir=tmp_path / "library", api_token=TOKEN)) as server:
        yield server.url


def answer_token_dialog(page, token: str, press_enter: bool = False) -> None:
    dialog = page.locator("dialog.token-dialog[open]")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Token").fill(token)
    if press_enter:  # as a form: Enter in the field saves
        dialog.get_by_label("Token").press("Enter")
    else:
        dialog.get_by_role("button", name="Save token").click()


def test_the_token_is_asked_for_kept_and_asked_again_when_wrong(page, guarded_frontend):
    page.goto(guarded_frontend)
    page.fill("#text", "a guarded prompt")
    page.press("#text", "Enter")

    expect(page.locator("dialog.token-dialog")).to_contain_text("only accepts changes with its access token")
    answer_token_dialog(page, "wrong")
    expect(page.locator("dialog.token-dialog")).to_contain_text("The saved token was not accepted")
    answer_token_dialog(page, TOKEN, press_enter=True)

    expect(page.locator("#form-status")).to_contain_text("Queued")
    expect(page.locator("#queue .queue-item.mine")).to_have_count(1)
    assert page.evaluate("localStorage.getItem('dalle-playground.api-token')") == TOKEN

    # Next time the saved token goes along at once: no question.
    page.reload()
    page.fill("#text", "a second guarded prompt")
    page.press("#text", "Enter")
    expect(page.locator("#queue .queue-item.mine")).to_have_count(2)
    expect(page.locator("dialog.token-dialog")).to_have_count(0)


def test_cancelling_the_question_shows_the_refusal(page, guarded_frontend):
    page.goto(guarded_frontend)
    page.fill("#text", "a prompt without a token")
    page.press("#text", "Enter")
    page.locator("dialog.token-dialog").get_by_role("button", name="Cancel").click()
    expect(page.locator("#form-status")).to_contain_text("needs the API token")
    expect(page.locator("#form-status")).to_have_class("form-status is-error")
    expect(page.locator("#submit")).to_be_enabled()
    assert requests.get(f"{guarded_frontend}/queue_status", timeout=5).json() == []
