"""ETA benchmark: how well the ETAs the API gives hold, for a queue of mixed jobs, slowed.

Runs the whole stack as real processes: a real redis-server, the stand-in backend
(`python -m testkit.standin_backend`) slowed to STANDIN_PICTURE_SECS per picture it draws (a
Best-of job draws its candidates) plus STANDIN_JOB_SECS per job whatever its pictures (by
default 1.6 s + 0.4 s a picture: the shape of mini on a 2-core CPU, 9.4 s + 2.2 s, 6× faster),
the scheduler (`python -m scheduler`) and the frontend (`python -m frontend`). As a client
would, it runs warm-up jobs one at a time (by default of 2 and 8 images: so the speed table is
primed, as on a server that has run a few jobs), then POSTs a mixed queue to /prompt (2 to 8
images, some Best of N) at once and polls GET /queue_status.

For each job it compares:
- at submit: the `eta_secs` of GET /jobs/<id> right after its POST, plus the seconds since
  its `created_at`, against its actual time to done (`finished_at - created_at`);
- half-way: the poll closest to half-way between its submit and its done, `eta_secs`
  against the seconds it actually still took (the time left, not the whole: stricter).
Error = |predicted - actual| / actual. It fails (exit 1) when either median is above 25 %.

It also checks that no ETA runs out while tokens are still to come. The page reads
"finishing" only once the last token is drawn; before, an `eta_secs` below 1 reads "under a
second left" (frontend/static/js/format.js). A poll of a job with tokens to come (not stalled)
whose `eta_secs` is below 1 s while the job in fact took more than a second beyond it is
counted as an ETA run out early (exit 1 if any): the old "finishing at 0/256 tokens".

With --demo the backend is the real one (`python -m backend`, the demo model, compiled for
every batch the queue uses, minutes on a CPU). A fresh backend's first job of each size takes
longer than the next (one-time costs), so give it two warm-up jobs of each size.

    .venv/bin/python benchmarks/bench_eta.py [--picture-secs 0.4] [--job-secs 1.6] [--warm-up 2,8] [--json out.json]
    .venv/bin/python benchmarks/bench_eta.py --demo --warm-up 2,8,2,8   # the real backend, demo model
    .venv/bin/python benchmarks/bench_eta.py --quick      # a short queue, fast (tests/test_benchmarks.py)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from playground.redis_server import RedisServer, free_port
from testkit.processes import ServiceProcess, backend_process, frontend_process, scheduler_process

MAX_MEDIAN_ERROR = 0.25
UNDER_A_SECOND = 1.0  # formatEta in frontend/static/js/format.js: "under a second left", "finishing"
RAN_OUT_SLACK_SECS = 1.0  # more than this beyond an ETA under a second: it ran out early
POLL_SECS = 0.2

# (num_images, candidates): the mixed queue, in the order it is submitted.
MIXED_QUEUE = [(2, None), (8, None), (2, 8), (4, None), (6, None), (8, 16), (2, 4), (6, None), (2, None), (4, 8)]
QUICK_QUEUE = [(2, None), (4, None), (2, 4), (6, None)]


@dataclass
class Tracked:
    """One job as the client saw it."""
    queue_id: str
    num_images: int
    candidates: int | None
    created_at: float = 0.0
    finished_at: float | None = None
    submit_predicted: float | None = None  # seconds from created_at to done, as predicted at submit
    polls: list[tuple[float, dict]] = field(default_factory=list)  # (time.time(), its /queue_status entry)

    @property
    def label(self) -> str:
        return f"{self.num_images} images" + (f", best of {self.candidates}" if self.candidates else "")

    @property
    def actual(self) -> float:
        return self.finished_at - self.created_at

    def half_way(self) -> tuple[float, float] | None:
        """(predicted, actual) seconds left at the poll closest to half-way, or None."""
        middle = self.created_at + self.actual / 2
        timed = [(at, entry) for at, entry in self.polls if entry["eta_secs"] is not None]
        if not timed:
            return None
        at, entry = min(timed, key=lambda poll: abs(poll[0] - middle))
        return entry["eta_secs"], self.finished_at - at

    def under_a_second(self) -> list[tuple[float, str]]:
        """The polls with tokens to come and an ETA under a second, each with the time the job
        in fact still took."""
        found = []
        for at, entry in self.polls:
            progress = entry["progress"]
            drawing = entry["status"] == "queued" or progress["tokens_done"] < progress["total_tokens"]
            if (drawing and entry["eta_secs"] is not None and entry["eta_secs"] < UNDER_A_SECOND
                    and entry["stalled_secs"] is None):
                found.append((self.finished_at - at,
                              f"{at - self.created_at:.1f} s after submit: {entry['status']}, "
                              f"{progress['tokens_done']}/{progress['total_tokens']} tokens, "
                              f"eta {entry['eta_secs']} s, took {self.finished_at - at:.1f} s more"))
        return found

    def ran_out(self) -> list[str]:
        """The polls whose ETA ran out while tokens were to come and the job took longer."""
        return [text for left, text in self.under_a_second() if left > UNDER_A_SECOND + RAN_OUT_SLACK_SECS]


def error(predicted: float, actual: float) -> float:
    return abs(predicted - actual) / actual


def start_stack(workdir: Path, picture_secs: float, job_secs: float,
                demo: bool) -> tuple[RedisServer, list[ServiceProcess]]:
    redis_server = RedisServer(workdir / "redis").start()
    logs, library = workdir / "logs", workdir / "library"
    if demo:  # compiled beforehand for every batch the queue asks for, as a deployment would be
        backend = backend_process(logs, workdir / "models", model="demo",
                                  extra_env={"BACKEND_WARMUP_BATCH_SIZES": "2,4,6,8,16"})
    else:
        port = free_port()
        backend = ServiceProcess("testkit.standin_backend", {
            "STANDIN_PORT": str(port), "STANDIN_PICTURE_SECS": str(picture_secs), "STANDIN_JOB_SECS": str(job_secs)},
            logs / "backend.log", url=f"http://127.0.0.1:{port}")
    scheduler = scheduler_process(logs, redis_server.url, [backend.url], library)
    frontend = frontend_process(logs, redis_server.url, library)
    processes = [backend, scheduler, frontend]
    for process in processes:
        process.start()
    frontend.wait_until(lambda: _ok(frontend.url + "/health"), 900 if demo else 60,
                        "200 from /health (every part ready)", interval=0.2)
    return redis_server, processes


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def submit(session: requests.Session, url: str, num_images: int, candidates: int | None, text: str) -> Tracked:
    body = {"text": text, "num_images": num_images, "seed": 1}
    if candidates:
        body["candidates"] = candidates
    response = session.post(url + "/prompt", json=body, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"POST /prompt {body}: {response.status_code} {response.text}")
    job = Tracked(response.json()["queue_id"], num_images, candidates)
    status = session.get(f"{url}/jobs/{job.queue_id}", timeout=30).json()
    seen = time.time()
    job.created_at = status["created_at"]
    if status["eta_secs"] is not None:
        job.submit_predicted = seen - job.created_at + status["eta_secs"]
    return job


def wait_done(session: requests.Session, url: str, jobs: list[Tracked], timeout: float) -> None:
    """Poll /queue_status until every job is done, keeping each job's entries."""
    pending = {job.queue_id: job for job in jobs}
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs not done within {timeout} s")
        listed = session.get(url + "/queue_status", timeout=30).json()
        now = time.time()
        listed_ids = {entry["queue_id"] for entry in listed}
        for entry in listed:
            if entry["queue_id"] in pending:
                pending[entry["queue_id"]].polls.append((now, entry))
        for queue_id in [queue_id for queue_id in pending if queue_id not in listed_ids]:
            status = session.get(f"{url}/jobs/{queue_id}", timeout=30).json()
            if status["status"] in ("queued", "running"):  # between two reads as it finishes
                continue
            if status["status"] != "done":
                raise RuntimeError(f"job {queue_id} ended {status['status']}: {status.get('error')}")
            pending.pop(queue_id).finished_at = status["finished_at"]
        time.sleep(POLL_SECS)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def report(jobs: list[Tracked]) -> dict:
    rows, submit_errors, half_errors, ran_out, under = [], [], [], {}, 0
    for index, job in enumerate(jobs, start=1):
        half = job.half_way()
        row = {"job": index, "queue_id": job.queue_id, "num_images": job.num_images, "candidates": job.candidates,
               "actual_secs": round(job.actual, 2),
               "submit_predicted_secs": None if job.submit_predicted is None else round(job.submit_predicted, 2),
               "submit_error": None if job.submit_predicted is None else error(job.submit_predicted, job.actual),
               "half_predicted_secs": None if half is None else half[0],
               "half_actual_secs": None if half is None else round(half[1], 2),
               "half_error": None if half is None else error(*half)}
        rows.append(row)
        if row["submit_error"] is not None:
            submit_errors.append(row["submit_error"])
        if row["half_error"] is not None:
            half_errors.append(row["half_error"])
        under += len(job.under_a_second())
        if job.ran_out():
            ran_out[job.queue_id] = job.ran_out()
    return {"jobs": rows,
            # A job without a prediction counts as wrong (100 %): "ETA unknown" is no ETA.
            "median_submit_error": statistics.median(submit_errors + [1.0] * (len(jobs) - len(submit_errors))),
            "median_half_error": statistics.median(half_errors + [1.0] * (len(jobs) - len(half_errors))),
            "under_a_second_polls": under, "ran_out_early": ran_out}


