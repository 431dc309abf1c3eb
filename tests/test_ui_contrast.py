"""Contrast in a real Chromium, light and dark: every piece of text on every page at least
4.5:1 against what is behind it (WCAG AA), every input's border at least 3:1, and each
thumbnail with an alt text of its own. The pages are shown with a running job, a queued one
and a library of Best-of pictures, so the badges, scores and the active link are measured."""
from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from browser import add_library_job
from frontend.config import Config
from frontend.threaded import serving
from playground.library import LibraryStore
from playground.queue import JobQueue
from scheduler.worker_queue import WorkerQueue

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

# For each element with text of its own (or each input), its colour and the colour behind it:
# the first ancestor background that is not transparent, alpha blended onto the ones below.
MEASURE = """([selector, borders]) => {
  const parse = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const blend = (top, under) => {
    const [r, g, b, a = 1] = top;
    return [0, 1, 2].map((i) => [r, g, b][i] * a + under[i] * (1 - a));
  };
  const behind = (node) => {
    const layers = [];
    for (let at = node; at; at = at.parentElement) {
      const colour = parse(getComputedStyle(at).backgroundColor);
      if (colour.length && (colour[3] ?? 1) > 0) layers.push(colour);
      if (colour.length && (colour[3] ?? 1) === 1) break;
    }
    return layers.reduceRight((under, top) => blend(top, under), [255, 255, 255]);
  };
  const luminance = (rgb) => {
    const [r, g, b] = rgb.map((c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (x, y) => { const [hi, lo] = [luminance(x), luminance(y)].sort((p, q) => q - p); return (hi + 0.05) / (lo + 0.05); };
  const visible = (node) => node.getClientRects().length > 0 && getComputedStyle(node).visibility !== "hidden"
    && !node.closest(".visually-hidden");
  const found = [];
  for (const node of document.querySelectorAll(selector)) {
    if (!visible(node)) continue;
    const ownText = [...node.childNodes].some((child) => child.nodeType === 3 && child.textContent.trim());
    const back = behind(borders ? node.parentElement : node);
    if (borders) {
      const colour = blend(parse(getComputedStyle(node).borderTopColor), back);
      found.push({ what: `${node.tagName.toLowerCase()}#${node.id} border`, ratio: ratio(colour, back) });
    } else if (ownText) {
      const colour = blend(parse(getComputedStyle(node).color), back);
      found.push({ what: `${node.tagName.toLowerCase()}.${node.className} “${node.textContent.trim().slice(0, 30)}”`,
                   ratio: ratio(colour, back) });
    }
  }
  return found;
}"""
FIELDS = "input:not([type=radio]):not([type=checkbox]):not([type=range]):not([type=file]), textarea, select"


def low_contrast(page) -> list[str]:
    texts = page.evaluate(MEASURE, ["body *", False])
    borders = page.evaluate(MEASURE, [FIELDS, True])
    assert texts, "nothing measured"
    return [f"{item['what']}: {item['ratio']:.2f}:1" for item in texts if item["ratio"] < 4.5] + \
        [f"{item['what']}: {item['ratio']:.2f}:1" for item in borders if item["ratio"] < 3.0]


@pytest.fixture
def stack(tmp_path, redis_url, redis_client):
    library_dir = tmp_path / "library"
    plain = add_library_job(library_dir, "a red circle on a black background", num_images=2)
    pictures = [(tmp_path / url).read_bytes() for url in plain["generated_images"]]
    LibraryStore(library_dir).add_job(  # Best of 4: its pictures carry their CLIP scores
        {**plain, "queue_id": str(uuid.uuid4()), "text_prompt": "a red circle, the best of 4", "candidates": 4, "ranked": True, "candidate_indices": [2, 0],
         "clip_scores": [30.5, -0.25]}, pictures)
    worker = WorkerQueue(redis_client, "contrast-worker", "http://127.0.0.1:9")
    assert worker.register()
    worker.heartbeat("ready", model="tiny")
    queue = JobQueue(redis_client)
    running = queue.submit({"text": "a blue square", "num_images": 2, "seed": 1, "model": "tiny"})
    queue.submit({"text": "a green triangle", "num_images": 2, "seed": 2, "model": "tiny"})
    worker.progress(worker.claim(timeout=1, model="tiny"), 64, 256)
    with serving(Config(port=0, redis_url=redis_url, library_dir=library_dir)) as server:
        yield server.url, running.id


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_text_and_field_border_stands_out(page, stack, scheme):
    url, running = stack
    page.emulate_media(color_scheme=scheme)
    problems = []
    for path in ("/", "/advanced.html", "/library.html"):
        page.goto(url + path)
        if path == "/":
            expect(page.locator(f'#queue [data-queue-id="{running}"] .badge')).to_have_text("Generating")
        if path == "/library.html":
            expect(page.locator(".clip-score").first).to_be_visible()
        problems += [f"{path} {problem}" for problem in low_contrast(page)]
    assert not problems, "\n".join(problems)


def test_each_thumbnail_says_which_picture_it_is(page, stack):
    url, _ = stack
    page.goto(url + "/library.html")
    thumbs = page.locator("article.job .thumb img")
    expect(thumbs).to_have_count(4)
    alts = [thumbs.nth(i).get_attribute("alt") for i in range(4)]
    assert sorted(alts) == ["a red circle on a black background (picture 1 of 2)",
                            "a red circle on a black background (picture 2 of 2)",
                            "a red circle, the best of 4 (picture 1 of 2)", "a red circle, the best of 4 (picture 2 of 2)"]
