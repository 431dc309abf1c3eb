"""The engine's benchmark scripts run end to end on the tiny model (their figures come from
real machines; here only that they work and report what the docs quote)."""
from __future__ import annotations

import json

from benchmarks import bench_engine, profile_step


def test_profile_step_times_every_piece_and_the_vqgan(tmp_path):
    out = tmp_path / "profile.json"
    profile_step.main(["--model", "tiny", "--images", "2", "--position", "3", "--vqgan",
                       "--cache-dir", str(tmp_path), "--json", str(out)])
    report = json.loads(out.read_text())
    (entry,) = report["per_images"]
    for piece in ("step", "weights_out_in", "weights_in_out", "self_attention", "cache_update",
                  "cross_attention", "norms_gelu_adds", "sampling"):
        assert entry[f"{piece}_ms"] > 0, piece
    assert entry["floor_ms"] == min(entry["weights_out_in_ms"], entry["weights_in_out_ms"])
    assert report["vqgan"]["products"] > 0 and report["vqgan"]["floor_secs_per_image"] > 0


def test_bench_engine_times_an_earlier_engine_alternately(tmp_path):
    """--against HEAD: the committed engine package, imported beside today's; the same model
    and seed draw the same codes in both."""
    out = tmp_path / "bench.json"
    bench_engine.main(["--model", "tiny", "--images", "1", "--against", "HEAD", "--against-only",
                       "--against-rounds", "1", "--cache-dir", str(tmp_path), "--json", str(out)])
    entry = json.loads(out.read_text())["against"]["per_images"]["1"]
    assert set(entry) >= {"new", "HEAD", "tokens_speedup", "vqgan_speedup"}
    assert entry["same_codes"] is True