def print_report(result: dict, jobs: list[Tracked]) -> None:
    print(f"{'job':>3}  {'pictures':<22} {'actual':>7} {'at submit':>10} {'error':>6}   "
          f"{'half-way: left':>14} {'predicted':>9} {'error':>6}")
    for row, job in zip(result["jobs"], jobs):
        print(f"{row['job']:>3}  {job.label:<22} {row['actual_secs']:>6.1f}s "
              f"{_secs(row['submit_predicted_secs']):>10} {percent(row['submit_error']):>6}   "
              f"{_secs(row['half_actual_secs']):>14} {_secs(row['half_predicted_secs']):>9} "
              f"{percent(row['half_error']):>6}")
    print(f"median error at submit: {percent(result['median_submit_error'])}, "
          f"half-way: {percent(result['median_half_error'])} (at most {percent(MAX_MEDIAN_ERROR)})")
    count = sum(len(polls) for polls in result["ran_out_early"].values())
    print(f"polls with tokens to come and an ETA under a second: {result['under_a_second_polls']}; of which the "
          f"job took over {UNDER_A_SECOND + RAN_OUT_SLACK_SECS:.0f} s more (an ETA run out early): {count}" + "".join(
              f"\n  {queue_id}: {polls[0]}" for queue_id, polls in result["ran_out_early"].items()))


