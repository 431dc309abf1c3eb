"""Chaos (issue 19): three stand-in backends of two slots each (two jobs at once, a scheduler
worker per slot) and two schedulers on one Redis, hundreds of jobs, while a seeded random loop
kills (-9), pauses (SIGSTOP past the heartbeat, then SIGCONT) and restarts the services at
random times, Redis included; some pauses catch a scheduler while it
stores a result (its staging folder exists). At the end every job must have ended exactly once,
the library must hold exactly the done jobs' images, and no backend may have been sent a job
after it ended (in particular after a cancel). A watcher reads the library all along: no result
may be seen that is not its job's final one (a stale claim's, or one listed and taken out again).

Both schedulers list all three backends, so they compete for each backend's worker identity
and take over from each other whenever one dies or pauses. The stand-ins log each /generate
they receive (`generate <job id>.<claim> <unix time>`); the job's `finished_at` is Redis's
time, on the same host clock. Same seed, same jobs, cancels and faults (their timing against
the services' own cannot be replayed exactly, so a failure is re-run with its seed).

    python -m reliability --only chaos --seed 19
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import redis

from playground.library import STAGING_DIR, LibraryStore
from playground.queue import JobQueue
from playground.queue.job import UUID_PATTERN, Job
from playground.queue.keys import Keys
from playground.redis_server import RedisServer, free_port
from testkit.processes import ServiceProcess, scheduler_process
from reliability.cluster import Accounting
from reliability.scenario import ScenarioResult

log = logging.getLogger("reliability.chaos")

DEFAULT_SEED = 19
HEARTBEAT_TTL = 2          # SCHEDULER_HEARTBEAT_TTL: a paused scheduler loses its backends after this
STALL_TIMEOUT = 3          # SCHEDULER_STALL_TIMEOUT: a paused backend is given up after this
STEP_SECS = 0.05           # each stand-in job: 4 progress lines this far apart, then done
BACKENDS = 3
BACKEND_SLOTS = 2          # each stand-in says it runs two jobs at once: a scheduler worker per slot
SCHEDULERS = 2
CANCEL_SHARE = 0.05
SETTLE_SECS = 4.0          # after the last job ends: time for the sweeps to settle `.staging`
_GENERATE = re.compile(rf"generate ({UUID_PATTERN})\.(\d+) (\d+\.\d+)")  # stderr may share its line
FENCED_LINE = "was taken over by another worker"
_FENCED_RUN = re.compile(rf"job ({UUID_PATTERN}): claim (\d+) {FENCED_LINE}")
CHECK_AFTER_CANCEL = "no job was sent to a backend after it was cancelled (stale claims fenced off apart)"
CHECK_AFTER_END = "no job was sent to a backend after it ended (stale claims fenced off apart)"
CHECK_VISIBLE = "every result seen in the library during the run is its done job's final one"
STORING_PAUSE = "SIGSTOP while storing"
FAULTS = ("kill -9", "SIGSTOP", STORING_PAUSE)
STORING_SHARE = 0.25       # of the random faults: a scheduler paused while it stores a result
STORING_WATCH_SECS = 3.0   # how long such a fault waits for a scheduler to store something
WATCH_SECS = 0.02          # the library watcher's pace
_UUID = re.compile(UUID_PATTERN)


AFTER_PAUSE, FENCED, LATE = "read after a pause", "fenced off", "late"
RESUME_SLACK_SECS = 1.5    # a resumed stand-in may read its socket before the fault loop records the SIGCONT


def pause_windows(fault_times: list[tuple[float, str, str]]) -> dict[str, list[tuple[float, float]]]:
    """Each service's pauses as (SIGSTOP, SIGCONT) times, from the fault loop's log."""
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    stopped_at: dict[str, float] = {}
    for at, action, name in fault_times:
        if action in ("SIGSTOP", STORING_PAUSE):
            stopped_at[name] = at
        elif action == "SIGCONT" and name in stopped_at:
            windows[name].append((stopped_at.pop(name), at))
    return windows


def late_arrival(at: float, ended: float, backend_pauses: list[tuple[float, float]], fenced: bool) -> str:
    """Why a claim reached a backend at `at`, after its job ended at `ended`: the backend was
    stopped before the end and resumed just before `at` (it read a request its worker had
    given up on), or Redis refused the claim's run (`fenced`), or neither: a fault of ours."""
    if any(stop <= ended and stop <= at and cont >= at - RESUME_SLACK_SECS for stop, cont in backend_pauses):
        return AFTER_PAUSE
    return FENCED if fenced else LATE


