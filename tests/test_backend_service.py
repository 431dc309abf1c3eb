"""The backend service with the real engine on the tiny model: health, streaming, validation,
one job at a time, cancel, and cancel-on-disconnect through the real gunicorn server."""
from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from backend.app import create_app
from backend.config import Config
from backend.generation_run import cells_so_far
from backend.png import read_png_metadata
from playground import pictures
from testkit import hostile_uploads


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from backend.engine import load_engine

    engine = load_engine("tiny", cache_dir=tmp_path_factory.mktemp("cache"))
    engine.warm_up((2,))
    return engine


@pytest.fixture
def client(engine):
    app = create_app(Config(progress_interval_secs=0.02), loader=lambda _progress: engine)
    assert app.extensions["model_holder"].wait(30)
    return app.test_client()


def events_of(response) -> list[dict]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def pixels(encoded_png: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(encoded_png))).tobytes()


def job(**overrides) -> dict:
    body = {"job_id": "job-1", "text": "a red circle", "num_images": 2, "seed": 7}
    body.update(overrides)
    return body


def test_health_reports_loading_then_ready(engine):
    release = threading.Event()

    def slow_loader(_progress):
        release.wait(10)
        return engine

    client = create_app(Config(), loader=slow_loader).test_client()
    loading = client.get("/health")
    assert loading.status_code == 503 and loading.json["status"] == "loading"
    assert (loading.json["stage"], loading.json["files"]) == ("starting", [])  # nothing downloaded
    assert client.post("/generate", json=job()).status_code == 503
    release.set()
    client.application.extensions["model_holder"].wait(10)
    ready = client.get("/health")
    assert ready.status_code == 200
    assert ready.json["status"] == "ready" and ready.json["busy"] is False
    # What the scheduler passes on: the tiny model's 256 tokens from a codebook of 1024.
    assert (ready.json["image_tokens"], ready.json["image_codes"]) == (256, 1024)


def test_health_shows_the_download_then_the_stages_until_ready(fake_hub, tmp_path):
    # The real loader, downloading "mini" (the tiny files) from a hub that pauses mid-file.
    weights = "dalle-mini/dalle-mini/flax_model.msgpack"
    size = len(fake_hub.file("dalle-mini/dalle-mini", "flax_model.msgpack").data)
    fake_hub.hold_after(600_000, file=weights)
    config = Config(model="mini", cache_dir=tmp_path, hub_endpoint=fake_hub.url, warm_up_batch_sizes=(2,))
    client = create_app(config).test_client()

    def downloading():
        body = client.get("/health").json
        return body if any(f["name"] == weights and f["bytes_done"] > 0 for f in body.get("files", [])) else None

    body = wait_for(downloading, 60)
    assert client.get("/health").status_code == 503
    assert set(body) == {"status", "model", "error", "stage", "files"}
    assert (body["status"], body["model"], body["error"], body["stage"]) == ("loading", "mini", None, "downloading")
    entries = {entry["name"]: entry for entry in body["files"]}
    assert entries["dalle-mini/dalle-mini/config.json"]["bytes_done"] == entries[
        "dalle-mini/dalle-mini/config.json"]["bytes_total"] > 0
    assert entries[weights]["bytes_total"] == size and 0 < entries[weights]["bytes_done"] <= 600_000
    assert all(set(entry) == {"name", "bytes_done", "bytes_total"} for entry in body["files"])

    fake_hub.release()
    stages = set()
    holder = client.application.extensions["model_holder"]
    while not holder.wait(0.05):
        stages.add(client.get("/health").json["stage"])
    assert "compiling" in stages
    ready = client.get("/health")
    assert ready.status_code == 200 and ready.json["stage"] == "ready", ready.json


