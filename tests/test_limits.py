"""GET /limits: the limits of a request have one home (playground/limits.py), which the server
checks, OpenAPI states and the pages read; no page or script writes one of them again."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from frontend.config import Config
from frontend.openapi import OpenApiDocument
from frontend.threaded import serving
from playground import limits
from playground.grid import GRID_FIELDS
from playground.protocol import BackendStatus
from scheduler.worker_queue import WorkerQueue

STATIC = Path(__file__).resolve().parents[1] / "frontend" / "static"


@pytest.fixture
def url(redis_url, tmp_path):
    with serving(Config(port=0, redis_url=redis_url, library_dir=tmp_path / "library",
                        max_upload_bytes=3 * 2**20)) as server:
        yield server.url


def test_limits_are_served_with_the_models_now_served(url, redis_client):
    served = requests.get(f"{url}/limits")
    assert served.status_code == 200 and served.json() == limits.public_limits({}, 3 * 2**20)
    body = served.json()
    assert (body["text_max_chars"], body["seed_max"], body["candidates_max"]) == (1000, 2**32, 16)
    assert (body["image_counts"], body["upload_max_bytes"], body["image_codes"]) == ([2, 4, 6, 8], 3 * 2**20, 16384)

    worker = WorkerQueue(redis_client, "demo-backend", "http://127.0.0.1:9")
    assert worker.register()
    worker.heartbeat(BackendStatus.READY, model="demo", image_codes=1161)
    deadline = time.monotonic() + 10  # the frontend looks at the served models every few seconds
    while requests.get(f"{url}/limits").json()["models"] != {"demo": {"image_codes": 1161}}:
        assert time.monotonic() < deadline, requests.get(f"{url}/limits").json()
        time.sleep(0.1)
    assert requests.get(f"{url}/limits").json()["image_codes"] == 1161


def test_openapi_states_the_same_limits():
    document = OpenApiDocument.load().document
    prompt = document["components"]["schemas"]["PromptRequest"]["properties"]
    assert prompt["text"]["maxLength"] == limits.MAX_TEXT_LENGTH
    assert [choice["enum"] for choice in prompt["num_images"]["oneOf"]] == \
        [[str(n) for n in limits.IMAGE_COUNTS], list(limits.IMAGE_COUNTS)]
    assert prompt["seed"]["oneOf"][0]["maximum"] == limits.MAX_SEED
    assert prompt["gen_top_k"]["oneOf"][0]["maximum"] == limits.IMAGE_CODES
    assert prompt["keep_rows"]["oneOf"][0]["maximum"] == limits.MAX_KEEP_ROWS
    assert prompt["candidates"]["oneOf"][0]["maximum"] == limits.MAX_CANDIDATES
    axis = document["components"]["schemas"]["GridAxis"]["properties"]
    assert axis["values"]["maxItems"] == limits.MAX_GRID_CELLS
    assert axis["field"]["enum"] == list(GRID_FIELDS)
    schema = document["components"]["schemas"]["Limits"]
    assert set(schema["required"]) == set(limits.public_limits({}, 1))
    for name, value in limits.public_limits({}, 4 * 2**20).items():
        if name != "models":
            assert schema["properties"][name]["example"] == value, name


# The limits as a page or script would write them again: a number in a form attribute, a
# constant, a fallback, a hint's number, or the list of image counts.
WRITTEN_AGAIN = re.compile(r'maxlength="\d|max="\d{2,}|\b(?:4294967296|16384|1161)\b|\[2, 4, 6, 8\]|'
                           r"\?\? 256|max: 256|(?:of|at most) (?:16|15|64)\b|"
                           r"\b(?:MAX_[A-Z_]+|DEFAULT_[A-Z_]+|ROWS) = \d|keepRows = \d")


def test_no_page_or_script_writes_a_limit_again():
    found = [f"{path.relative_to(STATIC)}:{number}: {line.strip()}"
             for path in [*STATIC.glob("*.html"), *STATIC.glob("js/*.js")]
             for number, line in enumerate(path.read_text().splitlines(), 1) if WRITTEN_AGAIN.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_the_pages_check_a_request_with_the_server_s_limits(page, url):
    """Other limits from GET /limits, other rules on the page: the form states them and
    refuses what they refuse, before anything is sent."""
    smaller = {**limits.public_limits({}, 2**20), "text_max_chars": 20, "image_counts": [2, 4], "seed_max": 99,
               "candidates_max": 4}
    page.route("**/limits", lambda route: route.fulfill(json=smaller))
    sent = []
    page.on("request", lambda request: sent.append(request.url) if request.url.endswith("/prompt") else None)
    page.goto(f"{url}/advanced.html")
    expect(page.locator("#text-count")).to_have_text("0 / 20")
    expect(page.locator("#seed")).to_have_attribute("max", "99")
    expect(page.locator('[data-limit="candidates_max"]')).to_have_text("4")
    page.fill("#text", "a fox in a field, running")
    expect(page.locator("#text-count")).to_have_text("25 / 20")
    page.click("#submit")
    expect(page.locator("#text-error")).to_have_text("A prompt has at most 20 characters.")
    page.fill("#text", "a fox in a field")
    page.fill("#seed", "100")
    page.click("#submit")
    expect(page.locator("#seed-error")).to_have_text("The seed is a whole number from 0 to 99.")
    page.fill("#seed", "99")
    page.click("label[for=num-6]")
    page.click("#submit")
    expect(page.locator("#num_images-error")).to_have_text("Choose 2 or 4 images.")
    page.wait_for_timeout(200)
    assert sent == []
