"""Best of N in the backend service (real engine on the tiny model, the reference tests' tiny
CLIP): candidates generated in one pass, CLIP's best kept best first with their scores and
candidate indices (in the result and the PNGs), unranked jobs, bad bodies."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend import ranking
from backend.app import create_app
from backend.config import Config
from backend.png import read_png_metadata
from playground import pictures

CLIP_FOLDER = Path(__file__).parent / "data" / "reference_clip" / "model"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from backend.engine import load_engine
    from backend.engine.clip import load_clip

    engine = load_engine("tiny", cache_dir=tmp_path_factory.mktemp("cache"))
    engine.clip = load_clip(CLIP_FOLDER, "tiny-clip", dtype="float32")
    return engine


def client_for(engine):
    app = create_app(Config(progress_interval_secs=0.05), loader=lambda _progress: engine)
    assert app.extensions["model_holder"].wait(30)
    return app.test_client()


@pytest.fixture
def client(engine):
    return client_for(engine)


def done_of(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()][-1]


def job(**overrides) -> dict:
    return {"job_id": "job-1", "text": "a red circle", "num_images": 2, "seed": 11, **overrides}


def test_health_says_whether_it_ranks(client, engine):
    health = client.get("/health").json
    assert health["ranks"] is True and health["clip_model"] == "tiny-clip"


def test_the_best_candidates_are_kept_best_first_with_scores_and_indices(client, engine):
    from backend.engine import GenerationRequest

    done = done_of(client.post("/generate", json=job(candidates=4)))
    assert done["event"] == "done" and done["ranked"] is True and done["candidates"] == 4
    indices, scores = done["candidate_indices"], done["clip_scores"]
    assert len(indices) == len(set(indices)) == 2 and all(0 <= i < 4 for i in indices)
    assert scores == sorted(scores, reverse=True) and "rank_secs" in done["timings"]
    # The same four candidates, made unranked: the kept ones are the best two by CLIP.
    everything = engine.generate(GenerationRequest("a red circle", 4, seed=11))
    all_scores = engine.clip.score("a red circle", everything.images)
    assert indices == [int(i) for i in np.argsort(-all_scores, kind="stable")[:2]]
    np.testing.assert_allclose(scores, all_scores[indices], atol=1e-3)
    for encoded, index, score, codes in zip(done["images"], indices, scores, done["codes"]):
        data = base64.b64decode(encoded)
        meta = read_png_metadata(data)
        assert meta["image_index"] == str(index) and meta["candidates"] == "4"
        assert float(meta["clip_score"]) == score and f"CLIP score: {score}" in meta["parameters"]
        assert pictures.unpack_codes(codes) == everything.codes[index].tolist()
        assert Image.open(io.BytesIO(data)).tobytes() == everything.images[index].tobytes()


def test_a_job_without_extra_candidates_is_scored_in_its_order(client, engine):
    from backend.engine import GenerationRequest

    done = done_of(client.post("/generate", json=job(num_images=4)))
    assert done["ranked"] is True and done["candidate_indices"] == [0, 1, 2, 3]
    plain = engine.generate(GenerationRequest("a red circle", 4, seed=11))
    np.testing.assert_allclose(done["clip_scores"], engine.clip.score("a red circle", plain.images), atol=1e-3)


def test_a_kept_image_is_made_again_from_its_seed_and_candidate_index(client):
    ranked = done_of(client.post("/generate", json=job(candidates=8, seed=5)))
    best = ranked["candidate_indices"][0]
    again = done_of(client.post("/generate", json=job(num_images=best + 1, seed=5, rank=False)))
    assert again["codes"][best] == ranked["codes"][0]


def test_unranked_keeps_the_first_images_and_generates_only_those(client, engine):
    from backend.engine import GenerationRequest

    plain = engine.generate(GenerationRequest("a red circle", 2, seed=11))
    unranked = done_of(client.post("/generate", json=job(candidates=8, rank=False)))
    assert unranked["ranked"] is False and unranked["candidates"] == 2
    assert unranked["candidate_indices"] == [0, 1] and unranked["clip_scores"] is None
    assert [pictures.unpack_codes(codes) for codes in unranked["codes"]] == plain.codes.tolist()
    assert "clip_score" not in read_png_metadata(base64.b64decode(unranked["images"][0]))


def test_a_backend_without_clip_makes_a_ranked_job_unranked(engine):
    class WithoutClip:
        def __getattr__(self, name):
            if name == "clip":
                raise AttributeError(name)
            return getattr(engine, name)

    client = client_for(WithoutClip())
    assert client.get("/health").json["ranks"] is False
    done = done_of(client.post("/generate", json=job(candidates=4, rank=True)))
    assert done["ranked"] is False and done["candidate_indices"] == [0, 1] and len(done["images"]) == 2


@pytest.mark.parametrize("body, field", [
    (job(candidates=1), "candidates"),
    (job(candidates=17), "candidates"),
    (job(candidates="4"), "candidates"),
    (job(candidates=True), "candidates"),
    (job(rank="yes"), "rank"),
    (job(rank=1), "rank"),
])
def test_bad_best_of_fields_name_the_field(client, body, field):
    response = client.post("/generate", json=body)
    assert response.status_code == 400 and field in response.json["error"]


def test_plan_and_choice():
    class Engine:
        clip = None

    assert ranking.plan(Engine(), 2, 8, None) == ranking.Plan(2, 2, False)

    class Scores:
        @staticmethod
        def score(text, images):
            return np.array([0.5, 2.0, 2.0, -1.0])

    Engine.clip = Scores()
    plan = ranking.plan(Engine(), 2, 4, None)
    assert plan == ranking.Plan(4, 2, True) and ranking.plan(Engine(), 2, None, None) == ranking.Plan(2, 2, True)
    choice = ranking.choose(Engine(), plan, "x", [None] * 4)
    assert choice.indices == [1, 2] and choice.scores == [2.0, 2.0]  # ties: the lower index first
    # No extra candidates: every picture scored, none moved (picture i stays candidate i).
    choice = ranking.choose(Engine(), ranking.Plan(4, 4, True), "x", [None] * 4)
    assert choice.indices == [0, 1, 2, 3] and choice.scores == [0.5, 2.0, 2.0, -1.0]