def wait_for(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_loading_failure_is_reported_not_crashed():
    def broken_loader(_progress):
        raise FileNotFoundError("flax_model.msgpack is missing")

    client = create_app(Config(model="mini"), loader=broken_loader).test_client()
    client.application.extensions["model_holder"].wait(10)
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json["status"] == "error" and "flax_model.msgpack" in health.json["error"]
    assert health.json["stage"] == "error"
    assert client.post("/generate", json=job()).status_code == 503


def test_generate_streams_progress_then_pngs_with_metadata(client):
    response = client.post("/generate", json=job(condition_scale=3.0))
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    events = events_of(response)
    assert events[0] == {"event": "started", "seed": 7, "total_tokens": 256}
    done = events[-1]
    assert done["event"] == "done" and done["seed"] == 7 and done["model"] == "tiny"
    assert done["params"]["condition_scale"] == 3.0
    assert set(done["timings"]) >= {"tokens_secs", "vqgan_secs", "png_secs", "total_secs"}
    assert len(done["images"]) == 2
    for index, encoded in enumerate(done["images"]):
        data = base64.b64decode(encoded)
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.size == (256, 256)
        meta = read_png_metadata(data)
        assert meta["prompt"] == "a red circle" and meta["seed"] == "7"
        assert meta["image_index"] == str(index) and meta["condition_scale"] == "3.0"
    progress = [e for e in events if e["event"] == "progress"]
    assert all(0 <= e["tokens_done"] <= 256 for e in progress)


@pytest.mark.parametrize("every", [32, 0])
def test_previews_stream_between_progress_events_until_the_pictures(engine, every):
    engine.preview_every = every
    try:
        app = create_app(Config(progress_interval_secs=0.02, test_chunk_delay_secs=0.03),
                         loader=lambda _progress: engine)
        assert app.extensions["model_holder"].wait(30)
        events = events_of(app.test_client().post("/generate", json=job(num_images=3)))
    finally:
        engine.preview_every = None
    previews = [e for e in events if e["event"] == "preview"]
    assert events[-1]["event"] == "done"
    if not every:
        assert previews == []
        return
    assert len(previews) >= 2
    tokens = [e["tokens_done"] for e in previews]
    assert tokens == sorted(set(tokens)) and set(tokens) <= set(range(32, 256, 32))
    for event in previews:
        assert event["total_tokens"] == 256 and event["format"] == "jpeg" and len(event["images"]) == 3
        for encoded in event["images"]:
            picture = Image.open(io.BytesIO(base64.b64decode(encoded)))
            assert picture.format == "JPEG" and picture.size == (event["width"], event["height"]) == (128, 128)
    assert len({tuple(e["images"]) for e in previews}) == len(previews)  # each shows more


def test_a_preview_that_fails_never_fails_the_job(engine, client, monkeypatch):
    def broken(codes):
        raise MemoryError("no room for a preview")

    engine.preview_every = 64
    monkeypatch.setattr(engine, "preview_pictures", broken)
    try:
        events = events_of(client.post("/generate", json=job()))
    finally:
        engine.preview_every = None
    assert events[-1]["event"] == "done" and len(events[-1]["images"]) == 2
    assert not [e for e in events if e["event"] == "preview"]


def test_seed_zero_is_replaced_and_reported(client):
    events = events_of(client.post("/generate", json=job(seed=0)))
    assert 1 <= events[0]["seed"] <= 2**32
    assert events[-1]["seed"] == events[0]["seed"]


def test_same_seed_same_pngs_and_largest_seed_works(client):
    first = events_of(client.post("/generate", json=job(seed=2**32)))[-1]
    second = events_of(client.post("/generate", json=job(seed=2**32)))[-1]
    assert first["event"] == "done" and first["images"] == second["images"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"text": "x", "num_images": 2, "seed": 1}, "job_id"),
        (job(text="   "), "text"),
        (job(text="x" * 1001), "text"),
        (job(num_images=9), "num_images"),
        (job(num_images="2"), "num_images"),
        (job(seed=2**32 + 1), "seed"),
        (job(seed=-1), "seed"),
        (job(top_k=0), "top_k"),
        (job(top_p=1.5), "top_p"),
        (job(temperature=0), "temperature"),
        (job(condition_scale=-1), "condition_scale"),
        ([1, 2], "body"),
        (job(keep_rows=8), "keep_rows"),
        (job(init_codes=[0] * 256, init_picture="AAAA", keep_rows=8), "not both"),
        (job(init_codes=[0] * 250, keep_rows=8), "init_codes"),
        (job(init_codes=[-1] * 256, keep_rows=8), "init_codes"),
        (job(init_codes=[0] * 256, keep_rows=16), "keep_rows"),
        (job(init_codes=[0] * 256), "keep_rows"),
        (job(init_codes=[0] * 256, keep_rows=8, extend="up"), "extend"),
        (job(init_picture=base64.b64encode(b"GIF89a").decode(), keep_rows=8), "init_picture"),
        (job(init_picture="not base64!", keep_rows=8), "init_picture"),
        # Hostile starts (issue 35): too few rows, too tall to extend, shapes and sizes no start has.
        (job(init_codes=[0] * 16, keep_rows=8), "init_codes"),
        (job(init_codes=[0] * 64 * 16, keep_rows=8, extend="down"), "init_codes"),
        (job(init_picture=base64.b64encode(hostile_uploads.png(4096, 1)).decode(), keep_rows=8), "init_picture"),
        (job(init_picture=base64.b64encode(hostile_uploads.png(1, 64)).decode(), keep_rows=8), "init_picture"),
        (job(init_picture=base64.b64encode(hostile_uploads.png(1, 65536)).decode(), keep_rows=8), "init_picture"),
        (job(init_picture=base64.b64encode(hostile_uploads.png_header(1, 16_777_216)).decode(), keep_rows=8),
         "init_picture"),
        # A grid sweep (playground/grid.py): its parts named; one picture per cell.
        (job(grid={"x": {"field": "top_k", "values": [1]}}), "grid.x.values"),
        (job(grid={"x": {"field": "top_k", "values": [1, 0]}}, num_images=2), "grid.x.values[1]"),
        (job(grid={"x": {"field": "width", "values": [1, 2]}}, num_images=2), "grid.x.field"),
        (job(grid={"x": {"field": "seed", "values": [1, 2]}, "y": {"field": "seed", "values": [1, 2]}},
             num_images=4), "grid.y.field"),
        (job(grid={"x": {"field": "seed", "values": [1, 2]}}, num_images=4), "num_images"),
        (job(grid={"x": {"field": "seed", "values": list(range(1, 17))},
                   "y": {"field": "top_k", "values": [1, 2]}}, num_images=32), "grid"),
        (job(grid={"x": {"field": "seed", "values": [1, 2]}}, num_images=2, candidates=4), "grid"),
    ],
)
def test_bad_requests_name_the_field(client, body, field):
    response = client.post("/generate", json=body)
    assert response.status_code == 400
    assert field in response.json["error"]
    assert client.get("/health").json["busy"] is False


