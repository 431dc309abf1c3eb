"""The engine's benchmark scripts run end to end on the tiny model (their figures come from
real machines; here only that they work and report what the docs quote). Each runs as its
own process, as people run it (JAX's compilation cache folder is set once per process)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def test_profile_step_times_every_piece_and_the_vqgan(tmp_path):
    out = tmp_path / "profile.json"
    run_script("profile_step.py", "--model", "tiny", "--images", "2", "--position", "3", "--vqgan",
               "--attention-formulations", "--cache-dir", str(tmp_path), "--json", str(out))
    report = json.loads(out.read_text())
    (entry,) = report["per_images"]
    for piece in ("step", "weights_out_in", "weights_in_out", "self_attention", "cache_update", "read_cache_once",
                  "cross_attention", "norms_gelu_adds", "sampling"):
        assert entry[f"{piece}_ms"] > 0, piece
    assert entry["floor_ms"] == min(entry["weights_out_in_ms"], entry["weights_in_out_ms"])
    formulations = entry["attention_formulations_ms"]
    assert len(formulations) == 6 and "batched products (the engine)" in formulations
    assert all(ms > 0 for ms in formulations.values())
    assert report["vqgan"]["products"] > 0 and report["vqgan"]["floor_secs_per_image"] > 0


def test_bench_engine_times_an_earlier_engine_alternately(tmp_path):
    """--against HEAD: the committed engine package, imported beside today's; the same model
    and seed draw the same codes in both."""
    out = tmp_path / "bench.json"
    run_script("bench_engine.py", "--model", "tiny", "--images", "1", "--against", "HEAD", "--against-only",
               "--against-rounds", "1", "--cache-dir", str(tmp_path), "--json", str(out))
    entry = json.loads(out.read_text())["against"]["per_images"]["1"]
    assert set(entry) >= {"new", "HEAD", "tokens_speedup", "vqgan_speedup"}
    assert entry["same_codes"] is True


def test_bench_batching_runs_jobs_one_at_a_time_and_together(tmp_path):
    """The two ways draw the same codes; the report holds what the docs quote."""
    out = tmp_path / "batching.json"
    run_script("bench_batching.py", "--model", "tiny", "--jobs", "3", "--images", "1", "--sizes", "2,4",
               "--rounds", "1", "--lone-rounds", "1", "--cache-dir", str(tmp_path), "--json", str(out))
    report = json.loads(out.read_text())
    assert report["same_codes"] is True
    for way in ("one_at_a_time", "batched"):
        assert report[way]["jobs_per_minute"] > 0 and len(report[way]["latencies_secs"]) == 3
        assert report[way]["lone_job_secs"] > 0
    assert "speed_up" in report and "lone_job_slower_percent" in report
