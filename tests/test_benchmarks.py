"""The benchmark scripts run end to end, the engine's on the tiny model, the ETA's on the
stand-in backend (their figures come from real machines; here only that they work and report
what the docs quote). Each runs as its own process, as people run it (JAX's compilation cache
folder is set once per process)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_profile_step_times_every_piece_and_the_vqgan(tmp_path):
    out = tmp_path / "profile.json"
    run_script("profile_step.py", "--model", "tiny", "--images", "2", "--position", "3", "--vqgan",
               "--attention-formulations", "--runner", "--cache-dir", str(tmp_path), "--json", str(out))
    report = json.loads(out.read_text())
    (entry,) = report["per_images"]
    for piece in ("step", "weights_out_in", "weights_in_out", "self_attention", "cache_update", "read_cache_once",
                  "cross_attention", "norms_gelu_adds", "sampling"):
        assert entry[f"{piece}_ms"] > 0, piece
    assert entry["runner_step_ms"] > 0
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


def test_bench_eta_reports_predicted_against_actual_for_each_job(tmp_path):
    """The whole stack with the stand-in backend, a short queue: the table and the medians come
    out (the figures are for the full run on a real machine, not checked here)."""
    out = tmp_path / "eta.json"
    run_script("bench_eta.py", "--quick", "--json", str(out))
    report = json.loads(out.read_text())
    assert len(report["jobs"]) == 4 and all(job["actual_secs"] > 0 for job in report["jobs"])
    assert all(job["submit_predicted_secs"] is not None and job["half_predicted_secs"] is not None
               for job in report["jobs"])
    assert 0 <= report["median_submit_error"] and 0 <= report["median_half_error"]
    assert "ran_out_early" in report and "under_a_second_polls" in report


def test_bench_upscale_times_the_published_x4v3():
    report = json.loads(run_script("bench_upscale.py", "--side", "12", "--repeats", "1"))
    assert report["model"] == "realesr-general-x4v3" and report["output"] == [48, 48]
    assert report["best_s"] > 0 and report["cpu_seconds_per_picture"][0] > 0


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


@pytest.mark.slow
def test_bench_serving_runs_one_slot_and_batched_slots_through_the_stack(tmp_path):
    """Two whole stacks on the demo model (minutes: the batched backend compiles its programs)."""
    out = tmp_path / "serving.json"
    run_script("bench_serving.py", "--model", "demo", "--jobs", "2", "--slots", "2", "--rounds", "1",
               "--lone-rounds", "1", "--cache-dir", str(tmp_path), "--json", str(out))
    report = json.loads(out.read_text())
    for way in ("one_slot", "batched"):
        assert report[way]["jobs_per_minute"] > 0 and len(report[way]["latencies_secs"]) == 2
        assert report[way]["lone_job_secs"] > 0
    assert report["batched"]["slots"] == 2 and "speed_up" in report and "lone_job_slower_percent" in report