def _secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picture-secs", type=float, default=0.4, help="the stand-in's seconds per picture drawn")
    parser.add_argument("--job-secs", type=float, default=1.6,
                        help="the stand-in's seconds per job whatever its pictures")
    parser.add_argument("--quick", action="store_true",
                        help="4 jobs at 0.2 s + 0.05 s a picture: that it runs and reports; no verdict")
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--demo", action="store_true",
                        help="the real backend with the demo model instead of the stand-in (slower, noisier)")
    parser.add_argument("--warm-up", default="2,8", help="the images of each warm-up job, one after the other")
    args = parser.parse_args()
    queue = QUICK_QUEUE if args.quick else MIXED_QUEUE
    picture_secs, job_secs = (0.05, 0.2) if args.quick else (args.picture_secs, args.job_secs)

    backend = "the demo model" if args.demo else f"stand-in: {job_secs} s a job + {picture_secs} s a picture drawn"
    print(f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}, {os.cpu_count()} CPUs; "
          f"{backend}; warm-up jobs of {args.warm_up} images", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        redis_server, processes = start_stack(Path(tmp), picture_secs, job_secs, args.demo)
        url = processes[-1].url
        try:
            with requests.Session() as session:
                for images in args.warm_up.split(","):
                    wait_done(session, url, [submit(session, url, int(images), None, "warm-up")], timeout=120)
                jobs = [submit(session, url, num_images, candidates, f"job {index}")
                        for index, (num_images, candidates) in enumerate(queue, start=1)]
                total = sum(job_secs + picture_secs * (candidates or num_images) for num_images, candidates in queue)
                wait_done(session, url, jobs, timeout=(1800 if args.demo else 120) + 10 * total)
        except BaseException:
            for process in processes:
                print(f"--- {process.module} ---\n{process.log_tail(2000)}", file=sys.stderr)
            raise
        finally:
            for process in reversed(processes):
                process.stop()
            redis_server.stop()

    result = report(jobs)
    result.update(backend="demo" if args.demo else "stand-in", picture_secs=picture_secs, job_secs=job_secs,
                  warm_up=args.warm_up,
                  load_average=os.getloadavg())
    print_report(result, jobs)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.quick:
        return 0
    holds = (result["median_submit_error"] <= MAX_MEDIAN_ERROR and result["median_half_error"] <= MAX_MEDIAN_ERROR
             and not result["ran_out_early"])
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
