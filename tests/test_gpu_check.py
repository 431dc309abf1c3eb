"""benchmarks/gpu_check.py: its dry run on the CPU (what is checked before GPU time is spent),
and the profile summary it reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def dry_run(tmp_path, stages: list[str]) -> dict:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
         "--work", str(tmp_path / "work"), "--only", ",".join(stages)],
        capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    stages_run = report["stages"]
    assert [name for name, stage in stages_run.items() if stage] == stages
    assert not [name for name, stage in stages_run.items() if "error" in stage]
    report["text"] = (out / "report.txt").read_text()
    return report


def test_dry_run_of_the_device_batching_and_features_stages(tmp_path):
    """The short version CI runs; the benchmark and HTTP stages are in the slow one below."""
    report = dry_run(tmp_path, ["device", "batching-mega-bfloat16", "features"])
    batching = report["stages"]["batching-mega-bfloat16"]
    assert (batching["jobs"], batching["images"], batching["sizes"]) == (4, 2, [2, 8])
    assert batching["same_codes"] is True
    for way in ("one_at_a_time", "batched"):
        assert len(batching[way]["latencies_secs"]) == 4 and batching[way]["lone_job_secs"] > 0
    assert batching["speed_up"] > 0 and batching["runner_warm_up_secs"] > 0
    assert "batching-mega-bfloat16: 4 jobs of 2 images" in report["text"]
    features = report["stages"]["features"]
    assert features["first_continuation_secs"] > 0 and features["previews"]["previews_per_job"][0] > 0
    assert features["clip"]["candidates"] == 16 and features["clip"]["rank_secs"] > 0
    assert "first continuation (keep 8 rows)" in report["text"]


@pytest.mark.slow
def test_dry_run_benchmarks_and_serves_over_http(tmp_path):
    """Run it before spending GPU time: RUN_SLOW=1 ./run-tests.sh tests/test_gpu_check.py."""
    report = dry_run(tmp_path, ["device", "bench-mini-float32", "http", "features"])
    stages = report["stages"]
    bench = stages["bench-mini-float32"]
    assert sorted(bench["generation"], key=int) == ["1", "2", "4", "8"]
    assert all(g["total_secs"] >= g["tokens_secs"] > 0 for g in bench["generation"].values())
    assert bench["floor"]["per_images"]["8"]["floor_weights_ms"] > 0
    assert bench["programs"]["chunk_flops"] > 0 and bench["programs"]["chunk_argument_bytes"] > 0
    assert bench["ready_cached"]["ready_secs"] > 0
    for backend in stages["http"]["backends"].values():
        assert backend["health"]["status"] == "ready" and backend["alone"]["best_secs"] > 0
    assert "mini   float32     8" in report["text"]


def test_trace_summary_counts_busy_time_once_where_kernels_overlap():
    trace = {"traceEvents": [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "ts": 0, "dur": 10, "name": "gemm"},
        {"ph": "X", "pid": 1, "ts": 5, "dur": 10, "name": "gemm"},  # overlaps the first: 0-15 busy
        {"ph": "X", "pid": 1, "ts": 30, "dur": 10, "name": "norm"},  # idle 15-30
        {"ph": "X", "pid": 2, "ts": 0, "dur": 100, "name": "python"},
    ]}
    summary = gpu_check.summarize_trace(trace)["/device:GPU:0"]
    assert summary["events"] == 3 and summary["busy_us"] == 25 and summary["span_us"] == 40
    assert summary["busy_share"] == 25 / 40
    assert [(t["name"], t["count"], t["total_us"]) for t in summary["top"]] == [("gemm", 2, 20), ("norm", 1, 10)]
    assert "/host:CPU" not in gpu_check.summarize_trace(trace)
