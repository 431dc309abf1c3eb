"""What a scenario hands back: its figures and the invariants it checked, each pass or fail."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from reliability.cluster import Accounting, Recorder, percentile


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    name: str                      # short id, e.g. "kill-redis"
    group: str                     # "faults", "load" or "hostile"
    title: str                     # one line: what was done
    accounting: Accounting | None = None
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)   # scenario-specific numbers
    http: dict = field(default_factory=dict)                    # Recorder.snapshot()
    inputs_tried: int = 0
    skipped: str | None = None
    error: str | None = None        # the scenario itself broke (an exception)
    seconds: float = 0.0

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.error is None and all(c.passed for c in self.checks)

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def passed(self, name: str) -> bool | None:
        """Whether the check called `name` passed; None if it was not made."""
        found = [c for c in self.checks if c.name == name]
        return all(c.passed for c in found) if found else None

    def latency(self, route: str, q: float) -> float | None:
        return percentile((self.http.get("latencies") or {}).get(route, []), q)

    def summary(self) -> str:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in self.failed_checks())
        state = "skipped: " + self.skipped if self.skipped else ("error: " + self.error if self.error else
                                                                   ("ok" if self.ok else "FAILED " + failed))
        return f"[{self.group}] {self.name}: {state}"


class Timer:
    def __enter__(self):
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.started

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def finish(result: ScenarioResult, recorder: Recorder, accounting: Accounting | None, library_problems: list[str],
           expect_no_500: bool = True) -> ScenarioResult:
    """The checks every scenario makes: nothing lost, library.json valid, no 500."""
    result.http = recorder.snapshot()
    if accounting is not None:
        result.accounting = accounting
        result.check("no job lost", accounting.lost == 0, "; ".join(accounting.problems[:5]))
    result.check("library.json valid", not library_problems, "; ".join(library_problems[:5]))
    if expect_no_500:
        errors = [e for e in result.http["server_errors"] if e.startswith("500")]
        result.check("no 500 answer", not errors, "; ".join(errors[:5]))
    return result
