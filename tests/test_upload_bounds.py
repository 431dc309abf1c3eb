"""The bounds on hostile uploads (issue 35), measured by benchmarks/bench_uploads.py against
`python -m frontend` in its own process: the slowest POST /prompt body of the largest size
accepted costs the frontend under a second of CPU, and 16 of the costliest pictures uploaded
at once keep its peak memory under the documented bound."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.hostile_uploads import AT_ONCE, PEAK_MEMORY_MIB

ROOT = Path(__file__).resolve().parents[1]
SLOWEST_BODY_CPU_SECS = 1.0

pytestmark = pytest.mark.timeout(300)


def test_hostile_uploads_stay_within_their_time_and_memory_bounds(tmp_path):
    out = tmp_path / "uploads.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_uploads.py"), "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    bodies = {name: result for name, result in report["multipart"].items() if isinstance(result, dict)}
    assert len(bodies) == 5 and all(result["bytes"] == report["multipart"]["body_bytes"] for result in bodies.values())
    assert all(result["status"] == 400 for result in bodies.values()), bodies
    assert report["slowest_body_cpu_secs"] < SLOWEST_BODY_CPU_SECS, bodies
    memory = report["memory"]
    assert memory["uploads"] == AT_ONCE and memory["statuses"] == [200], memory  # every picture was decoded: none refused
    assert memory["peak_mib"] < PEAK_MEMORY_MIB, memory
