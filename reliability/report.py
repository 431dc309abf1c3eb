"""The report (docs/reliability-report.md): per scenario the jobs submitted / done / failed /
cancelled / queued / lost, the requests and 5xx answers, latencies, inputs tried; the findings
and whether this run still sees each; the date, the machine and how to rerun."""
from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reliability.cluster import REPO_ROOT
from reliability.scenario import ScenarioResult


@dataclass(frozen=True)
class Finding:
    number: int
    title: str
    where: str
    reproduce: str
    fix: str
    scenarios: tuple[str, ...]    # the scenarios whose checks show it
    checks: tuple[str, ...]       # those checks (in each of them): all pass = fixed
    history: str = ""             # when it was seen and fixed, if it was


FINDINGS = (
    Finding(
        1, "A kill -9 of Redis during a job leaves that job `running` for ever",
        "scheduler/worker.py, `Worker.run` / `Worker.run_job` (as they were): a `redis.RedisError` raised "
        "while the job ran (`WorkerQueue.progress`, `finish_*`) left `run_job` uncaught; the `with` block hung "
        "up on the backend (which cancels the generation) and the job id stayed in the worker's own "
        "`dalle:processing:<worker>` list. The worker was alive, so `sweep_dead_workers` skipped it, and "
        "`register()` recovers the list only when the scheduler starts. The job showed `running`, position 0, "
        "in /queue_status until the scheduler was restarted; the jobs behind it did run.",
        "`python -m reliability --only kill-redis` (or `pytest tests/test_reliability.py -k finding_1`): "
        "submit 4 jobs, `kill -9` redis-server while the first runs, restart it (AOF on): 3 jobs end done, "
        "the first stays `running` (attempts 1) after 30 s.",
        "After a Redis error in the worker loop, once Redis answers again, put back the worker's own "
        "processing list before claiming: e.g. in `Worker.run`'s `except redis.RedisError` set a flag and, "
        "at the top of the next iteration, call `self.queue.recover(self.worker_id, reason=\"Redis was "
        "unreachable during the job\")` (count_attempt=False would be fairer).",
        ("kill-redis",), ("every job ends within 30 s (none stuck running or queued)", "all jobs done"),
        "Seen by this suite on 2026-11-25 at 15:47 UTC (the job stayed `running`, attempts 1, after the "
        "restart); fixed minutes later in scheduler/worker.py by its owner (the worker now recovers its own "
        "processing list after a Redis error), and passing in every run since."),
    Finding(
        2, "Deleting from a read-only library answers 500",
        "frontend/api.py `_delete_image` / `delete_job` → `LibraryStore.delete_image` / `delete_job` raise "
        "`OSError` (EROFS; ENOSPC the same way when the disk is full and library.json must be rewritten); "
        "frontend/server.py `_serve` catches only ValidationError and RedisError, so the answer is "
        "`500 internal error`.",
        "`python -m reliability --only kill-frontend library-full library-readonly`: the library's tmpfs is "
        "filled to the last byte (or remounted read-only), then `DELETE /library/<queue_id>/<image>.png` of an "
        "existing image answers `500 {\"error\": \"internal error; see the frontend's log\"}`.",
        "Catch `OSError` from the store in the delete handlers (or in `_serve`) and answer "
        "`503 {\"error\": \"the library cannot be written: <strerror>\"}` with `Retry-After`, as for Redis.",
        ("library-readonly", "library-full"),
        ("a delete on the broken library answers an error, not 500", "no 500 answer"),
        "Seen by this suite on 2026-11-25; fixed the same day: `_serve` answers an `OSError` from the "
        "library with 503 and `Retry-After: 30`."),
    Finding(
        3, "No deadline for the request line and headers: a slow client holds a connection slot for ever",
        "frontend/server.py `RequestHandler.handle_one_request` / `parse_request`: only the socket timeout "
        "(idle time between two reads) bounds the request line and headers; `FRONTEND_BODY_DEADLINE` bounds "
        "only the body. A client sending a header byte every few seconds is never cut off (up to 100 "
        "headers of 64 KiB), so `FRONTEND_MAX_CONNECTIONS` (256) such clients deny service to everyone "
        "(503 busy). With 60 of them the server still answers others at once (the slowloris scenario); with "
        "300 (the soak's connection-cap scenario) every slot is held and normal requests get 503 busy until "
        "the slow clients choose to leave.",
        "`python -m reliability --only header-deadline`: one connection sends `GET /queue_status HTTP/1.1`, "
        "`Host`, then `X-Slow: ` and one byte a second; after 12 s (socket timeout and body deadline 5 s) "
        "it is still connected.",
        "Apply a deadline to the whole request head, e.g. reuse `body_deadline_secs` (or a new "
        "`FRONTEND_HEADER_DEADLINE`): record `time.monotonic()` when the request line starts and, before "
        "each header line is read, set `self.connection.settimeout(min(socket_timeout, remaining))`; answer "
        "408 and close when it is exceeded.",
        ("header-deadline",), ("a client dribbling its headers is cut off within 12 s",),
        "Seen by this suite on 2026-11-25; fixed the same day: frontend/head_deadline.py gives every "
        "request head `FRONTEND_HEAD_DEADLINE` (10 s) to arrive, then shuts the connection's reading side "
        "and answers 408."),
    Finding(
        4, "DELETE /jobs/<id> of a folder that is no job answers `deleted: true` while nothing is deleted",
        "playground/library.py `LibraryStore._delete_job_locked` returns True whenever a folder named "
        "<queue_id> exists, even when it is not in library.json, holds no job.json and nothing in it is "
        "removed (here: it holds only a symlink, which is rightly left alone).",
        "`python -m reliability --only traversal`: a folder `library/<uuid>/` holding only a symlink "
        "`<uuid>.png` to a file outside; `DELETE /jobs/<uuid>` → `200 {\"deleted\": true}`, folder intact.",
        "Return True only when the index entry or at least one file was removed; the frontend then answers "
        "404 as for an unknown job.",
        ("traversal",), ("DELETE /jobs/<a folder that is no job> says nothing was deleted",),
        "Seen by this suite on 2026-11-25; fixed the same day: `_delete_job_locked` returns True only when "
        "the index entry, job.json or one of the job's images was removed."),
)


