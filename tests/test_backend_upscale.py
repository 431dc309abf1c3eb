"""The backend's POST /upscale with the real demo upscaler: the NDJSON events of a generation,
one PNG four times the size that says what it was made from, cancel, and bad bodies."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from backend.app import create_app, load_upscale_model
from backend.config import Config
from backend.engine.progress import LoadProgress
from backend.png import read_png_metadata
from playground import pictures
from playground.protocol.upscale import upscale_body

SOURCE = "library/00000000-0000-4000-8000-000000000000/00000000-0000-4000-8000-000000000001.png"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from backend.engine import load_engine

    engine = load_engine("tiny", cache_dir=tmp_path_factory.mktemp("cache"))
    engine.upscaler = load_upscale_model(Config(), LoadProgress())  # UPSCALE_MODEL's default: demo
    return engine


@pytest.fixture
def app(engine):
    app = create_app(Config(progress_interval_secs=0.02), loader=lambda _progress: engine)
    assert app.extensions["model_holder"].wait(30)
    return app


def picture(size=(48, 32), text: dict | None = None) -> bytes:
    rng = np.random.default_rng(3)
    return pictures.png_bytes(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)), text)


OURS = {"prompt": "a red circle", "seed": "7", pictures.CODES_KEY: "AAAA",
        "parameters": "a red circle\nSteps: 256, Seed: 7, Size: 48x32, Model: tiny"}


def test_health_names_the_upscaler(app):
    assert app.test_client().get("/health").json["upscale_model"] == "demo"


def test_an_upscale_streams_progress_then_one_png_that_says_what_made_it(app, engine):
    source = picture(text=OURS)
    response = app.test_client().post("/upscale", json=upscale_body("job-1", SOURCE, source, "demo"))
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert events[0] == {"event": "started", "seed": 0, "total_tokens": 1}
    assert {event["event"] for event in events[1:-1]} <= {"progress"}
    done = events[-1]
    assert (done["event"], done["model"], done["params"], len(done["images"])) == ("done", "demo", {"scale": 4}, 1)
    png = base64.b64decode(done["images"][0])
    big = Image.open(io.BytesIO(png))
    assert big.size == (192, 128)
    expected = engine.upscaler.upscale(np.asarray(Image.open(io.BytesIO(source)).convert("RGB")))
    assert np.array_equal(np.asarray(big), expected)
    text = read_png_metadata(png)
    assert (text["upscale_of"], text["upscale_model"], text["upscale_scale"]) == (SOURCE, "demo", "4")
    assert text["prompt"] == "a red circle" and pictures.CODES_KEY not in text
    assert text["parameters"] == "a red circle\nSteps: 256, Seed: 7, Model: tiny, Size: 192x128, Upscale: x4 (demo)"


def test_an_upscale_takes_a_slot_and_is_cancelled(app):
    client = app.test_client()
    upscaling = app.extensions["backend_api"]._upscaling
    with upscaling:  # the upscaler is busy: the run waits for it, still cancellable
        response = client.post("/upscale", json=upscale_body("long", SOURCE, picture(), None), buffered=False)
        lines = iter(response.response)
        assert json.loads(next(lines))["event"] == "started"
        assert client.post("/generate", json={"job_id": "other", "text": "x", "num_images": 2, "seed": 1}).status_code == 409
        assert client.post("/cancel", json={"job_id": "long"}).json == {"cancelled": True}
    assert json.loads(list(lines)[-1]) == {"event": "cancelled"}
    assert client.get("/health").json["busy"] is False


@pytest.mark.parametrize("body, error", [
    (None, "the body must be a JSON object"),
    ({"source": SOURCE, "picture": "AAAA"}, "job_id"),
    ({"job_id": "j", "picture": "AAAA"}, "source"),
    ({"job_id": "j", "source": SOURCE, "picture": "not base64!"}, "picture"),
    ({"job_id": "j", "source": SOURCE, "picture": base64.b64encode(b"text").decode()}, "picture is not a PNG"),
    (upscale_body("j", SOURCE, picture((1025, 8)), None), "picture is 1025×8"),
    (upscale_body("j", SOURCE, picture(), "realesrgan-x4plus"), "model: this backend upscales with demo"),
    (upscale_body("j", SOURCE, picture(), 5), "model"),
])
def test_bad_upscale_bodies_are_refused(app, body, error):
    client = app.test_client()
    response = client.post("/upscale", json=body) if body is not None else client.post(
        "/upscale", data=b"[]", content_type="application/json")
    assert response.status_code == 400 and response.json["error"].startswith(error), response.json
    assert client.get("/health").json["busy"] is False


def test_a_backend_without_an_upscaler_refuses_upscales(engine):
    upscaler, engine.upscaler = engine.upscaler, None
    try:
        app = create_app(Config(), loader=lambda _progress: engine)
        assert app.extensions["model_holder"].wait(30)
        client = app.test_client()
        assert client.get("/health").json["upscale_model"] is None
        response = client.post("/upscale", json=upscale_body("j", SOURCE, picture(), None))
        assert response.status_code == 400 and "UPSCALE_MODEL is none" in response.json["error"]
    finally:
        engine.upscaler = upscaler


@pytest.mark.parametrize("value, model", [("", "demo"), ("demo", "demo"), ("None", None), ("none", None),
                                          ("models/x4v3.pth", "models/x4v3.pth")])
def test_upscale_model_setting(value, model):
    assert Config.from_env({"UPSCALE_MODEL": value}).upscale_model == model