def test_pngs_carry_their_codes_and_a1111_parameters(client):
    done = events_of(client.post("/generate", json=job(seed=31, top_k=40)))[-1]
    for encoded, codes in zip(done["images"], done["codes"]):
        meta = read_png_metadata(base64.b64decode(encoded))
        assert meta[pictures.CODES_KEY] == codes and len(pictures.unpack_codes(codes)) == 256
        assert meta["parameters"].startswith("a red circle\nSteps: 256, ")
        assert "Seed: 31, Top k: 40, " in meta["parameters"] and meta["parameters"].endswith("Model: tiny")


@pytest.mark.parametrize("keep_rows", [1, 8, 15])
def test_continuing_an_image_through_the_service_draws_it_again(client, keep_rows):
    fresh = events_of(client.post("/generate", json=job(seed=12)))[-1]
    for index in range(2):
        codes = pictures.unpack_codes(fresh["codes"][index])
        again = events_of(client.post("/generate", json=job(seed=12, init_codes=codes, keep_rows=keep_rows)))[-1]
        assert again["start"] == {"source": "codes", "codes": codes}
        assert again["codes"][index] == fresh["codes"][index]
        assert pixels(again["images"][index]) == pixels(fresh["images"][index])
        meta = read_png_metadata(base64.b64decode(again["images"][index]))
        assert meta["keep_rows"] == str(keep_rows) and "Kept rows: " in meta["parameters"]