def finding_state(finding: Finding, results: dict[str, ScenarioResult]) -> str:
    ran = [results[name] for name in finding.scenarios
           if name in results and not results[name].skipped and not results[name].error]
    if not ran:
        return "not checked in this run"
    states = [result.passed(name) for result in ran for name in finding.checks]
    if all(state is True for state in states):
        return "**fixed** (its checks pass)"
    if any(state is False for state in states):
        return "**open** (seen in this run)"
    return "not checked in this run"


@dataclass
class SuiteRun:
    mode: str
    results: list[ScenarioResult]
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    load_average: tuple[float, float, float] | None = None
    mounted: bool = False
    mount_refused: str | None = None
    seed: int | None = None        # the chaos scenario's (`--seed`)

    @property
    def by_name(self) -> dict[str, ScenarioResult]:
        return {r.name: r for r in self.results}


def _n(value) -> str:
    return "–" if value is None else str(value)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.1f}"


def render(run: SuiteRun) -> str:
    lines: list[str] = []
    add = lines.append
    ok = sum(r.ok for r in run.results)
    skipped = sum(r.skipped is not None for r in run.results)
    add("# Reliability and security report")
    add("")
    add("Generated by `python -m reliability` (issue 8): the real local stack — redis-server with "
        "append-only persistence, the backend with the tiny model, the scheduler and the frontend as "
        "separate processes on loopback — is started fresh, then broken, loaded and attacked scenario by "
        "scenario. Every figure below was measured in this run; nothing is typed in by hand except the "
        "findings' text.")
    add("")
    load = ", ".join(f"{x:.1f}" for x in run.load_average) if run.load_average else "?"
    add(f"- Run: {run.started.strftime('%Y-%m-%d %H:%M UTC')}, mode **{run.mode}**, {run.seconds:.0f} s in all"
        + (f", chaos seed {run.seed} (`--seed {run.seed}` replays it)." if run.seed is not None else "."))
    add(f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), load average "
        f"{load} at the start (the machine is shared with other builds), Python "
        f"{sys.version.split()[0]}, JAX on CPU.")
    add(f"- Library on its own tmpfs: {'yes' if run.mounted else 'no (' + str(run.mount_refused) + ')'}.")
    add(f"- Outcome: {ok} of {len(run.results)} scenarios passed every check"
        f"{f', {skipped} skipped' if skipped else ''}; a failed check is an open finding (below).")
    add("")
    add("## How to rerun")
    add("")
    add("```sh")
    add("python -m reliability                      # the short suite (~3 min), rewrites this file")
    add("python -m reliability --soak               # 1,000 prompts / 50 clients, 20,000 fuzzed requests, 300 slow clients")
    add("python -m reliability --only kill-redis    # one scenario (names in the table below)")
    add(f"python -m reliability --only chaos --seed {run.seed if run.seed is not None else 19}"
        "   # the chaos scenario again, same jobs, cancels and faults (--soak: 1,000 jobs)")
    add("pytest tests/test_reliability.py           # the short suite in CI, one test per scenario")
    add("```")
    add("")
    add("Mounting the library's tmpfs (disk full, read-only) needs root; without it those two "
        "scenarios are skipped with the reason. Chromium (`/usr/bin/chromium` or `CHROMIUM_PATH`) is "
        "needed for the script-in-a-prompt scenario.")
    add("")
    add("## Summary")
    add("")
    add("A job is *lost* when it is neither done (with its images in the library), failed with a reason, "
        "cancelled, queued nor running. *5xx* counts every answer ≥ 500 the frontend gave during the "
        "scenario, except 503 while Redis is down or the library cannot be written (documented) and 501 to methods HTTP does not define "
        "for this server.")
    add("")
    add("| scenario | what | result | submitted | done | failed | cancelled | queued | running | lost "
        "| requests | 5xx | inputs tried | s |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in run.results:
        a = r.accounting
        state = ("skipped" if r.skipped else "error" if r.error else "pass" if r.ok else
                 f"**{len(r.failed_checks())} check(s) failed**")
        counts = [a.submitted, a.done, a.failed, a.cancelled, a.queued, a.running, a.lost] if a else [None] * 7
        requests = sum((r.http.get("statuses") or {}).values())
        add(f"| {r.name} | {r.title} | {state} | " + " | ".join(_n(c) for c in counts)
            + f" | {requests} | {len(r.http.get('server_errors') or [])} | {r.inputs_tried or '–'} | {r.seconds} |")
    add("")
    load_result = run.by_name.get("load")
    if load_result and load_result.http:
        add("## Latency under load (frontend, measured by the clients)")
        add("")
        add(f"{load_result.title}.")
        add("")
        add("| route | requests | p50 ms | p99 ms | max ms |")
        add("|---|---|---|---|---|")
        for route, values in sorted(load_result.http["latencies"].items()):
            add(f"| {route} | {len(values)} | {_ms(load_result.latency(route, 50))} | "
                f"{_ms(load_result.latency(route, 99))} | {_ms(max(values) if values else None)} |")
        add("")
    if load_result and load_result.http:
        cancel = load_result.latency("POST /jobs/{id}/cancel", 99)
        status = load_result.latency("GET /queue_status", 99)
        add("Observation: with the whole load queued, `POST /jobs/<id>/cancel` had p99 "
            f"{_ms(cancel)} ms and `GET /queue_status` p99 {_ms(status)} ms. A cancel reads only the "
            "job's own hash (`JobQueue.record`); before 2026-11-25 it built every queued job's position "
            "and ETA, so clearing a queue of N jobs was O(N²) (p99 1,161 ms at 1,000 jobs). "
            "/queue_status returns every queued job by contract (the original API), so it grows with "
            "the queue by design.")
        add("")
    add("## Findings")
    add("")
    add("Bugs this suite found in the services, each with its test in `tests/test_reliability.py`. "
        "While a finding is open its test is marked `xfail(strict=True)`, so fixing it fails the run "
        "(XPASS) until the marker is removed; the state in this run is given for each.")
    add("")
    results = run.by_name
    for finding in FINDINGS:
        add(f"### Finding {finding.number}: {finding.title}")
        add("")
        add(f"- State in this run: {finding_state(finding, results)}")
        if finding.history:
            add(f"- History: {finding.history}")
        add(f"- Where: {finding.where}")
        add(f"- Reproduce: {finding.reproduce}")
        add(f"- Suggested fix: {finding.fix}")
        add("")
    add("## Scenarios in detail")
    add("")
    for r in run.results:
        add(f"### {r.name} ({r.group})")
        add("")
        add(r.title + ".")
        add("")
        if r.skipped:
            add(f"Skipped: {r.skipped}")
            add("")
            continue
        if r.error:
            add(f"The scenario itself broke: `{r.error}`")
            add("")
        if r.accounting and r.accounting.failure_reasons:
            add(f"- failure reasons: {dict(r.accounting.failure_reasons)}")
        statuses = r.http.get("statuses") or {}
        if statuses:
            add(f"- answers by status: {dict(sorted(statuses.items()))}")
        for name, value in r.figures.items():
            if name == "answered 2xx":
                value = f"{len(value)}: " + ", ".join(value[:4])
            elif isinstance(value, list) and len(value) > 8:
                # A long log (e.g. the chaos' faults): folded, one line each.
                add(f"- {name}: <details><summary>{len(value)} entries</summary>")
                add("")
                add("  ```")
                lines.extend(f"  {item}" for item in value)
                add("  ```")
                add("  </details>")
                continue
            add(f"- {name}: {value}")
        for check in r.checks:
            mark = "✓" if check.passed else "✗"
            detail = f" — {check.detail}" if check.detail and not check.passed else ""
            add(f"- {mark} {check.name}{detail}")
        add("")
    return _without_local_paths("\n".join(lines) + "\n")


def _without_local_paths(text: str) -> str:
    """The report goes into the repository: no path of the machine that ran it."""
    text = text.replace(str(REPO_ROOT), ".")
    return re.sub(r"(?<![\w.])/(?:tmp|var/tmp|work|root|home)/[^\s`'\")|,]*", "<local path>", text)
