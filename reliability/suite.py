"""The whole suite: one fresh stack, the scenarios in order, a SuiteRun for the report.

The short profile runs in CI (tests/test_reliability.py, a few minutes on two cores); the soak
profile is the issue's full size (1,000 prompts from 50 clients, 20,000 fuzzed requests).
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

from reliability import chaos, faults, hostile, load
from reliability.cluster import Cluster
from reliability.report import SuiteRun
from reliability.scenario import ScenarioResult

log = logging.getLogger("reliability")

PROFILES = {
    "short": {"prompts": 200, "clients": 20, "pollers": 3, "drain_secs": 10, "fuzz": 2000, "slow_clients": 60,
              "chaos_jobs": 200},
    "soak": {"prompts": 1000, "clients": 50, "pollers": 5, "drain_secs": 60, "fuzz": 20000, "slow_clients": 200,
             "connection_cap": True, "chaos_jobs": 1000},
}


def scenarios(profile: dict, seed: int = chaos.DEFAULT_SEED) -> list[tuple[str, Callable[[Cluster], ScenarioResult]]]:
    """(name, run) in the order they run: faults first (they fill the library the others use);
    chaos last (its own Redis, backends and schedulers; `seed` replays its faults)."""
    soak_only = [("connection-cap", hostile.connection_cap)] if profile.get("connection_cap") else []
    return [
        ("kill-frontend", faults.kill_frontend),
        ("kill-scheduler", faults.kill_scheduler),
        ("kill-backend", faults.kill_backend),
        ("kill-redis", faults.kill_redis),
        ("slow-backend", faults.slow_backend),
        ("library-full", faults.library_full),
        ("library-readonly", faults.library_readonly),
        ("load", partial(load.load, prompts=profile["prompts"], clients=profile["clients"],
                         pollers=profile["pollers"], drain_secs=profile["drain_secs"])),
        ("fuzz", partial(hostile.fuzz, count=profile["fuzz"])),
        ("traversal", hostile.traversal),
        ("oversized", hostile.oversized),
        ("hostile-uploads", hostile.hostile_uploads_scenario),
        ("slowloris", partial(hostile.slow_requests, slow_clients=profile["slow_clients"])),
        ("header-deadline", hostile.header_deadline),
        *soak_only,
        ("script-prompt", hostile.script_prompt),
        ("api-token", hostile.api_token),
        ("canaries", hostile.canaries_survive),
        ("chaos", partial(chaos.chaos, jobs=profile["chaos_jobs"], seed=seed)),
    ]


NAMES = [name for name, _ in scenarios(PROFILES["short"])]          # the short suite, in order
ALL_NAMES = [name for name, _ in scenarios(PROFILES["soak"])]     # with the soak-only ones


def run_suite(workdir: Path, cache_dir: Path, mode: str = "short", only: list[str] | None = None,
              say: Callable[[str], None] = print, seed: int = chaos.DEFAULT_SEED) -> SuiteRun:
    profile = PROFILES[mode]
    chosen = [(name, run) for name, run in scenarios(profile, seed) if not only or name in only]
    unknown = set(only or []) - set(ALL_NAMES)
    if unknown:
        raise ValueError(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(ALL_NAMES)}")
    run = SuiteRun(mode=mode, results=[], load_average=os.getloadavg(), seed=seed)
    started = time.monotonic()
    say(f"starting the stack in {workdir} ...")
    with Cluster(workdir, cache_dir) as cluster:
        run.mounted, run.mount_refused = cluster.mounted, cluster.mount_refused
        say(f"stack up after {time.monotonic() - started:.0f} s: frontend {cluster.frontend.url}")
        for name, scenario in chosen:
            began = time.monotonic()
            try:
                result = scenario(cluster)
            except Exception as exc:  # noqa: BLE001 - the scenario broke: record it, repair the stack, go on
                result = ScenarioResult(name, "?", name, error=f"{exc.__class__.__name__}: {exc}")
                result.seconds = round(time.monotonic() - began, 1)
                log.error("scenario %s broke:\n%s\n%s", name, traceback.format_exc(), cluster.logs_tail())
                try:
                    cluster.heal()
                except Exception as heal_error:  # noqa: BLE001 - reported, and the run ends here
                    say(f"could not repair the stack after {name}: {heal_error}")
                    run.results.append(result)
                    break
            result.name = name
            run.results.append(result)
            say(result.summary())
    run.seconds = time.monotonic() - started
    return run