def test_an_uploaded_picture_is_encoded_and_extend_moves_its_bottom_rows_up(client, engine):
    picture = Image.new("RGB", (300, 200), (200, 30, 30))
    picture.paste((20, 20, 220), (0, 100, 300, 200))
    encoded = base64.b64encode(pictures.png_bytes(picture)).decode()
    done = events_of(client.post("/generate", json=job(init_picture=encoded, keep_rows=4, extend="down")))[-1]
    assert done["start"]["source"] == "encoded"
    expected = engine.encode_picture(picture).tolist()
    assert done["start"]["codes"] == expected
    for codes in done["codes"]:
        assert pictures.unpack_codes(codes)[:64] == expected[-64:]


def test_codes_beyond_the_models_codebook_fail_the_job_not_the_service(client):
    events = events_of(client.post("/generate", json=job(init_codes=[5000] * 256, keep_rows=8)))
    assert events[-1]["event"] == "error" and "codebook" in events[-1]["error"]
    assert client.get("/health").json["busy"] is False


def test_non_json_body_is_refused(client):
    response = client.post("/generate", data=b"\xff\xfe not json", content_type="application/json")
    assert response.status_code == 400


def test_one_job_at_a_time_and_cancel(client):
    response = client.post("/generate", json=job(job_id="long"), buffered=False)
    lines = response.response
    first = json.loads(next(iter(lines)))
    assert first["event"] == "started"
    busy = client.post("/generate", json=job(job_id="other"))
    assert busy.status_code == 409
    assert client.post("/cancel", json={"job_id": "not-this-one"}).json == {"cancelled": False}
    assert client.post("/cancel", json={"job_id": "long"}).json == {"cancelled": True}
    rest = [json.loads(line) for line in lines]
    assert rest[-1] == {"event": "cancelled"}
    assert client.get("/health").json["busy"] is False


def test_slots_run_jobs_together_with_the_pictures_each_gets_alone(engine):
    """BACKEND_SLOTS=2: two jobs at once through the batch runner, a third refused while both
    run; each job's pictures are those it gets on a backend of one slot."""
    alone = create_app(Config(progress_interval_secs=0.02), loader=lambda _progress: engine)
    assert alone.extensions["model_holder"].wait(30)
    jobs = [job(job_id="first", text="a red circle", seed=7),
            job(job_id="second", text="two blue squares", seed=8, num_images=4, top_k=20)]
    expected = [events_of(alone.test_client().post("/generate", json=body))[-1] for body in jobs]

    app = create_app(Config(slots=2, progress_interval_secs=0.02, test_chunk_delay_secs=0.05),
                     loader=lambda _progress: engine)
    assert app.extensions["model_holder"].wait(120)
    client = app.test_client()
    assert client.get("/health").json["slots"] == 2
    streams = [client.post("/generate", json=body, buffered=False).response for body in jobs]
    starts = [json.loads(next(iter(stream))) for stream in streams]
    assert [event["event"] for event in starts] == ["started", "started"]
    health = client.get("/health").json
    assert health["busy"] is True and health["job_id"] is None  # both slots taken
    third = client.post("/generate", json=job(job_id="third"))
    assert third.status_code == 409 and third.json == {"error": "every slot is busy"}
    ends = [[json.loads(line) for line in stream][-1] for stream in streams]
    for end, want in zip(ends, expected):
        assert end["event"] == "done", end
        assert [pixels(image) for image in end["images"]] == [pixels(image) for image in want["images"]]
        assert end["codes"] == want["codes"]
    assert client.get("/health").json["busy"] is False


