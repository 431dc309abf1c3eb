"""The frontend's API over real HTTP, a real Redis and a real library folder.

Part 1 is checked against the examples of API.md and the original README; Part 2 against the
states a job really goes through, driven by the scheduler's own queue operations.
"""
from __future__ import annotations

import dataclasses

import io
import json
import time
import uuid

import pytest
import requests
import yaml
from openapi_spec_validator import validate as validate_openapi
from PIL import Image

from frontend.config import Config
from frontend.threaded import serving
from playground.library import LibraryStore
from playground.protocol import BackendStatus, Stage
from playground.queue import JobQueue
from playground.redis_server import free_port
from scheduler.worker_queue import WorkerQueue

SQUIRREL = ("the red squirrel dances in the moonlight, feet off the ground, backlit, photograph, "
            "golden hour, high shutter speed")
LIGHTNING = ("lightning strike over the cliffs in Brighton England, dramatic, dangerous, impressive, "
             "photograph")
PAGES = {"index.html": "<h1>prompt</h1>", "advanced.html": "<h1>advanced</h1>",
         "library.html": "<h1>library</h1>"}


def png_bytes(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def library_entry(text: str = SQUIRREL, created: float | None = None, **extra) -> dict:
    return {"queue_id": str(uuid.uuid4()), "text_prompt": text,
            "creation_unixtime": time.time() if created is None else created,
            "process_time_secs": 16.318238735198975, "seed": 12345, "num_images": 2,
            "top_k": None, "top_p": None, "temperature": None, "condition_scale": None,
            "model": "tiny", **extra}


@pytest.fixture
def static_dir(tmp_path):
    static = tmp_path / "static"
    (static / "js").mkdir(parents=True)
    for name, body in PAGES.items():
        (static / name).write_text(f"<!doctype html>{body}<script src=\"js/app.js\"></script>")
    (static / "js" / "app.js").write_text("console.log('hi');")
    (static / "style.css").write_text("body { color: black }")
    return static


@pytest.fixture
def config(redis_url, tmp_path, static_dir):
    return Config(port=0, redis_url=redis_url, library_dir=tmp_path / "library", static_dir=static_dir)


@pytest.fixture
def server(config):
    with serving(config) as server:
        yield server


@pytest.fixture
def url(server):
    return server.url


@pytest.fixture
def queue(redis_client):
    return JobQueue(redis_client)


@pytest.fixture
def store(config):
    return LibraryStore(config.library_dir)


@pytest.fixture
def worker(redis_client):
    worker = WorkerQueue(redis_client, "worker-1", "http://127.0.0.1:8080")
    assert worker.register()
    return worker


def submit(url: str, **body) -> str:
    response = requests.post(f"{url}/prompt", json=body)
    assert response.status_code == 200, response.text
    return response.json()["queue_id"]


# -- Part 1 --------------------------------------------------------------------------------

def test_readme_prompt_example_is_queued_with_its_values(url, queue):
    response = requests.post(f"{url}/prompt", data=json.dumps(
        {"text": SQUIRREL, "num_images": "6", "seed": 12345}))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["queue_id"]
    assert uuid.UUID(body["queue_id"]).version == 4
    job = queue.get(body["queue_id"])
    assert (job.text, job.num_images, job.seed, job.status) == (SQUIRREL, 6, 12345, "queued")


def test_prompt_accepts_ints_numeric_strings_and_the_advanced_fields(url, queue):
    queue_id = submit(url, text="  a cat  ", num_images=4, seed="0", gen_top_k="50", gen_top_p=0.9,
                      temperature="1.5", condition_scale=10)
    job = queue.get(queue_id)
    assert (job.text, job.num_images, job.seed) == ("a cat", 4, 0)
    assert (job.top_k, job.top_p, job.temperature, job.condition_scale) == (50, 0.9, 1.5, 10.0)
    blank = queue.get(submit(url, text="a dog", num_images="2", seed=4294967296, gen_top_k="",
                             gen_top_p=None, temperature=""))
    assert (blank.seed, blank.top_k, blank.top_p, blank.temperature) == (4294967296, None, None, None)


def test_queue_status_is_running_first_then_oldest_first(url, worker):
    assert requests.get(f"{url}/queue_status").json() == []
    first = submit(url, text=LIGHTNING, num_images=4, seed=0)
    second = submit(url, text=SQUIRREL, num_images="6", seed=12345)
    assert worker.claim(timeout=1, model="tiny").id == first
    third = submit(url, text="a third", num_images="2", seed=1)
    status = requests.get(f"{url}/queue_status").json()
    assert [item["queue_id"] for item in status] == [first, second, third]
    assert [item["text"] for item in status] == [LIGHTNING, SQUIRREL, "a third"]
    assert [item["num_images"] for item in status] == [4, 6, 2]
    assert [item["status"] for item in status] == ["running", "queued", "queued"]
    assert [item["position"] for item in status] == [0, 1, 2]


def test_getlibrary_matches_the_original_shape_and_serves_the_images(url, store):
    older = store.add_job(library_entry(LIGHTNING, created=1660646441.73253), [png_bytes()] * 4)
    newer = store.add_job(library_entry(SQUIRREL, created=1660646508.7874029), [png_bytes()] * 2)
    response = requests.get(f"{url}/getlibrary")
    assert response.status_code == 200
    assert response.headers["X-Total-Count"] == "2"
    library = response.json()
    assert [item["queue_id"] for item in library] == [newer["queue_id"], older["queue_id"]]
    for item in library:
        assert isinstance(item["creation_unixtime"], float)
        assert isinstance(item["process_time_secs"], float)
        assert isinstance(item["text_prompt"], str) and item["seed"] == 12345
        for image_url in item["generated_images"]:
            assert image_url.startswith(f"library/{item['queue_id']}/") and image_url.endswith(".png")
            image = requests.get(f"{url}/{image_url}")
            assert image.status_code == 200
            assert image.headers["Content-Type"] == "image/png"
            assert "immutable" in image.headers["Cache-Control"]
            assert image.content == png_bytes()
    assert len(library[1]["generated_images"]) == 4


def test_deleteimage_removes_the_file_and_the_index_shows_it_at_once(url, store, config):
    stored = store.add_job(library_entry(), [png_bytes(), png_bytes((0, 0, 255))])
    first, second = stored["generated_images"]
    response = requests.post(f"{url}/deleteimage", json={"path": first})
    assert response.status_code == 200 and response.json()["deleted"] == first
    assert not (config.library_dir / first.removeprefix("library/")).exists()
    assert requests.get(f"{url}/{first}").status_code == 404
    assert requests.get(f"{url}/getlibrary").json()[0]["generated_images"] == [second]
    assert json.loads((config.library_dir / "library.json").read_bytes())[0]["generated_images"] == [second]
    assert requests.post(f"{url}/deleteimage", json={"path": first}).status_code == 404
    # The last image takes its job with it.
    assert requests.post(f"{url}/deleteimage", json={"path": "/" + second}).status_code == 200
    assert requests.get(f"{url}/getlibrary").json() == []
    assert not (config.library_dir / stored["queue_id"]).exists()


def test_pages_and_their_assets_are_served_with_security_headers(url):
    for path, name in [("/", "index.html"), ("/index.html", "index.html"),
                       ("/advanced.html", "advanced.html"), ("/library.html", "library.html")]:
        response = requests.get(f"{url}{path}?cache=bust")
        assert response.status_code == 200
        assert PAGES[name] in response.text
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in policy
        assert "Access-Control-Allow-Origin" not in response.headers
    assert requests.get(f"{url}/js/app.js").headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert requests.get(f"{url}/style.css").headers["Content-Type"] == "text/css; charset=utf-8"
    assert requests.get(f"{url}/missing.js").status_code == 404


# -- Part 2 --------------------------------------------------------------------------------

def test_job_status_follows_the_job_from_queued_to_done(url, worker, store):
    job_id = submit(url, text=SQUIRREL, num_images="2", seed=0)
    status = requests.get(f"{url}/jobs/{job_id}").json()
    assert (status["status"], status["position"], status["progress"]) == (
        "queued", 1, {"tokens_done": 0, "total_tokens": 256})
    assert status["error"] is None and "result" not in status

    claimed = worker.claim(timeout=1, model="tiny")
    worker.progress(claimed, 128, 256, seed=987)
    status = requests.get(f"{url}/jobs/{job_id}").json()
    assert (status["status"], status["position"], status["seed"]) == ("running", 0, 987)
    assert status["progress"] == {"tokens_done": 128, "total_tokens": 256}

    entry = store.add_job(library_entry(queue_id=job_id, seed=987), [png_bytes(), png_bytes()])
    worker.finish_done(claimed, seed=987, model="tiny", images=entry["generated_images"], process_time_secs=3.0)
    status = requests.get(f"{url}/jobs/{job_id}").json()
    assert status["status"] == "done" and status["position"] is None
    assert status["result"] == entry


def test_job_status_reports_a_failure_and_unknown_jobs(url, worker):
    job_id = submit(url, text="x", num_images=2, seed=1)
    worker.finish_failed(worker.claim(timeout=1, model="tiny"), "the backend ran out of memory")
    status = requests.get(f"{url}/jobs/{job_id}").json()
    assert (status["status"], status["error"]) == ("failed", "the backend ran out of memory")
    assert requests.get(f"{url}/jobs/{uuid.uuid4()}").status_code == 404
    assert requests.get(f"{url}/jobs/not-a-uuid").status_code == 404


def test_a_job_only_the_library_remembers_is_done(url, store):
    entry = store.add_job(library_entry(), [png_bytes()])
    status = requests.get(f"{url}/jobs/{entry['queue_id']}").json()
    assert status["status"] == "done" and status["result"] == entry


def test_cancel_a_queued_job_removes_it_from_the_queue(url, queue):
    job_id = submit(url, text="x", num_images=2, seed=1)
    response = requests.post(f"{url}/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert queue.get(job_id).status == "cancelled"
    assert requests.get(f"{url}/queue_status").json() == []
    again = requests.post(f"{url}/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["status"] == "cancelled"
    assert requests.post(f"{url}/jobs/{uuid.uuid4()}/cancel").status_code == 404


def test_cancel_a_running_job_asks_its_worker_to_stop(url, worker):
    job_id = submit(url, text="x", num_images=2, seed=1)
    worker.claim(timeout=1, model="tiny")
    response = requests.post(f"{url}/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    assert worker.cancel_requested(job_id)


def jpeg_bytes(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_running_jobs_newest_preview_is_served_until_it_ends(url, worker, redis_client):
    job_id = submit(url, text="x", num_images=2, seed=1)
    preview = f"{url}/jobs/{job_id}/preview"
    assert requests.get(preview).status_code == 404  # queued
    claimed = worker.claim(timeout=1, model="tiny")
    assert requests.get(preview).status_code == 404  # running, no preview yet
    assert requests.get(f"{url}/jobs/{job_id}").json()["preview_tokens"] is None

    first, second = jpeg_bytes((200, 0, 0)), jpeg_bytes((0, 0, 200))
    assert worker.preview(claimed, 64, [first, second]) == "ok"
    response = requests.get(preview, params={"image": 1})
    assert response.status_code == 200 and response.content == second
    assert response.headers["Content-Type"] == "image/jpeg" and response.headers["X-Preview-Tokens"] == "64"
    assert response.headers["Cache-Control"] == "no-store"
    assert requests.get(preview).content == first  # image 0 by default
    assert requests.get(f"{url}/jobs/{job_id}").json()["preview_tokens"] == 64
    assert requests.get(f"{url}/queue_status").json()[0]["preview_tokens"] == 64
    assert requests.get(preview, params={"image": 2}).status_code == 404
    assert requests.get(preview, params={"image": "one"}).status_code == 400
    assert requests.get(f"{url}/jobs/{uuid.uuid4()}/preview").status_code == 404

    # Only the newest is kept, and only the current claim may write one.
    assert worker.preview(claimed, 128, [second, first]) == "ok"
    assert requests.get(preview).content == second
    stale = dataclasses.replace(claimed, claim=claimed.claim - 1)
    assert worker.preview(stale, 192, [first, first]) == "lost"
    assert requests.get(preview).headers["X-Preview-Tokens"] == "128"
    assert redis_client.ttl(f"dalle:preview:{job_id}") > 0  # a safety net, should the end never come

    worker.finish_failed(claimed, "out of memory")
    assert requests.get(preview).status_code == 404
    assert requests.get(f"{url}/jobs/{job_id}").json()["preview_tokens"] is None
    assert not redis_client.keys("*preview*")

    # A job put back (its backend lost) loses its attempt's preview too.
    job_id = submit(url, text="y", num_images=2, seed=1)
    claimed = worker.claim(timeout=1, model="tiny")
    worker.preview(claimed, 32, [first, second])
    assert worker.put_back(claimed, "backend lost") == "queued"
    assert requests.get(f"{url}/jobs/{job_id}/preview").status_code == 404
    assert requests.get(f"{url}/jobs/{job_id}").json()["preview_tokens"] is None
    assert not redis_client.keys("*preview*")


def test_delete_job_removes_its_images_and_entry(url, store, config, queue):
    kept = store.add_job(library_entry("kept"), [png_bytes()])
    gone = store.add_job(library_entry("gone"), [png_bytes(), png_bytes()])
    response = requests.delete(f"{url}/jobs/{gone['queue_id']}")
    assert response.status_code == 200 and response.json() == {"queue_id": gone["queue_id"], "deleted": True}
    assert not (config.library_dir / gone["queue_id"]).exists()
    assert [e["queue_id"] for e in requests.get(f"{url}/getlibrary").json()] == [kept["queue_id"]]
    assert requests.delete(f"{url}/jobs/{gone['queue_id']}").status_code == 404
    queued = submit(url, text="still waiting", num_images=2, seed=1)
    refused = requests.delete(f"{url}/jobs/{queued}")
    assert refused.status_code == 409 and queue.get(queued).status == "queued"


def test_delete_one_image_restfully(url, store, config):
    stored = store.add_job(library_entry(), [png_bytes(), png_bytes()])
    image = stored["generated_images"][0]
    response = requests.delete(f"{url}/{image}")
    assert response.status_code == 200 and response.json()["deleted"] == image
    assert not (config.library_dir / image.removeprefix("library/")).exists()
    assert requests.delete(f"{url}/{image}").status_code == 404
    assert requests.get(f"{url}/getlibrary").json()[0]["generated_images"] == stored["generated_images"][1:]


def test_health_reports_each_part(url, worker, redis_client):
    response = requests.get(f"{url}/health")
    assert response.status_code == 503  # registered, but no heartbeat from the backend yet
    worker.heartbeat(BackendStatus.READY, "tiny", ranks=True)  # a backend with CLIP
    response = requests.get(f"{url}/health")
    assert response.status_code == 200, response.text
    health = response.json()
    assert health["status"] == "ok"
    assert health["frontend"] == {"status": "ok"} and health["redis"] == {"status": "ok"}
    assert health["scheduler"]["alive_workers"] == 1
    assert health["backends"] == [{"url": "http://127.0.0.1:8080", "status": "ready", "model": "tiny",
                                   "error": None, "worker": "worker-1", "stage": None, "files": [],
                                   "ranks": True, "slots": 1}]
    worker.heartbeat(BackendStatus.READY, "tiny", ranks=False)  # CLIP_MODEL=none
    assert requests.get(f"{url}/health").json()["backends"][0]["ranks"] is False
    download = {"name": "dalle-mini/dalle-mega/flax_model.msgpack", "bytes_done": 5, "bytes_total": 10}
    worker.heartbeat(BackendStatus.LOADING, "mega", loading={"stage": Stage.DOWNLOADING, "files": [download]})
    response = requests.get(f"{url}/health")
    assert response.status_code == 503
    assert response.json()["backends"][0] | {"worker": None} == {
        "url": "http://127.0.0.1:8080", "status": "loading", "model": "mega", "error": None, "worker": None,
        "stage": "downloading", "files": [download], "ranks": None, "slots": 1}
    # Ready again: the loading details are gone.
    worker.heartbeat(BackendStatus.READY, "mega", loading={"stage": Stage.COMPILING, "files": [download]})
    assert requests.get(f"{url}/health").json()["backends"][0]["files"] == []


def test_top_k_is_limited_by_the_codebook_of_the_served_model(config, redis_client):
    with serving(config) as server:  # before any backend: the published models' 16384 codes
        assert requests.post(f"{server.url}/prompt", json={"text": "a", "num_images": 2,
                                                          "gen_top_k": 16384}).status_code == 200
    worker = WorkerQueue(redis_client, "worker-1", "http://127.0.0.1:8080")
    assert worker.register()
    worker.heartbeat(BackendStatus.READY, "demo", image_codes=1161)
    with serving(config) as server:
        too_many = requests.post(f"{server.url}/prompt", json={"text": "a", "num_images": 2, "gen_top_k": 1162})
        assert too_many.status_code == 400 and too_many.json()["field"] == "gen_top_k"
        assert requests.post(f"{server.url}/prompt", json={"text": "a", "num_images": 2,
                                                          "gen_top_k": 1161}).status_code == 200


def test_health_without_workers_or_redis(tmp_path):
    config = Config(port=0, redis_url=f"redis://127.0.0.1:{free_port()}/0", library_dir=tmp_path / "lib")
    with serving(config) as server:
        response = requests.get(f"{server.url}/health")
        assert response.status_code == 503
        assert response.json()["redis"]["status"] == "error"
        assert response.json()["frontend"] == {"status": "ok"}
        # Routes that need Redis answer 503, not 500, and the server stays up.
        assert requests.get(f"{server.url}/queue_status").status_code == 503
        assert requests.post(f"{server.url}/prompt", json={"text": "x", "num_images": 2}).status_code == 503
        bad = requests.post(f"{server.url}/prompt", json={"text": "x", "num_images": 3})
        assert bad.status_code == 400 and bad.json()["field"] == "num_images"  # bad input: 400 all the same
        assert requests.get(f"{server.url}/getlibrary").status_code == 200


def test_health_with_redis_but_no_scheduler(url):
    response = requests.get(f"{url}/health")
    assert response.status_code == 503
    assert response.json()["scheduler"]["status"] == "error"


def test_getlibrary_pages_and_filters(url, store):
    for i in range(25):
        store.add_job(library_entry(f"{'Squirrel' if i % 5 == 0 else 'cat'} number {i}", created=1000.0 + i),
                      [png_bytes()])
    everything = requests.get(f"{url}/getlibrary").json()
    assert len(everything) == 25
    page = requests.get(f"{url}/getlibrary", params={"offset": 5, "limit": 10})
    assert page.json() == everything[5:15] and page.headers["X-Total-Count"] == "25"
    squirrels = requests.get(f"{url}/getlibrary", params={"q": "sQuIrReL"})
    assert [e["text_prompt"] for e in squirrels.json()] == [f"Squirrel number {i}" for i in (20, 15, 10, 5, 0)]
    assert squirrels.headers["X-Total-Count"] == "5"
    paged = requests.get(f"{url}/getlibrary", params={"q": "squirrel", "offset": 1, "limit": 2})
    assert [e["text_prompt"] for e in paged.json()] == ["Squirrel number 15", "Squirrel number 10"]
    assert paged.headers["X-Total-Count"] == "5"
    assert requests.get(f"{url}/getlibrary", params={"offset": 100}).json() == []
    by_score = requests.get(f"{url}/getlibrary", params={"sort": "score", "limit": 3})  # none ranked: newest first
    assert by_score.json() == everything[:3]
    for bad in ({"limit": 0}, {"limit": "ten"}, {"offset": -1}, {"limit": 100000}, {"q": "x" * 1001},
                {"sort": "best"}):
        response = requests.get(f"{url}/getlibrary", params=bad)
        assert response.status_code == 400, bad
        assert next(iter(bad)) in response.json()["error"]


def test_openapi_document_is_served_and_matches_the_routes(url, server):
    as_yaml = requests.get(f"{url}/openapi.yaml")
    as_json = requests.get(f"{url}/openapi.json")
    assert as_yaml.status_code == as_json.status_code == 200
    assert as_json.headers["Content-Type"] == "application/json"
    document = yaml.safe_load(as_yaml.text)
    assert document == as_json.json()
    validate_openapi(document)  # raises on any departure from the OpenAPI 3 schema
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    served = {(route.method, route.template) for route in server.api.router.routes}
    assert documented == served


def test_no_cors_headers_and_cross_site_writes_are_refused(url, queue):
    response = requests.post(f"{url}/prompt", json={"text": "x", "num_images": 2},
                             headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert queue.unfinished() == []
    assert requests.options(f"{url}/prompt", headers={"Origin": "https://evil.example"}).status_code == 405
    for site in ("same-site", "cross-site"):
        response = requests.post(f"{url}/prompt", json={"text": "x", "num_images": 2},
                                 headers={"Origin": url, "Sec-Fetch-Site": site})
        assert response.status_code == 403, site
    assert requests.post(f"{url}/prompt", json={"text": "x", "num_images": 2},
                         headers={"Origin": "null"}).status_code == 403
    assert queue.unfinished() == []
    # Behind a proxy that rewrites Host, the browser's Sec-Fetch-Site still says same-origin.
    proxied = requests.post(f"{url}/prompt", json={"text": "x", "num_images": 2},
                            headers={"Origin": "https://playground.example", "Sec-Fetch-Site": "same-origin"})
    assert proxied.status_code == 200
    same_origin = requests.post(f"{url}/prompt", json={"text": "x", "num_images": 2},
                                headers={"Origin": url, "Sec-Fetch-Site": "same-origin"})
    assert same_origin.status_code == 200
    assert "Access-Control-Allow-Origin" not in same_origin.headers


@pytest.fixture
def token_server(config):
    with serving(Config(**{**config.__dict__, "api_token": "s3cret-token"})) as server:
        yield server


def test_with_a_token_writes_need_it_and_reads_stay_open(token_server, queue, store, config):
    url = token_server.url
    body = {"text": "x", "num_images": "2", "seed": 1}
    stored = store.add_job(library_entry(), [png_bytes(), png_bytes()])
    image = stored["generated_images"][0]
    refused = [
        requests.post(f"{url}/prompt", json=body),
        requests.post(f"{url}/prompt", json=body, headers={"Authorization": "Bearer wrong"}),
        requests.post(f"{url}/prompt", json=body, headers={"X-API-Token": "s3cret-toke"}),
        requests.post(f"{url}/prompt", json=body, headers={"Authorization": "Basic s3cret-token"}),
        requests.post(f"{url}/deleteimage", json={"path": image}),
        requests.delete(f"{url}/{image}"),
        requests.delete(f"{url}/jobs/{stored['queue_id']}"),
    ]
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert refused[0].headers["WWW-Authenticate"].startswith("Bearer")
    assert queue.unfinished() == []
    assert (config.library_dir / image.removeprefix("library/")).exists()
    job_id = requests.post(f"{url}/prompt", json=body, headers={"Authorization": "Bearer s3cret-token"}).json()["queue_id"]
    assert requests.post(f"{url}/jobs/{job_id}/cancel").status_code == 401
    assert requests.post(f"{url}/jobs/{job_id}/cancel", headers={"X-API-Token": "s3cret-token"}).status_code == 200
    assert requests.post(f"{url}/prompt", json=body, headers={"X-API-Token": "s3cret-token"}).status_code == 200
    for path in ("/queue_status", "/getlibrary", f"/jobs/{job_id}", "/openapi.json", "/", f"/{image}"):
        assert requests.get(f"{url}{path}").status_code == 200, path


def test_a_full_queue_answers_429(redis_url, tmp_path, queue):
    config = Config(port=0, redis_url=redis_url, library_dir=tmp_path / "lib", max_queued_jobs=2)
    with serving(config) as server:
        codes = [requests.post(f"{server.url}/prompt", json={"text": "x", "num_images": 2}).status_code
                 for _ in range(3)]
    assert codes == [200, 200, 429]
    assert len(queue.unfinished()) == 2


def test_wrong_methods_and_unknown_paths(url):
    response = requests.put(f"{url}/prompt", data=b"{}")
    assert response.status_code == 405 and set(response.headers["Allow"].split(", ")) == {"POST"}
    assert requests.post(f"{url}/queue_status").status_code == 405
    assert requests.post(f"{url}/nothing-here").status_code == 404
    assert requests.request("BREW", f"{url}/prompt").status_code == 501
    assert requests.get(f"{url}/nothing-here").json() == {"error": "not found"}
    assert requests.get(f"{url}/prompt").status_code == 405
    assert requests.head(f"{url}/deleteimage").status_code == 405


def test_ipv6_loopback(redis_url, tmp_path):
    try:
        with serving(Config(host="::1", port=0, redis_url=redis_url, library_dir=tmp_path / "lib")) as server:
            port = server.server_address[1]
            assert requests.get(f"http://[::1]:{port}/queue_status").json() == []
    except OSError as exc:  # a machine without IPv6
        pytest.skip(f"no IPv6 loopback: {exc}")


def test_config_from_env_reads_every_setting(tmp_path):
    config = Config.from_env({
        "FRONTEND_HOST": "0.0.0.0", "FRONTEND_PORT": "9000", "REDIS_URL": "redis://r:6379/1",
        "LIBRARY_DIR": str(tmp_path), "STATIC_DIR": str(tmp_path / "s"), "API_TOKEN": " t ",
        "FRONTEND_MAX_BODY_BYTES": "1000", "FRONTEND_SOCKET_TIMEOUT": "2.5"})
    assert (config.host, config.port, config.redis_url, config.api_token) == ("0.0.0.0", 9000, "redis://r:6379/1", "t")
    assert (config.library_dir, config.static_dir) == (tmp_path, tmp_path / "s")
    assert (config.max_body_bytes, config.socket_timeout_secs) == (1000, 2.5)
    defaults = Config.from_env({})
    assert (defaults.host, defaults.port, defaults.api_token) == ("127.0.0.1", 8000, "")
    assert (defaults.static_dir / "index.html").is_file()
    with pytest.raises(ValueError, match="FRONTEND_PORT"):
        Config.from_env({"FRONTEND_PORT": "eighty"})


def test_a_big_library_is_sent_gzipped_to_clients_that_accept_it(url, store):
    for i in range(60):
        store.add_job(library_entry(f"prompt {i} " + "detail " * 40, created=1000.0 + i), [png_bytes()])
    plain = requests.get(f"{url}/getlibrary", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and len(plain.content) > 16 * 1024
    zipped = requests.get(f"{url}/getlibrary", headers={"Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["Content-Encoding"] == "gzip" and zipped.headers["Vary"] == "Accept-Encoding"
    assert int(zipped.headers["Content-Length"]) < len(plain.content) / 3
    assert zipped.json() == plain.json() and len(plain.json()) == 60
    refused = requests.get(f"{url}/getlibrary", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    store.add_job(library_entry("one more"), [png_bytes()])
    assert len(requests.get(f"{url}/getlibrary").json()) == 61


def test_a_loopback_server_answers_only_to_loopback_host_names(url, server, queue):
    port = server.server_address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", "localhost."):
        assert requests.get(f"{url}/queue_status", headers={"Host": host}).status_code == 200, host
    for host in (f"rebound.evil.example:{port}", "evil.example", "127.0.0.1.evil.example", ""):
        response = requests.post(f"{url}/prompt", json={"text": "x", "num_images": 2}, headers={"Host": host})
        assert response.status_code == 400 and "FRONTEND_ALLOWED_HOSTS" in response.json()["error"], host
        assert requests.get(f"{url}/getlibrary", headers={"Host": host}).status_code == 400
    assert queue.unfinished() == []


def test_allowed_hosts_add_names_or_allow_any(config):
    with serving(Config(**{**config.__dict__, "allowed_hosts": ("playground.lan",)})) as server:
        get = lambda host: requests.get(f"{server.url}/queue_status", headers={"Host": host}).status_code
        assert (get("playground.lan:8000"), get("localhost"), get("other.lan")) == (200, 200, 400)
    with serving(Config(**{**config.__dict__, "allowed_hosts": ("*",)})) as server:
        assert requests.get(f"{server.url}/queue_status", headers={"Host": "any.name"}).status_code == 200


def test_host_names_answered_by_bind_address():
    from frontend.auth import LOOPBACK_NAMES, answered_hosts, host_name

    assert answered_hosts("127.0.0.1", ()) == answered_hosts("::1", ()) == LOOPBACK_NAMES
    assert answered_hosts("localhost", ()) == LOOPBACK_NAMES
    assert answered_hosts("0.0.0.0", ()) is None  # Docker: the published port decides exposure
    assert answered_hosts("0.0.0.0", ("a.lan",)) == LOOPBACK_NAMES | {"a.lan"}
    assert answered_hosts("127.0.0.1", ("*",)) is None
    assert [host_name(h) for h in ("[::1]:80", "Example.ORG.:8000", "localhost", "10.0.0.1:1")] == [
        "::1", "example.org", "localhost", "10.0.0.1"]


def inline_refs(node, document):
    """The schema with every local `$ref` replaced by what it points to (the document has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = document
            for key in node["$ref"].removeprefix("#/").split("/"):
                target = target[key]
            return inline_refs(target, document)
        return {key: inline_refs(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [inline_refs(item, document) for item in node]
    return node


def test_responses_match_the_documented_schemas(url, server, worker, store):
    from openapi_schema_validator import OAS30Validator

    document = server.api.openapi.document

    def check(response, path: str, method: str = "get"):
        spec = document["paths"][path][method]["responses"][str(response.status_code)]
        spec = inline_refs(spec, document)
        schema = spec["content"]["application/json"]["schema"]
        OAS30Validator(schema).validate(response.json())

    worker.heartbeat(BackendStatus.READY, "tiny")
    check(requests.get(f"{url}/health"), "/health")
    first = requests.post(f"{url}/prompt", json={"text": "x", "num_images": "2", "seed": 5})
    check(first, "/prompt", "post")
    job_id = first.json()["queue_id"]
    submit(url, text="y", num_images=4, gen_top_k=5, gen_top_p=0.5, temperature=1.0, condition_scale=3)
    check(requests.get(f"{url}/queue_status"), "/queue_status")
    check(requests.post(f"{url}/prompt", json={"text": ""}), "/prompt", "post")
    claimed = worker.claim(timeout=1, model="tiny")
    worker.preview(claimed, 16, [png_bytes(), png_bytes()])
    check(requests.get(f"{url}/jobs/{job_id}"), "/jobs/{job_id}")
    check(requests.get(f"{url}/queue_status"), "/queue_status")
    entry = store.add_job(library_entry(queue_id=job_id), [png_bytes(), png_bytes()])
    worker.finish_done(claimed, seed=5, model="tiny", images=entry["generated_images"], process_time_secs=1.0)
    check(requests.get(f"{url}/jobs/{job_id}"), "/jobs/{job_id}")
    check(requests.get(f"{url}/jobs/{uuid.uuid4()}"), "/jobs/{job_id}")
    check(requests.get(f"{url}/getlibrary"), "/getlibrary")
    check(requests.get(f"{url}/getlibrary", params={"limit": 0}), "/getlibrary")
    check(requests.delete(f"{url}/{entry['generated_images'][0]}"), "/library/{queue_id}/{image_id}.png", "delete")
    check(requests.post(f"{url}/deleteimage", json={"path": entry["generated_images"][1]}), "/deleteimage", "post")
    check(requests.delete(f"{url}/jobs/{job_id}"), "/jobs/{job_id}", "delete")
    gone = requests.get(f"{url}/jobs/{job_id}")
    check(gone, "/jobs/{job_id}")
    assert gone.json()["status"] == "done" and "result" not in gone.json()


def test_an_upscale_job_redis_forgot_is_told_by_its_entry(url, store):
    """Its kind, and the larger picture in its result's generated_images."""
    source = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "a fox", "creation_unixtime": time.time()},
                           [b"\x89PNG small"])["generated_images"][0]
    upscale = store.add_job({"queue_id": str(uuid.uuid4()), "text_prompt": "a fox", "creation_unixtime": time.time(),
                             "upscale_of": source, "upscale_model": "demo", "upscale_scale": 4}, [b"\x89PNG big"])
    status = requests.get(f"{url}/jobs/{upscale['queue_id']}").json()
    assert (status["kind"], status["status"], status["result"]["upscale_of"]) == ("upscale", "done", source)
    assert status["result"]["generated_images"] == upscale["generated_images"]
    source_status = requests.get(f"{url}/jobs/{source.split('/')[1]}").json()
    assert source_status["kind"] == "generate"
