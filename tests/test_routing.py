"""Jobs routed by model: each runs on a backend serving its model, first-in-first-out per
model, with positions and ETAs counted per model; jobs naming no model (queued before any
backend said what it serves) go to whichever backend is free first."""
from __future__ import annotations

import time

import pytest
import requests

from frontend.config import Config as FrontendConfig
from frontend.threaded import serving
from frontend.validation import ValidationError, route_model
from playground.protocol import BackendStatus
from playground.queue import JobQueue
from testkit.standin_backend import StandInBackend
from scheduler.config import Config
from scheduler.service import Scheduler
from scheduler.worker_queue import WorkerQueue

pytestmark = pytest.mark.timeout(120)


def job(text: str, model: str | None = None) -> dict:
    return {"text": text, "num_images": 2, "seed": 1, "model": model}


def worker_for(redis_client, model: str, name: str) -> WorkerQueue:
    worker = WorkerQueue(redis_client, name, f"http://{name}:8080")
    assert worker.register() and worker.heartbeat(BackendStatus.READY, model=model)
    return worker


def test_each_worker_takes_only_its_model_s_jobs_in_order(redis_client):
    queue = JobQueue(redis_client)
    mega, mini = worker_for(redis_client, "mega", "gpu0"), worker_for(redis_client, "mini", "gpu1")
    submitted = [queue.submit(job(f"{model} {i}", model)) for i in range(3) for model in ("mega", "mini")]
    anyone = queue.submit(job("queued before any backend said its model"))
    mine = {model: [j.id for j in submitted if j.model == model] for model in ("mega", "mini")}

    listed = {j.id: j for j in queue.unfinished()}
    assert [listed[i].position for i in mine["mega"]] == [listed[i].position for i in mine["mini"]] == [1, 2, 3]
    assert listed[anyone.id].position == 1

    assert mini.claim(timeout=1, model="mini").id == anyone.id  # the unrouted job first, by anyone
    mini.finish_failed(queue.get(anyone.id), "not the point here")
    taken = {"mega": [], "mini": []}
    for _ in range(3):
        for model, worker in (("mini", mini), ("mega", mega)):
            claimed = worker.claim(timeout=1, model=model)
            taken[model].append(claimed.id)
            worker.finish_failed(claimed, "not the point here")
    assert taken == mine
    assert mega.claim(timeout=0.1, model="mega") is None


def test_etas_count_only_the_workers_of_the_job_s_model(redis_client):
    queue = JobQueue(redis_client)
    mega, mini = worker_for(redis_client, "mega", "gpu0"), worker_for(redis_client, "mini", "gpu1")
    mega.record_job_time(pictures=2, secs=20.0)
    mini.record_job_time(pictures=2, secs=2.0)
    slow, fast = queue.submit(job("slow", "mega")), queue.submit(job("fast", "mini"))
    listed = {j.id: j for j in queue.unfinished()}
    assert listed[slow.id].eta_secs == pytest.approx(20.0, abs=0.5)
    assert listed[fast.id].eta_secs == pytest.approx(2.0, abs=0.5)


def test_the_model_a_job_names_or_gets():
    served = {"mega": 16384, "mini": 16384}
    assert route_model("mini", served, default="mega") == "mini"
    assert route_model(None, served, default="mega") == "mega"
    assert route_model(None, served, default="demo") == "mega"  # the default is not served: the first
    assert route_model(None, {}, default="mini") == ""  # nothing reported yet: any backend
    assert route_model("mini", {}, default="mini") == "mini"
    with pytest.raises(ValidationError, match=r"model: 'tiny' is not served by any backend \(served: mega, mini\)"):
        route_model("tiny", served, default="mega")


def test_two_models_on_two_backends_through_the_whole_stack(redis_client, redis_url, tmp_path):
    """Real frontend, scheduler and two stand-in backends serving different models."""
    queue = JobQueue(redis_client)
    with StandInBackend(model="mega") as big, StandInBackend(model="mini") as small:
        service = Scheduler(Config(redis_url=redis_url, backend_urls=(big.url, small.url),
                                   library_dir=tmp_path / "library")).start()
        config = FrontendConfig(port=0, redis_url=redis_url, library_dir=tmp_path / "library", default_model="mini")
        try:
            with serving(config) as frontend:
                deadline = time.monotonic() + 10
                while requests.get(f"{frontend.url}/health").json().get("models") != ["mini", "mega"]:
                    assert time.monotonic() < deadline, requests.get(f"{frontend.url}/health").json()
                    time.sleep(0.1)
                    frontend.api._served_checked = float("-inf")  # don't wait out the 5 s cache
                ids = {}
                for text, model in (("for mega", "mega"), ("for mini", "mini"), ("for the default", None)):
                    body = {"text": text, "num_images": 2, **({"model": model} if model else {})}
                    answer = requests.post(f"{frontend.url}/prompt", json=body)
                    assert answer.status_code == 200, answer.text
                    ids[text] = answer.json()["queue_id"]
                wrong = requests.post(f"{frontend.url}/prompt", json={"text": "x", "num_images": 2, "model": "tiny"})
                assert wrong.status_code == 400 and wrong.json()["field"] == "model"
                deadline = time.monotonic() + 20
                while not all(queue.get(i).finished for i in ids.values()):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        finally:
            service.stop()
            assert service.join(timeout=15)
        assert big.calls == ["for mega"]
        assert sorted(small.calls) == ["for mini", "for the default"]
        assert {text: queue.get(i).model for text, i in ids.items()} == {
            "for mega": "mega", "for mini": "mini", "for the default": "mini"}


def test_a_job_naming_no_model_goes_to_the_one_model_served(redis_client):
    """So an idle worker, blocked on its model's queue, wakes at once; only with several
    models does it wait in the plain queue, which any worker takes between claims."""
    queue = JobQueue(redis_client)
    assert queue.submit(job("before any backend")).model is None
    mini = worker_for(redis_client, "mini", "gpu0")
    routed = queue.submit(job("one model served"))
    assert routed.model == "mini" and queue.get(routed.id).model == "mini"
    assert mini.claim(timeout=1, model="mini").id != routed.id  # the older, unrouted one first
    assert mini.claim(timeout=1, model="mini").id == routed.id
    worker_for(redis_client, "mega", "gpu1")
    assert queue.submit(job("two models served")).model is None
