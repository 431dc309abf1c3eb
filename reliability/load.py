"""Load: many prompts from many concurrent clients while UI pollers hit /queue_status and
/getlibrary; the queue drains for a while, the rest is cancelled; every prompt accounted for,
and the frontend's latency (p50/p99) measured during the run."""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from reliability.cluster import Client, Cluster, Recorder
from reliability.scenario import ScenarioResult, Timer, finish

POLL_ROUTES = ("GET /queue_status", "GET /getlibrary", "GET /getlibrary?limit=50")
POLL_INTERVAL_SECS = 0.5


def _poller(client: Client, stop: threading.Event, deadline: float) -> None:
    """One browser tab: the queue and the library, every half second, until told to stop."""
    while not stop.is_set() and time.monotonic() < deadline:
        client.request("GET", "/queue_status", "GET /queue_status")
        client.request("GET", "/getlibrary", "GET /getlibrary")
        client.request("GET", "/getlibrary?offset=0&limit=50", "GET /getlibrary?limit=50")
        stop.wait(POLL_INTERVAL_SECS)


def load(cluster: Cluster, prompts: int = 200, clients: int = 20, pollers: int = 3,
         drain_secs: float = 10.0, seed: int = 8) -> ScenarioResult:
    result = ScenarioResult(
        "load", "load", f"{prompts} prompts from {clients} concurrent clients while {pollers} UI pollers "
        f"hit /queue_status and /getlibrary every {POLL_INTERVAL_SECS} s; {drain_secs:.0f} s of draining, "
        "then the rest cancelled")
    recorder = Recorder()
    client = cluster.client(recorder)
    rng = random.Random(seed)
    bodies = [{"text": f"load {i}: {rng.choice(['a fox', 'a robot', 'a castle', 'a teapot'])} "
                       f"{rng.choice(['at dawn', 'in the snow', 'made of glass', 'on the moon'])}",
               "num_images": "2", "seed": rng.randrange(1, 2**32)} for i in range(prompts)]
    stop = threading.Event()
    with Timer() as timer:
        poll_threads = [threading.Thread(target=_poller, args=(client, stop, time.monotonic() + 600), daemon=True)
                        for _ in range(pollers)]
        for thread in poll_threads:
            thread.start()
        submit_started = time.monotonic()

        def submit(body: dict) -> str | None:
            response = client.request("POST", "/prompt", "POST /prompt", json=body)
            return response.json()["queue_id"] if response is not None and response.status_code == 200 else None

        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(submit, bodies))
        submit_secs = time.monotonic() - submit_started
        ids = [queue_id for queue_id in answers if queue_id]
        result.figures["submission rate (prompts/s)"] = round(len(bodies) / submit_secs, 1)
        result.check("every prompt accepted", len(ids) == prompts, f"{prompts - len(ids)} refused or unanswered")
        time.sleep(drain_secs)
        # The rest is cancelled, as a user clearing the queue would; each answer must say so.
        cancel_answers = {}
        with ThreadPoolExecutor(clients) as pool:
            for queue_id, status in zip(ids, pool.map(client.cancel, ids)):
                cancel_answers[queue_id] = status
        result.figures["cancel answers"] = {str(k): v for k, v in
                                            sorted(_count(cancel_answers.values()).items(), key=str)}
        result.check("every cancel answered 200 (queued/running) or 409 (already finished)",
                     all(status in (200, 409) for status in cancel_answers.values()),
                     str(result.figures["cancel answers"]))
        settled = cluster.wait_settled(client, ids, 60)
        result.check("every job ends (done or cancelled) within 60 s of the cancels", settled)
        stop.set()
        for thread in poll_threads:
            thread.join(10)
        accounting = cluster.account(client, ids)
        result.check("done + cancelled + failed = submitted",
                     accounting.done + accounting.cancelled + accounting.failed == len(ids),
                     str(accounting.as_dict()))
        result.check("every job cancelled while queued ends cancelled",
                     accounting.cancelled >= sum(1 for s in cancel_answers.values() if s == 200) - 1,
                     f"{accounting.cancelled} cancelled, {sum(1 for s in cancel_answers.values() if s == 200)} "
                     "cancel answers 200 (one may have finished while being stopped)")
        queue = client.request("GET", "/queue_status", "GET /queue_status")
        leftover = [job for job in (queue.json() if queue is not None else []) if job["queue_id"] in set(ids)]
        result.check("/queue_status holds none of them at the end", queue is not None and not leftover,
                     f"{len(leftover)} left")
    result.seconds = round(timer.seconds, 1)
    result.inputs_tried = recorder.total
    finish(result, recorder, accounting, cluster.library_check())
    fives = [e for e in result.http["server_errors"]]
    result.check("no 5xx answer", not fives, "; ".join(fives[:5]))
    for route in ("POST /prompt", *POLL_ROUTES):
        p50, p99 = result.latency(route, 50), result.latency(route, 99)
        result.figures[f"{route} p50/p99 (ms)"] = (f"{p50 * 1000:.1f} / {p99 * 1000:.1f}" if p50 is not None else "-")
    return result


def _count(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


SCENARIOS = [load]