def test_a_grid_s_cells_are_the_pictures_lone_jobs_of_their_values_get(engine, client):
    """A grid sweep: one picture per cell, each that of a one-picture job of the cell's values
    (the same with one slot, cells one after another, and with two, decoded together); each
    PNG says its own values."""
    grid = {"x": {"field": "temperature", "values": [0.5, 2]}, "y": {"field": "text", "values": ["a fox", "a cat"]}}
    body = job(grid=grid, num_images=4, top_k=30)
    singles = [events_of(client.post("/generate", json=job(num_images=1, text=text, temperature=temperature,
                                                             top_k=30)))[-1]
               for text in ("a fox", "a cat") for temperature in (0.5, 2)]
    one_slot = events_of(client.post("/generate", json=body))[-1]
    app = create_app(Config(slots=2, progress_interval_secs=0.02), loader=lambda _progress: engine)
    assert app.extensions["model_holder"].wait(120)
    batched_client = app.test_client()
    assert batched_client.get("/health").json["grid_cells_max"] == 16
    batched = events_of(batched_client.post("/generate", json=body))[-1]
    for done in (one_slot, batched):
        assert done["event"] == "done", done
        assert done["codes"] == [single["codes"][0] for single in singles]
        assert [pixels(image) for image in done["images"]] == [pixels(single["images"][0]) for single in singles]
        assert done["cells"] == [{"text": text, "temperature": temperature, "seed": 7}
                                 for text in ("a fox", "a cat") for temperature in (0.5, 2.0)]
        assert "temperature" not in done["params"] and done["params"]["top_k"] == 30
        meta = read_png_metadata(base64.b64decode(done["images"][1]))
        assert (meta["prompt"], meta["temperature"], meta["grid_cell"], meta["image_index"]) == ("a fox", "2.0", "1", "0")


@pytest.mark.parametrize("every", [32, None])
def test_a_grid_decoded_together_previews_all_its_cells(engine, every, caplog):
    """At a fixed spacing, or on the default schedule, where each cell's schedule keeps its own
    time and the cells' codes so far can differ in length at the last cell's turn."""
    engine.preview_every = every
    try:
        app = create_app(Config(slots=2, progress_interval_secs=0.02, test_chunk_delay_secs=0.03),
                         loader=lambda _progress: engine)
        assert app.extensions["model_holder"].wait(120)
        grid = {"x": {"field": "seed", "values": [1, 2]}, "y": {"field": "condition_scale", "values": [1, 5]}}
        events = events_of(app.test_client().post("/generate", json=job(grid=grid, num_images=4)))
    finally:
        engine.preview_every = None
    assert events[-1]["event"] == "done"
    previews = [e for e in events if e["event"] == "preview"]
    assert previews and all(len(event["images"]) == 4 for event in previews)
    tokens = [e["tokens_done"] for e in previews]
    assert tokens == sorted(set(tokens))
    progress = [e["tokens_done"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and progress[-1] <= 256
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_grid_preview_cuts_every_cell_to_the_tokens_all_have():
    """Seen in a stack's log: the last cell's turn came at 216 tokens while the others had handed
    208 ("all input arrays must have the same shape"): no preview that time."""
    cells = [np.arange(208), np.arange(208) + 1000, np.arange(216) + 2000]
    shown, together = cells_so_far(cells)
    assert shown == 208 and together.shape == (3, 208)
    assert [row.tolist() for row in together] == [cell[:208].tolist() for cell in cells]


def test_real_server_streams_and_a_client_that_leaves_cancels_its_job(tmp_path, model_cache_dir):
    import requests

    from testkit.processes import backend_process

    backend = backend_process(tmp_path, model_cache_dir, extra_env={
        "BACKEND_WARMUP_BATCH_SIZES": "2", "BACKEND_PROGRESS_INTERVAL": "0.05"}).start()
    try:
        backend.wait_healthy(timeout=240)
        with requests.post(backend.url + "/generate", json=job(job_id="complete"), stream=True, timeout=60) as response:
            assert response.headers["Content-Type"].startswith("application/x-ndjson")
            events = [json.loads(line) for line in response.iter_lines() if line]
        assert events[0]["event"] == "started" and events[-1]["event"] == "done"
        assert any(e["event"] == "progress" for e in events)

        response = requests.post(backend.url + "/generate", json=job(job_id="leaver"), stream=True, timeout=60)
        assert json.loads(next(response.iter_lines()))["event"] == "started"
        response.close()  # the scheduler died: nobody reads the stream any more
        backend.wait_until(lambda: "client of job leaver went away" in backend.log_tail(20000), 20,
                           "the backend noticing the client left")
        backend.wait_until(lambda: requests.get(backend.url + "/health", timeout=5).json()["busy"] is False,
                           20, "the backend to be free again")
    finally:
        backend.stop()


def test_the_web_service_imports_no_jax():
    # /health must answer while JAX and the model load in the background.
    run = subprocess.run([sys.executable, "-c", "import sys, backend.app, backend.__main__; print('jax' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "False"