class _Redis:
    """The chaos' own redis-server as a fault target (kill -9 + restart, pause + resume)."""

    name = "redis"

    def __init__(self, server: RedisServer):
        self.server = server

    def alive(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None

    def kill(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start(timeout=30)

    def pause(self) -> None:
        os.kill(self.server.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            os.kill(self.server.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.server.stop()


class _Service:
    """A ServiceProcess under a short name, with the same face as _Redis."""

    def __init__(self, name: str, process: ServiceProcess):
        self.name, self.process = name, process

    def alive(self) -> bool:
        return self.process.alive()

    def kill(self) -> None:
        self.process.kill()

    def start(self) -> None:
        self.process.start()

    def pause(self) -> None:
        self.process.pause()

    def resume(self) -> None:
        if self.alive():
            self.process.resume()

    def stop(self) -> None:
        self.process.stop(timeout=10)


class _FaultLoop(threading.Thread):
    """Every 0.6–2.0 s (seeded) one service that is not already down or paused gets a fault;
    each fault's recovery (restart, SIGCONT) is due after a seeded delay. `actions` is the
    log: (seconds since the start, action, target)."""

    def __init__(self, services: list, rng: random.Random, started: float, storing):
        super().__init__(name="chaos faults", daemon=True)
        self.services, self.rng, self.started = services, rng, started
        self.storing = storing  # () -> the scheduler now storing a result, or None
        self.storing_until = 0.0  # while armed: pause the next scheduler seen storing
        self.stop_faults = threading.Event()
        self.actions: list[tuple[float, str, str]] = []
        self.wall: list[tuple[float, str, str]] = []   # the same with the host's clock (time.time())
        self.pending: list[tuple[float, str, object]] = []  # (due, action, service)
        self.error: BaseException | None = None
        self.first = [(kind, kill) for kind in ("redis", "scheduler", "backend") for kill in (True, False)]
        self.first.append(("storing", False))
        rng.shuffle(self.first)

    def _do(self, action: str, service) -> None:
        at, wall = time.monotonic(), time.time()   # before: the service may act before we look again
        getattr(service, {"restart": "start", "SIGCONT": "resume", "kill -9": "kill",
                          "SIGSTOP": "pause", STORING_PAUSE: "pause"}[action])()
        self.actions.append((round(at - self.started, 2), action, service.name))
        self.wall.append((wall, action, service.name))

    def _pause(self, action: str, service, now: float) -> None:
        self._do(action, service)
        self.pending.append((now + HEARTBEAT_TTL + self.rng.uniform(0.5, 2.5), "SIGCONT", service))

    def run(self) -> None:
        try:
            next_fault = time.monotonic() + self.rng.uniform(0.6, 2.0)
            while not self.stop_faults.is_set() or self.pending:
                now = time.monotonic()
                for item in sorted(self.pending, key=lambda p: p[0]):
                    if item[0] <= now or self.stop_faults.is_set():
                        self.pending.remove(item)
                        self._do(item[1], item[2])
                busy = {service for _, _, service in self.pending}
                if self.storing_until and not self.stop_faults.is_set():
                    storing = self.storing()
                    if storing is not None and storing not in busy:
                        self._pause(STORING_PAUSE, storing, now)
                        self.storing_until = 0.0
                    elif now > self.storing_until:
                        self.storing_until = 0.0
                if not self.stop_faults.is_set() and now >= next_fault:
                    free = [s for s in self.services if s not in busy]
                    # Every kind of fault comes at least once: first these, in a seeded order.
                    first = [(kind, kill) for kind, kill in self.first
                             if kind == "storing" or any(s.name.startswith(kind) for s in free)]
                    if first:
                        kind, kill = first[0]
                        self.first.remove(first[0])
                        free = [s for s in free if s.name.startswith(kind)]
                    else:
                        kind = ""
                    if kind == "storing" or (not first and self.rng.random() < STORING_SHARE):
                        # Armed until a scheduler is caught storing (the first time: until it is).
                        self.storing_until = float("inf") if first else now + STORING_WATCH_SECS
                    elif free:
                        service = self.rng.choice(free)
                        if (kill if first else self.rng.random() < 0.5):
                            self._do("kill -9", service)
                            self.pending.append((now + self.rng.uniform(0.3, 3.0), "restart", service))
                        else:
                            self._pause("SIGSTOP", service, now)
                    next_fault = now + self.rng.uniform(0.6, 2.0)
                time.sleep(0.003 if self.storing_until else 0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc
            log.exception("the fault loop broke")


class _Storing:
    """Which scheduler is storing a result now: a folder in the library's `.staging` names the
    job and claim; the job's worker identity is held by a process (host:pid:…) in Redis."""

    def __init__(self, redis_url: str, keys: Keys, library_dir: Path, schedulers: list):
        # Short timeouts: Redis itself may be paused or down.
        self.client = redis.Redis.from_url(redis_url, socket_timeout=0.2, socket_connect_timeout=0.2)
        self.keys, self.staging, self.schedulers = keys, library_dir / STAGING_DIR, schedulers

    def __call__(self):
        try:
            names = [p.name for p in self.staging.iterdir()]
        except OSError:
            return None
        for name in names:
            job_id, _, claim = name.partition(".")
            try:
                worker, current = self.client.hmget(self.keys.job(job_id), "worker", "claim")
                holder = self.client.get(self.keys.alive(worker.decode())) if worker else None
            except redis.RedisError:
                return None
            if holder is None or current is None or current.decode() != claim:
                continue
            pid = holder.decode().split(":")[1]
            for scheduler in self.schedulers:
                if scheduler.alive() and str(scheduler.process.pid) == pid:
                    return scheduler
        return None


class _Visible(threading.Thread):
    """What a reader of the library saw during the run: each job's images as library.json
    listed them, and the pictures its folder held, read again and again."""

    def __init__(self, library_dir: Path):
        super().__init__(name="chaos library watcher", daemon=True)
        self.library_dir = library_dir
        self.listed: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        self.files: dict[str, set[str]] = defaultdict(set)
        self.looks = 0
        self.stop_watching = threading.Event()

    def run(self) -> None:
        index = self.library_dir / "library.json"
        while not self.stop_watching.wait(WATCH_SECS):
            try:
                entries = json.loads(index.read_bytes()) if index.exists() else []
                for entry in entries:
                    self.listed[entry["queue_id"]].add(tuple(entry.get("generated_images") or ()))
                for folder in self.library_dir.iterdir():
                    if _UUID.fullmatch(folder.name):
                        self.files[folder.name].update(p.name for p in folder.iterdir() if p.suffix == ".png")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a folder that went while read: the next look sees the rest
            self.looks += 1


def _retrying(what, call, deadline: float, counter: Counter):
    """`call()` until Redis answers (it may be down or paused for a few seconds)."""
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            counter[what] += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not answer {what} for too long: {exc}") from exc
            time.sleep(0.1)


def chaos(cluster, jobs: int = 200, seed: int = DEFAULT_SEED, submit_secs: float | None = None,
          drain_secs: float = 120.0, workdir: Path | None = None, appendfsync: str = "always") -> ScenarioResult:
    """Run the chaos scenario; only the cluster's work folder is used (the chaos has its own
    Redis, backends and schedulers)."""
    workdir = Path(workdir or Path(cluster.workdir) / "chaos")
    logs, library_dir = workdir / "logs", workdir / "library"
    submit_secs = submit_secs if submit_secs is not None else jobs * 0.12
    result = ScenarioResult("chaos", "faults", f"{jobs} jobs on {BACKENDS} stand-in backends of {BACKEND_SLOTS} "
                            f"slots and {SCHEDULERS} "
                            "schedulers sharing one Redis, while random services (Redis included) are killed "
                            "(-9) and restarted, or paused past the heartbeat (some while storing a result) and resumed (seed "
                            f"{seed}; `python -m reliability --only chaos --seed {seed}` replays it)")
    rng = random.Random(seed)
    plan = random.Random(f"{seed}:jobs")   # the jobs and cancels, apart from the faults' draws
    # appendfsync always: the queue's guarantees assume Redis keeps what it acknowledged. With
    # everysec (the compose file's trade-off, docs/scheduler.md) a kill -9 can drop the last
    # second of acknowledged writes, e.g. a submitted job (seen with seed 6).
    server = RedisServer(workdir / "redis", appendonly=True, appendfsync=appendfsync)
    backends = []
    for i in range(BACKENDS):
        port = free_port()
        backends.append(_Service(f"backend-{i + 1}", ServiceProcess(
            "testkit.standin_backend", {"STANDIN_PORT": str(port), "STANDIN_STEP_SECS": str(STEP_SECS),
                                        "STANDIN_SLOTS": str(BACKEND_SLOTS)},
            logs / f"backend-{i + 1}.log", url=f"http://127.0.0.1:{port}")))
    env = {"SCHEDULER_HEARTBEAT_TTL": str(HEARTBEAT_TTL), "SCHEDULER_STALL_TIMEOUT": str(STALL_TIMEOUT)}
    schedulers = [_Service(f"scheduler-{name}", scheduler_process(
        logs, server.url, [b.process.url for b in backends], library_dir, env, name=f"scheduler-{name}"))
        for name in "ab"[:SCHEDULERS]]
    redis_target = _Redis(server)
    services = [*backends, *schedulers, redis_target]
    started = time.monotonic()
    faults: _FaultLoop | None = None
    watcher = _Visible(library_dir)
    retries: Counter = Counter()
    submitted: list[str] = []
    cancels: list[tuple[float, str, str]] = []   # (seconds since the start, job id, status then)
    try:
        server.start()
        for service in [*backends, *schedulers]:
            service.start()
        for backend in backends:
            backend.process.wait_healthy(30)
        client = redis.Redis.from_url(server.url, socket_timeout=15, socket_connect_timeout=2)
        queue = JobQueue(client, max_queued=jobs + 10)
        faults = _FaultLoop(services, rng, started, _Storing(server.url, queue.keys, library_dir, schedulers))
        faults.start()
        watcher.start()

        cancel_at: list[tuple[float, str]] = []
        gap = submit_secs / jobs
        for i in range(jobs):
            deadline = time.monotonic() + 60
            job = _retrying("submit", lambda i=i: queue.submit(
                {"text": f"chaos {seed}/{i}: a lighthouse in a storm", "num_images": 2, "seed": i + 1}),
                deadline, retries)
            submitted.append(job.id)
            if plan.random() < CANCEL_SHARE:
                cancel_at.append((time.monotonic() + plan.uniform(0.0, 3.0), job.id))
            for due, job_id in [c for c in cancel_at if c[0] <= time.monotonic()]:
                cancel_at.remove((due, job_id))
                cancelled = _retrying("cancel", lambda job_id=job_id: queue.cancel(job_id), deadline, retries)
                cancels.append((round(time.monotonic() - started, 2), job_id, cancelled.status))
            time.sleep(plan.uniform(0.5, 1.5) * gap)
        for due, job_id in sorted(cancel_at):
            time.sleep(max(0.0, due - time.monotonic()))
            cancelled = _retrying("cancel", lambda job_id=job_id: queue.cancel(job_id),
                                  time.monotonic() + 60, retries)
            cancels.append((round(time.monotonic() - started, 2), job_id, cancelled.status))

        def finished_count() -> int:
            """Jobs that ended, and those Redis no longer has (they never will: checked below)."""
            pipe = client.pipeline(transaction=False)
            for job_id in submitted:
                pipe.hget(queue.keys.job(job_id), "status")
            return sum(s in (None, b"done", b"failed", b"cancelled") for s in pipe.execute())

        # Faults go on until most jobs have finished (the last ones run on a calm cluster).
        faults_deadline = time.monotonic() + max(30.0, submit_secs)
        while time.monotonic() < faults_deadline:
            try:
                if finished_count() >= 0.9 * jobs:
                    break
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            time.sleep(0.5)
        faults.stop_faults.set()
        faults.join(30)
        faults_secs = round(time.monotonic() - started, 1)
        for service in services:   # every service running and resumed
            if not service.alive():
                service.start()
            service.resume()
        drained = time.monotonic() + drain_secs
        while time.monotonic() < drained:
            try:
                if finished_count() == jobs:
                    break
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            time.sleep(0.5)
        drain_end = time.monotonic()
        time.sleep(SETTLE_SECS)   # the schedulers' sweeps settle what crashes left in `.staging`
        watcher.stop_watching.set()
        watcher.join(10)
        _check(result, client, queue.keys, submitted, cancels, library_dir, logs, backends, faults.wall, watcher)
        result.figures.update({
            "seed": seed,
            "faults": sum(a in FAULTS for _, a, _ in faults.actions),
            "faults by kind and target": dict(sorted(Counter(f"{a} {t}" for _, a, t in faults.actions
                                                             if a in FAULTS).items())),
            "faults stopped at (s)": faults_secs,
            "all jobs ended at (s)": round(drain_end - started, 1),
            "cancels asked": len(cancels),
            "client retries while Redis was down or paused": dict(retries),
            "Redis appendfsync": appendfsync,
            "fault log (s since start, action, target)": [f"{t:.2f} {a} {name}" for t, a, name in faults.actions],
            "cancel log (s since start, job, status then)": [f"{t:.2f} {j} {s}" for t, j, s in cancels],
        })
        if faults.error:
            result.check("the fault loop ran to the end", False, repr(faults.error))
    except Exception as exc:  # noqa: BLE001 - the scenario broke: say so with the logs' tails
        result.error = f"{exc.__class__.__name__}: {exc} (logs in the work folder's chaos/logs)"
        log.exception("chaos broke")
    finally:
        watcher.stop_watching.set()
        if faults is not None:
            faults.stop_faults.set()
            faults.join(30)
        for service in services:
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - best effort: the next service still gets stopped
                log.exception("could not stop %s", service.name)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _check(result: ScenarioResult, client: redis.Redis, keys: Keys, submitted: list[str],
           cancels: list[tuple[float, str, str]], library_dir: Path, logs: Path, backends: list,
           fault_times: list[tuple[float, str, str]], watcher: _Visible) -> None:
    # Every job Redis knows, not only those whose submit answered: a submit cut off by a kill of
    # Redis may have been stored all the same, and must then end like any other.
    known = {key.decode().rsplit(":", 1)[1] for key in client.scan_iter(match=keys.job("*"), count=1000)}
    unanswered = known - set(submitted)
    ids = list(submitted) + sorted(unanswered)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(keys.job(job_id))
    records = {job_id: Job.from_hash(raw) if raw else None for job_id, raw in zip(ids, pipe.execute())}

    # 1. every job ended exactly once: done, failed with a reason, or cancelled.
    statuses = Counter(job.status if job else "missing" for job in records.values())
    accounting = Accounting(submitted=len(ids), done=statuses["done"], failed=statuses["failed"],
                            cancelled=statuses["cancelled"], queued=statuses["queued"],
                            running=statuses["running"], lost=statuses["missing"])
    for job_id, job in records.items():
        if job is None:
            accounting.problems.append(f"{job_id}: no record in Redis")
        elif job.status == "failed":
            accounting.failure_reasons[(job.error or "no reason")[:60]] += 1
    result.accounting = accounting
    unfinished = [f"{job_id} {job.status if job else 'missing'}" for job_id, job in records.items()
                  if job is None or job.status not in ("done", "failed", "cancelled")]
    result.check("every job ended (done, failed or cancelled)", not unfinished,
                 f"{len(unfinished)} not: " + "; ".join(unfinished[:5]))
    reasonless = [job_id for job_id, job in records.items() if job and job.status == "failed" and not job.error]
    result.check("every failed job has a reason", not reasonless, "; ".join(reasonless[:5]))
    stray = [job_id for job_id, job in records.items() if job and job.status != "done" and job.images]
    result.check("only done jobs have images in Redis", not stray, "; ".join(stray[:5]))
    cancelled_asked = {job_id for _, job_id, _ in cancels}
    uncancelled = [job_id for job_id in cancelled_asked
                   if records.get(job_id) and records[job_id].status not in ("cancelled", "done", "failed")]
    result.check("every cancel asked for was honoured (or came too late)", not uncancelled, "; ".join(uncancelled[:5]))

    # 2. library.json: one entry per done job, none for another; exactly its images on disk.
    index = library_dir / "library.json"
    try:
        parsed = json.loads(index.read_bytes()) if index.exists() else []
        valid = isinstance(parsed, list) and all(isinstance(e, dict) and e.get("queue_id") for e in parsed)
    except (OSError, ValueError) as exc:
        parsed, valid = None, False
        log.warning("library.json unreadable: %s", exc)
    result.check("library.json valid", valid, "not a list of entries")
    entries = LibraryStore(library_dir).entries()
    by_id = Counter(e.get("queue_id") for e in entries)
    done = {job_id for job_id, job in records.items() if job and job.status == "done"}
    problems = [f"{qid}: {n} entries" for qid, n in by_id.items() if n > 1]
    problems += [f"{qid}: no entry for a done job" for qid in sorted(done - set(by_id))]
    problems += [f"{qid}: entry for a {records[qid].status if records.get(qid) else 'unknown'} job"
                 for qid in sorted(set(by_id) - done)]
    result.check("library.json: exactly one entry per done job, none for any other", not problems,
                 f"{len(problems)}: " + "; ".join(problems[:5]))
    image_problems = []
    for entry in entries:
        qid = entry.get("queue_id")
        job = records.get(qid)
        if job is None:
            continue
        urls = entry.get("generated_images") or []
        if urls != job.images:
            image_problems.append(f"{qid}: library.json lists {len(urls)} images, Redis {len(job.images)} others")
        missing = [u for u in urls if not (library_dir.parent / u).is_file()]
        if missing:
            image_problems.append(f"{qid}: {len(missing)} listed images missing")
        on_disk = sorted(p.name for p in (library_dir / qid).glob("*.png")) if (library_dir / qid).is_dir() else []
        if on_disk != sorted(u.rsplit("/", 1)[1] for u in urls):
            image_problems.append(f"{qid}: folder holds {len(on_disk)} PNGs, entry lists {len(urls)}")
        if len(urls) != job.num_images:
            image_problems.append(f"{qid}: {len(urls)} images for num_images {job.num_images}")
    result.check("each done job's folder holds exactly its images, as Redis and library.json list them",
                 not image_problems, f"{len(image_problems)}: " + "; ".join(image_problems[:5]))

    # 3. no orphan folders; nothing left in `.staging`.
    folders = [p.name for p in library_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] \
        if library_dir.is_dir() else []
    orphans = [name for name in folders if name not in by_id]
    result.check("no folder in the library without an entry", not orphans, f"{len(orphans)}: {orphans[:5]}")
    staging = library_dir / STAGING_DIR
    left = sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []
    result.check("nothing left in .staging", not left, f"{len(left)}: {left[:5]}")

    # 4. what a reader saw on the way: nothing but each done job's final result, ever.
    final = {e.get("queue_id"): tuple(e.get("generated_images") or ()) for e in entries}
    seen_wrong = []
    for qid, seen in watcher.listed.items():
        if qid not in done:
            seen_wrong.append(f"{qid}: listed, though {records[qid].status if records.get(qid) else 'unknown'}")
        elif seen != {final.get(qid)}:
            seen_wrong.append(f"{qid}: {len(seen)} different results listed")
    for qid, names in watcher.files.items():
        stale = names - {url.rsplit("/", 1)[1] for url in final.get(qid, ())}
        if stale:
            seen_wrong.append(f"{qid}: {len(stale)} pictures in its folder that are not its result")
    result.check(CHECK_VISIBLE, watcher.looks > 0 and not seen_wrong,
                 f"{watcher.looks} looks; {len(seen_wrong)}: " + "; ".join(seen_wrong[:5]))
    result.figures["library looks during the run"] = watcher.looks

    # 5. no backend was sent a job after it ended (in particular after a cancel), except stale
    # claims, which fencing cuts off at once. Two ways a stale claim reaches a backend late:
    # - the backend was stopped (SIGSTOP) with the request in its socket; its worker gave up
    #   (stall timeout), the job was taken over and ended, and the resumed backend reads the
    #   request only then (its worker has hung up);
    # - the scheduler was stopped between claiming the job and sending it; the job was taken
    #   over and ended meanwhile, and the resumed scheduler sends the stale claim, whose first
    #   progress write Redis refuses ("claim N was taken over"): the worker hangs up, which
    #   stops the backend's run. Neither can change the job or the library (checked above).
    # Either can be the job's last claim: a sweep that finds its worker dead (paused past the
    # heartbeat; after a SIGCONT even a sibling worker of the same scheduler, whose thread wakes
    # first) fails the job when that was its last attempt, instead of claiming it again.
    # Anything else — a claim arriving late without a pause or a refusal to explain it — fails.
    pauses = pause_windows(fault_times)
    fenced_runs = set()
    for path in logs.glob("scheduler-*.log"):
        fenced_runs.update(_FENCED_RUN.findall(path.read_text(errors="replace")))
    arrivals: dict[str, list[tuple[int, float]]] = defaultdict(list)
    late, stale_after_pause, stale_dispatch = [], [], []
    for backend in backends:
        text = backend.process.log_path.read_text(errors="replace") if backend.process.log_path.exists() else ""
        for job_id, claim, at in _GENERATE.findall(text):
            arrivals[job_id].append((int(claim), float(at)))
            job = records.get(job_id)
            if job is None or job.finished_at is None or float(at) <= job.finished_at:
                continue
            line = (f"{job_id}.{claim} ({job.status}, last claim {job.claim}) reached {backend.name} "
                    f"{float(at) - job.finished_at:.3f} s after it ended")
            kind = late_arrival(float(at), job.finished_at, pauses[backend.name], (job_id, claim) in fenced_runs)
            if kind == AFTER_PAUSE:
                stale_after_pause.append(line)
            elif kind == FENCED:
                stale_dispatch.append(line)
            else:
                late.append(line + (" (not fenced off)" if int(claim) < job.claim else ""))
    late_cancelled = [line for line in late if "(cancelled," in line]
    result.check(CHECK_AFTER_CANCEL, not late_cancelled, f"{len(late_cancelled)}: " + "; ".join(late_cancelled[:5]))
    result.check(CHECK_AFTER_END, not late, f"{len(late)}: " + "; ".join(late[:5]))
    result.figures["stale claims read by a backend resumed from SIGSTOP after their job ended"] = \
        len(stale_after_pause)
    result.figures["stale claims sent by a scheduler resumed from SIGSTOP after their job ended (fenced off)"] = \
        len(stale_dispatch)
    if stale_after_pause or stale_dispatch:
        result.figures["those stale claims"] = stale_after_pause + stale_dispatch
    unrun = [job_id for job_id in done if not arrivals.get(job_id)]
    result.check("every done job reached a backend", not unrun, "; ".join(unrun[:5]))
    # Ended once, by its last claim: the library's result is that attempt's (its backend, and
    # the backend was sent that claim), not a late one's from an attempt that had lost the job.
    ports = {backend.process.url: backend.name for backend in backends}
    by_backend = defaultdict(set)
    for backend in backends:
        text = backend.process.log_path.read_text(errors="replace") if backend.process.log_path.exists() else ""
        by_backend[backend.name] = {f"{job_id}.{claim}" for job_id, claim, _ in _GENERATE.findall(text)}
    foreign = []
    for entry in entries:
        job = records.get(entry.get("queue_id"))
        if job is None or job.status != "done":
            continue
        name = ports.get(job.backend or "")
        if entry.get("backend") != job.backend or job.attempt_id not in by_backend.get(name, ()):
            foreign.append(f"{job.id}: library from {entry.get('backend')}, job's claim {job.claim} on {job.backend}")
    result.check("each done job's result is its last claim's", not foreign,
                 f"{len(foreign)}: " + "; ".join(foreign[:5]))
    attempts = Counter({job_id: len(seen) for job_id, seen in arrivals.items()})

    # 6. the figures.
    fenced = 0
    for path in logs.glob("scheduler-*.log"):
        fenced += path.read_text(errors="replace").count(FENCED_LINE)
    result.figures.update({
        "jobs": len(ids),
        "submits whose answer was lost (found in Redis)": len(unanswered),
        "by status": dict(sorted(statuses.items())),
        "library entries": len(entries),
        "attempts sent to the backends": sum(attempts.values()),
        "jobs sent more than once": sum(1 for n in attempts.values() if n > 1),
        "most attempts of one job": max(attempts.values(), default=0),
        "fenced refusals (\"was taken over by another worker\")": fenced,
    })
    result.check("faults hit jobs mid-way (some job needed a second attempt)",
                 result.figures["jobs sent more than once"] > 0, "no job was sent twice: the faults missed")

