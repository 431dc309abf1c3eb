"""Best of N through the whole stack (real Redis, backend, scheduler and frontend processes;
the demo model with its CLIP): scores in the job record, the library entry and the PNGs,
pictures ordered by score, a kept picture made again from its seed and candidate index."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from testkit.stack import Stack

pytestmark = pytest.mark.timeout(600)
PROMPT = "a blue square in the top right on a gray background"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_cache_dir):
    with Stack(tmp_path_factory.mktemp("stack-best-of"), model_cache_dir, model="demo",
               warm_up_batch_sizes="2") as stack:
        yield stack


def run(stack: Stack, **body) -> dict:
    return stack.run_prompt(body, timeout=180)


def png_text(stack: Stack, path: str) -> dict:
    picture = Image.open(io.BytesIO(requests.get(f"{stack.frontend.url}/{path}", timeout=10).content))
    picture.load()
    return dict(picture.text)


def test_the_backend_ranks_with_the_demo_clip(stack):
    health = requests.get(stack.backend.url + "/health", timeout=10).json()
    assert health["ranks"] is True and health["clip_model"] == "demo"


def test_best_of_four_is_stored_ordered_and_reproducible(stack):
    ranked = run(stack, text=PROMPT, num_images=2, candidates=8, seed=2024)
    assert ranked["ranked"] is True and ranked["candidates"] == 8
    indices, scores = ranked["candidate_indices"], ranked["clip_scores"]
    assert len(indices) == len(set(indices)) == 2 and scores == sorted(scores, reverse=True)
    entry = ranked["result"]
    assert entry["clip_scores"] == scores and entry["candidate_indices"] == indices and entry["ranked"] is True
    for path, index, score in zip(ranked["images"], indices, scores):
        text = png_text(stack, path)
        assert text["image_index"] == str(index) and float(text["clip_score"]) == score
    listed = next(e for e in requests.get(stack.frontend.url + "/getlibrary", timeout=10).json()
                  if e["queue_id"] == ranked["queue_id"])
    assert listed["clip_scores"] == scores
    # Made again unranked with the same seed: candidate i is image i of that job.
    plain = run(stack, text=PROMPT, num_images=8, seed=2024, rank=False)
    assert plain["ranked"] is False and plain["clip_scores"] is None
    assert [plain["codes"][i] for i in indices] == ranked["codes"]


def test_bad_best_of_bodies_get_400_naming_the_field(stack):
    for body, field in (({"candidates": 1}, "candidates"), ({"candidates": 17}, "candidates"),
                        ({"rank": "often"}, "rank")):
        response = requests.post(stack.frontend.url + "/prompt",
                                 json={"text": PROMPT, "num_images": 2, **body}, timeout=10)
        assert response.status_code == 400 and response.json()["field"] == field
