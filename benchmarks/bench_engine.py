"""Benchmark the engine at the real model sizes, with random weights (no download).

    python benchmarks/bench_engine.py                      # mini, float32, 1/2/4/8 images
    python benchmarks/bench_engine.py --model mega --dtype bfloat16   # on a GPU

Writes a random checkpoint of the published shape (official file formats) into
`<cache-dir>/bench-<model>-<dtype>/` once, then reports:
  * seconds per image for each image count: tokens, VQGAN and PNG separately, end to end;
  * the cost of progress/cancel chunks against one call per cache block (all 256 steps on a GPU);
  * time to ready (load + compile) in a fresh process, cold and with the compilation cache,
    and the peak host memory while loading;
  * the machine's floor: measured matmul rate at the step's row counts and memory bandwidth,
    against the decoder's FLOPs and bytes per step;
  * with --previews: generation with live previews (as the backend makes them: the engine's
    pictures, encoded as JPEG) against without, run alternately: their cost, which the
    engine keeps within 10% of the generation time;
  * with --continuation: a continuation keeping k rows against a fresh job (the prefill
    apart), which should take at most (16 - k) / 16 of its decoding time plus the prefill.
    `--model demo` or `--model tiny` runs it on a shipped model (quick on a CPU):

    python benchmarks/bench_engine.py --model demo --continuation 1,8,15 --continuation-only
Prints a JSON report at the end (also written with --json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {  # the published configurations (config.json of dalle-mini/dalle-mini and dalle-mega)
    "mini": {"d_model": 1024, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
             "decoder_attention_heads": 16, "encoder_ffn_dim": 2730, "decoder_ffn_dim": 2730,
             "encoder_vocab_size": 50264, "image_vocab_size": 16384},
    "mega": {"d_model": 2048, "encoder_layers": 24, "decoder_layers": 24, "encoder_attention_heads": 32,
             "decoder_attention_heads": 32, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096,
             "encoder_vocab_size": 50272, "image_vocab_size": 16415},
}
PROMPT = "a watercolor painting of a lighthouse on a cliff at sunset"


def write_random_model(folder: Path, model: str, dtype: str, sizes: dict | None = None,
                       vqgan_config=None) -> Path:
    """A random model of the published shape, in the official files (written once).

    The weights are drawn with JAX on the default device (`random_weights`).
    """
    from backend.engine import checkpoint, dallebart
    from backend.engine.tiny_captions import write_small_tokenizer

    if (folder / "vqgan" / "flax_model.msgpack").is_file():
        return folder
    import jax

    from backend.engine.vqgan import VQGANConfig, init_vqgan_params

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    config = dallebart.DalleBartConfig(**(sizes or SIZES)[model])
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    write_small_tokenizer(folder)
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", random_weights(config, dtype))
    (folder / "vqgan").mkdir(exist_ok=True)
    vqgan_config = vqgan_config or VQGANConfig()  # the defaults are the published f16_16384 model
    (folder / "vqgan" / "config.json").write_text(json.dumps(vqgan_config.to_dict(), indent=2))
    vqgan = jax.tree_util.tree_map(np.asarray, init_vqgan_params(vqgan_config, jax.random.PRNGKey(0)))
    checkpoint.write_checkpoint(folder / "vqgan" / "flax_model.msgpack", vqgan)
    print(f"wrote random {model} ({dtype}) to {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def random_weights(config, dtype: str) -> dict:
    """`dallebart.random_params` in `dtype`, its normal values drawn on the default device in
    pieces of a fixed size (one compiled program): Mega's 2.6 billion take seconds on a GPU,
    where numpy on one core takes minutes. The draws are kept in `dtype` until each leaf needs
    them, so host memory holds about two copies of the model, not a float32 one."""
    import jax
    import jax.numpy as jnp

    from backend.engine import dallebart

    target = np.dtype(_numpy_dtype(dtype))
    total = sum(math.prod(shape) for shape in dallebart.expected_param_shapes(config).values())
    piece = 2**26
    draw = jax.jit(lambda key: jax.random.normal(key, (piece,), jnp.float32).astype(target))
    flat = np.empty(-(-total // piece) * piece, target)
    for index in range(len(flat) // piece):
        flat[index * piece:(index + 1) * piece] = np.asarray(draw(jax.random.PRNGKey(index)))
    taken = 0

    def normal(shape):
        nonlocal taken
        values = flat[taken:taken + math.prod(shape)].reshape(shape).astype(np.float32)
        taken += values.size
        return values

    return dallebart.random_params(config, seed=0, dtype=target, normal=normal)


def _numpy_dtype(name: str):
    import ml_dtypes

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


# ---------------------------------------------------------------- time to ready (child process)


def time_to_ready(folder: Path, cache_dir: Path, dtype: str, batch_sizes) -> dict:
    """Load + warm up in a fresh process: what a backend restart costs."""
    run = subprocess.run(
        [sys.executable, __file__, "--ready-child", str(folder), "--cache-dir", str(cache_dir),
         "--dtype", dtype, "--images", ",".join(map(str, batch_sizes))],
        capture_output=True, text=True, check=False)
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def ready_child(folder: Path, cache_dir: Path, dtype: str, batch_sizes) -> None:
    """Load, warm up, then one generation at the largest batch: device memory as a restarted
    backend holds it (no autotuning buffers: the programs come from the cache when it is warm)."""
    import jax

    from backend.engine import GenerationRequest, load_engine

    started = time.perf_counter()
    engine = load_engine(str(folder), cache_dir, dtype=dtype)
    loaded = time.perf_counter()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    engine.warm_up(batch_sizes)
    ready = time.perf_counter()
    batch = max(batch_sizes)
    weights = (jax.devices()[0].memory_stats() or {}).get("bytes_in_use")
    engine.generate(GenerationRequest(PROMPT, batch, seed=1))
    stats = jax.devices()[0].memory_stats() or {}
    file_bytes = (folder / "flax_model.msgpack").stat().st_size + (folder / "vqgan" / "flax_model.msgpack").stat().st_size
    print(json.dumps({"load_secs": loaded - started, "compile_secs": ready - loaded, "ready_secs": ready - started,
                      "peak_host_bytes_after_load": peak_rss, "checkpoint_file_bytes": file_bytes,
                      "device_bytes_after_load": weights, "device_peak_bytes": stats.get("peak_bytes_in_use"),
                      "images": batch}))


# ---------------------------------------------------------------- the machine's floor


def fastest(fn, *args, runs: int = 7) -> float:
    """The fastest of `runs` calls after one untimed call (compilation)."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return min(times)


def step_matrices(params) -> list:
    """Every weight matrix one decoding step multiplies by, [out, in] as the engine holds them."""
    matrices = []
    for layer in params["decoder"]["layers"]:
        matrices += [layer["self_attn"][name] for name in ("q", "k", "v", "out")]
        matrices += [layer["cross_attn"][name] for name in ("q", "out")]
        matrices += [layer["glu"][name] for name in ("gate", "up", "down")]
    return matrices + [params["lm_head"]]


def weight_products(matrices, rows: int, layout: str) -> float:
    """Seconds for one product of `rows` rows with every matrix and nothing else: "out_in" as
    the engine computes it (`dallebart._dense`), "in_out" as jnp.dot on the checkpoint's
    [in, out] layout. Every product takes the same small input: only the weights stream."""
    import jax
    import jax.numpy as jnp

    from backend.engine import dallebart

    if layout == "in_out":
        matrices = [jnp.asarray(m.T) for m in matrices]  # a copy in the checkpoint's layout
        product = lambda x, m: jnp.dot(x.astype(m.dtype), m, preferred_element_type=jnp.float32)  # noqa: E731
        width = lambda m: m.shape[0]  # noqa: E731
    else:
        product = dallebart._dense
        width = lambda m: m.shape[1]  # noqa: E731
    inputs = {}
    for m in matrices:
        inputs.setdefault(width(m), jnp.ones((rows, width(m)), jnp.float32))
    run = jax.jit(lambda ms, xs: [product(xs[width(m)], m) for m in ms])
    return fastest(run, matrices, inputs)


def machine_floor(engine, batch_sizes) -> dict:
    """A decoding step's floor: every weight matrix of the step times the step's rows, alone,
    in whichever of the two layouts this machine multiplies faster; and the memory bandwidth,
    with the floor it gives (the weights and the half-full cache read once)."""
    import jax
    import jax.numpy as jnp

    from backend.engine import dallebart

    config = engine.config
    matrices = step_matrices(engine.params)
    step_weights = sum(m.size for m in matrices)
    itemsize = engine.cache_dtype.itemsize
    big = jnp.ones((256, 2**20), jnp.float32)  # 1 GiB
    total = jax.jit(lambda a: a.sum())
    bandwidth = big.nbytes / fastest(total, big, runs=3)
    del big
    report = {"bandwidth_gb_s": bandwidth / 1e9, "step_weight_params": step_weights, "per_images": {}}
    for images in batch_sizes:
        rows = 2 * images
        layouts = {layout: weight_products(matrices, rows, layout) for layout in ("out_in", "in_out")}
        step_secs = min(layouts.values())
        cache_bytes = dallebart.cache_bytes(config, images, itemsize) / 2  # half full on average
        step_bytes = step_weights * itemsize + cache_bytes
        report["per_images"][images] = {
            "rows": rows, "weights_out_in_ms": 1e3 * layouts["out_in"], "weights_in_out_ms": 1e3 * layouts["in_out"],
            "matmul_gflop_s": 2 * rows * step_weights / step_secs / 1e9,
            "step_gflop": 2 * rows * step_weights / 1e9, "step_gbytes": step_bytes / 1e9,
            "bandwidth_floor_ms": 1e3 * step_bytes / bandwidth,
            "floor_step_ms": 1e3 * step_secs,
            "floor_tokens_secs_per_image": step_secs * config.image_length / images,
        }
    return report


def _best_floor(first: dict, second: dict) -> dict:
    best = {"bandwidth_gb_s": max(first["bandwidth_gb_s"], second["bandwidth_gb_s"]),
            "step_weight_params": first["step_weight_params"], "per_images": {}}
    for images, a in first["per_images"].items():
        b = second["per_images"][images]
        best["per_images"][images] = min(a, b, key=lambda floor: floor["floor_step_ms"])
    return best


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ---------------------------------------------------------------- generation


def bench_generation(engine, batch_sizes, repeats: int) -> dict:
    from backend.engine import GenerationRequest
    from backend.png import encode_pngs

    report = {}
    for images in batch_sizes:
        best = None
        for repeat in range(repeats):
            started = time.perf_counter()
            result = engine.generate(GenerationRequest(PROMPT, images, seed=1000 + repeat))
            png_started = time.perf_counter()
            metadata = {"prompt": PROMPT, "seed": str(result.seed), "model": engine.model_name}
            encode_pngs(result.images, [metadata] * len(result.images))
            finished = time.perf_counter()
            timing = {"tokens_secs": result.timings["tokens_secs"], "vqgan_secs": result.timings["vqgan_secs"],
                      "png_secs": finished - png_started, "total_secs": finished - started}
            if best is None or timing["total_secs"] < best["total_secs"]:
                best = timing
        report[images] = {**best, **{f"{k[:-5]}_per_image": v / images for k, v in best.items()}}
        print(f"{images} images: {best['total_secs'] / images:.2f} s/image "
              f"(tokens {best['tokens_secs'] / images:.2f}, VQGAN {best['vqgan_secs'] / images:.2f}, "
              f"PNG {best['png_secs'] / images:.3f})", flush=True)
    return report


def previous_engine(revision: str, into: Path):
    """The engine package as of a git revision, imported as `previous_engine` (its own
    modules; the rest of the project is today's)."""
    import importlib
    import shutil

    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", revision, "backend/engine"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.move(str(into / "backend" / "engine"), str(into / "previous_engine"))
    sys.path.insert(0, str(into))
    return importlib.import_module("previous_engine")


def bench_against(engines: dict, batch_sizes, rounds: int) -> dict:
    """Engines (name → (engine, its package's GenerationRequest)) on the same model, run
    alternately (a slow moment hits all alike), the fastest of `rounds` each: tokens and VQGAN
    seconds per image, and whether all drew the same codes."""
    report = {"rounds": rounds, "per_images": {}}
    for images in batch_sizes:
        best = {name: {"tokens_secs": math.inf, "vqgan_secs": math.inf} for name in engines}
        codes = {}
        for _ in range(rounds):
            for name, (engine, request) in engines.items():
                result = engine.generate(request(PROMPT, images, seed=11))
                codes[name] = result.codes
                for key in best[name]:
                    best[name][key] = min(best[name][key], result.timings[key] / images)
        (new, _), (old, _) = best.items()
        entry = {**best, "tokens_speedup": best[old]["tokens_secs"] / best[new]["tokens_secs"],
                 "vqgan_speedup": best[old]["vqgan_secs"] / best[new]["vqgan_secs"],
                 "same_codes": all((c == codes[new]).all() for c in codes.values())}
        report["per_images"][images] = entry
        print(f"{images} images, s per image, {old} -> {new}: tokens {best[old]['tokens_secs']:.2f} -> "
              f"{best[new]['tokens_secs']:.2f} (x{entry['tokens_speedup']:.2f}), VQGAN {best[old]['vqgan_secs']:.2f}"
              f" -> {best[new]['vqgan_secs']:.2f} (x{entry['vqgan_speedup']:.2f}); same codes: {entry['same_codes']}",
              flush=True)
    return report


def bench_chunking(engine, images: int, rounds: int) -> dict:
    """Host loop with progress/cancel every chunk against one call of the same program per cache
    block (all 256 steps on an accelerator; on a CPU 64, as a call reads the blocks up to the
    one it writes), run alternately. Process CPU time is reported beside wall time: other
    work on a shared machine moves wall time by tens of percent, CPU time hardly."""
    from backend.engine import GenerationRequest

    request = GenerationRequest(PROMPT, images, seed=5)
    whole = engine.total_tokens // engine.cache_blocks
    engine.generate_codes(request, steps_per_chunk=whole)  # compiles the one-call program, untimed
    times = {"chunked": [], "single": []}
    for _ in range(rounds):
        for name, steps in (("chunked", None), ("single", whole)):
            wall, cpu = time.perf_counter(), time.process_time()
            engine.generate_codes(request, steps_per_chunk=steps)  # returns host arrays: finished
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    report = {"images": images, "chunk_steps": engine.chunk_steps, "rounds": rounds}
    for index, clock in enumerate(("wall", "cpu")):
        chunked = min(t[index] for t in times["chunked"])
        single = min(t[index] for t in times["single"])
        report[f"chunked_{clock}_secs"] = chunked
        report[f"single_{clock}_secs"] = single
        report[f"overhead_{clock}_percent"] = 100 * (chunked - single) / single
    return report


def bench_continuation(engine, images: int, keep_rows_list, rounds: int) -> dict:
    """Continuations keeping k rows against a fresh job of the same request, run alternately,
    the best of `rounds` each. The decoding time is read from the progress reports (one per
    chunk of steps), so it leaves out what both do before decoding (the text encoder) and
    what only a continuation does (the prefill, timed on its own by the engine)."""
    from backend.engine import GenerationRequest

    fresh_request = GenerationRequest(PROMPT, images, seed=5)
    codes = tuple(int(c) for c in engine.generate_codes(fresh_request)[0][0])
    requests = {k: GenerationRequest(PROMPT, images, seed=5, init_codes=codes, keep_rows=k) for k in keep_rows_list}
    engine.generate(requests[keep_rows_list[0]])  # compiles the prefill, untimed

    def run(request) -> dict:
        seen = []
        timings = engine.generate(request, on_progress=lambda done, total: seen.append(time.perf_counter())).timings
        chunks = (engine.total_tokens - (request.keep_rows or 0) * engine.row_length) // engine.chunk_steps
        # The first report comes when the first chunk is done: the rest took chunks - 1 chunks' time.
        decoding = (seen[-1] - seen[0]) * chunks / (chunks - 1)
        return {**timings, "decoding_secs": decoding}

    best: dict = {}
    for _ in range(rounds):
        for name, request in [("fresh", fresh_request), *requests.items()]:
            timings = run(request)
            if name not in best or timings["tokens_secs"] < best[name]["tokens_secs"]:
                best[name] = timings
    fresh = best.pop("fresh")
    rows = engine.total_tokens // engine.row_length
    report = {"images": images, "rounds": rounds, "fresh_tokens_secs": fresh["tokens_secs"],
              "fresh_decoding_secs": fresh["decoding_secs"], "keep_rows": {}}
    for k, timings in best.items():
        share = (rows - k) / rows
        # What a fresh job spends besides decoding (the text encoder, the host) a continuation spends too.
        allowed = share * fresh["decoding_secs"] + timings["prefill_secs"] + fresh["tokens_secs"] - fresh["decoding_secs"]
        entry = {"tokens_secs": timings["tokens_secs"], "prefill_secs": timings["prefill_secs"],
                 "decoding_secs": timings["decoding_secs"],
                 "decoding_share_of_fresh": timings["decoding_secs"] / fresh["decoding_secs"],
                 "bound_share": share, "allowed_tokens_secs": allowed,
                 "within_bound": timings["tokens_secs"] <= allowed}
        report["keep_rows"][k] = entry
        print(f"keep {k:2d} rows: {entry['tokens_secs']:.3f} s = prefill {entry['prefill_secs']:.3f} s + decoding "
              f"{entry['decoding_secs']:.3f} s ({entry['decoding_share_of_fresh']:.3f} of fresh "
              f"{fresh['decoding_secs']:.3f} s, bound {share:.3f}) + the rest; allowed {allowed:.3f} s "
              f"({100 * (entry['tokens_secs'] / allowed - 1):+.1f}%)", flush=True)
    return report


def bench_previews(engine, images: int, rounds: int) -> dict:
    """The same request with previews (the engine's own spacing, PREVIEW_EVERY_TOKENS unset)
    and without, alternately, the best of `rounds` each: wall and process CPU time."""
    from backend.engine import GenerationRequest
    from backend.generation_run import preview_of

    request = GenerationRequest(PROMPT, images, seed=7)
    total = engine.total_tokens
    engine.preview_every = None
    engine.prepare_colour_table()
    times: dict[str, list] = {"on": [], "off": []}
    counts = []
    for _ in range(rounds):
        for name in ("on", "off"):
            on_preview = (lambda done, codes: preview_of(engine, done, codes, total)) if name == "on" else None
            wall, cpu = time.perf_counter(), time.process_time()
            result = engine.generate(request, on_preview=on_preview)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            if name == "on":
                counts.append((result.timings["previews"], result.timings["preview_secs"]))
    report = {"images": images, "rounds": rounds, "method": engine.preview_method,
              "previews_per_job": [c for c, _ in counts], "preview_secs_per_job": [s for _, s in counts]}
    for index, clock in enumerate(("wall", "cpu")):
        on = min(t[index] for t in times["on"])
        off = min(t[index] for t in times["off"])
        report[f"on_{clock}_secs"], report[f"off_{clock}_secs"] = on, off
        report[f"overhead_{clock}_percent"] = 100 * (on - off) / off
    print("previews ({method}, {images} images): {previews_per_job} per job; with {on_wall_secs:.2f} s, without "
          "{off_wall_secs:.2f} s: {overhead_wall_percent:+.1f}% wall, {overhead_cpu_percent:+.1f}% CPU time".format(
              **report), flush=True)
    return report


def finish(report: dict, json_path: Path | None) -> None:
    """The load average now, then the whole report as JSON: printed, and written to json_path."""
    report["load_average_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES) + ["demo", "tiny"], default="mini",
                        help="a published size with random weights, or a shipped model as it is")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="weights' dtype (default: float32 for mini, float16 for mega)")
    parser.add_argument("--images", default="1,2,4,8", help="comma-separated image counts")
    parser.add_argument("--repeats", type=int, default=2, help="runs per image count; the fastest counts")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--skip-ready", action="store_true", help="skip the time-to-ready runs")
    parser.add_argument("--skip-chunking", action="store_true")
    parser.add_argument("--chunk-rounds", type=int, default=3, help="alternate runs for the chunking cost")
    parser.add_argument("--continuation", default="", help="comma-separated keep_rows to time continuations at")
    parser.add_argument("--continuation-rounds", type=int, default=3)
    parser.add_argument("--continuation-only", action="store_true", help="only the continuation timings")
    parser.add_argument("--previews", action="store_true", help="time generation with previews on and off")
    parser.add_argument("--preview-rounds", type=int, default=2)
    parser.add_argument("--previews-only", action="store_true", help="only the previews' cost (largest image count)")
    parser.add_argument("--against", metavar="REVISION",
                        help="also time the engine of this git revision (e.g. HEAD~1), alternately with this one")
    parser.add_argument("--against-rounds", type=int, default=3)
    parser.add_argument("--against-only", action="store_true", help="only the comparison with --against")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--ready-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dtype = args.dtype or ("float16" if args.model == "mega" else "float32")
    batch_sizes = [int(n) for n in args.images.split(",")]
    if args.ready_child:
        return ready_child(args.ready_child, args.cache_dir, dtype, batch_sizes)

    import jax

    from backend.engine import load_engine

    if args.model in SIZES:
        folder = write_random_model(args.cache_dir / f"bench-{args.model}-{dtype}", args.model, dtype)
    else:
        folder, dtype = args.model, None  # a shipped model, in its own dtype
    report = {"model": args.model, "dtype": dtype, "devices": [str(d) for d in jax.devices()],
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    print(f"devices: {report['devices']}  load average: {report['load_average']}", flush=True)
    keep_rows_list = [int(k) for k in args.continuation.split(",") if k]
    if args.previews_only:
        engine = load_engine(str(folder), args.cache_dir, dtype=dtype)
        engine.warm_up(batch_sizes[-1:])
        report["previews"] = bench_previews(engine, batch_sizes[-1], args.preview_rounds)
        return finish(report, args.json)
    if args.against:
        scratch = tempfile.TemporaryDirectory()
        previous = previous_engine(args.against, Path(scratch.name))
        from backend.engine import GenerationRequest

        engines = {"new": (load_engine(str(folder), args.cache_dir, dtype=dtype), GenerationRequest),
                   args.against: (previous.load_engine(str(folder), args.cache_dir, dtype=dtype),
                                  previous.GenerationRequest)}
        for engine, _ in engines.values():
            engine.warm_up(batch_sizes)
        report["against"] = bench_against(engines, batch_sizes, args.against_rounds)
        del engines, engine
        if args.against_only:
            return finish(report, args.json)
    if args.continuation_only:
        engine = load_engine(str(folder), args.cache_dir, dtype=dtype)
        engine.warm_up(batch_sizes[-1:])
        report["continuation"] = bench_continuation(engine, batch_sizes[-1], keep_rows_list, args.continuation_rounds)
        return finish(report, args.json)
    if not args.skip_ready:
        with tempfile.TemporaryDirectory(dir=args.cache_dir) as fresh:
            report["ready_cold"] = time_to_ready(folder, Path(fresh), dtype, batch_sizes[-1:])
            report["ready_cached"] = time_to_ready(folder, Path(fresh), dtype, batch_sizes[-1:])
        print("time to ready: cold {ready_secs:.1f} s".format(**report["ready_cold"]),
              "cached {ready_secs:.1f} s".format(**report["ready_cached"]),
              "peak host memory after load {:.2f} GB for {:.2f} GB of files".format(
                  report["ready_cold"]["peak_host_bytes_after_load"] / 1e9,
                  report["ready_cold"]["checkpoint_file_bytes"] / 1e9), flush=True)

    engine = load_engine(str(folder), args.cache_dir, dtype=dtype)
    engine.warm_up(batch_sizes)
    # The floor is measured before and after the runs and the better rate kept: on a shared
    # machine other work slows the measurement down as much as the generation.
    floor_before = machine_floor(engine, batch_sizes)
    report["generation"] = bench_generation(engine, batch_sizes, args.repeats)
    if not args.skip_chunking:
        # The fewest images: the shortest steps, where per-chunk host work weighs most.
        report["chunking"] = bench_chunking(engine, batch_sizes[0], args.chunk_rounds)
        print("progress/cancel chunks cost {overhead_wall_percent:+.1f}% wall time, {overhead_cpu_percent:+.1f}% "
              "CPU time against one call per cache block".format(**report["chunking"]), flush=True)
    if keep_rows_list:
        report["continuation"] = bench_continuation(engine, batch_sizes[-1], keep_rows_list, args.continuation_rounds)
    if args.previews:
        report["previews"] = bench_previews(engine, batch_sizes[-1], args.preview_rounds)
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_in_use" in stats:
        report["device_memory"] = {k: stats[k] for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats}
    report["floor"] = _best_floor(floor_before, machine_floor(engine, batch_sizes))
    for images, floor in report["floor"]["per_images"].items():
        measured = report["generation"][images]["tokens_secs"] * 1e3 / engine.config.image_length
        floor["measured_step_ms"] = measured
        floor["measured_over_floor"] = measured / floor["floor_step_ms"]
        print(f"{images} images: step {measured:.0f} ms, floor {floor['floor_step_ms']:.0f} ms "
              f"({floor['matmul_gflop_s']:.0f} GFLOP/s at {floor['rows']} rows, "
              f"{report['floor']['bandwidth_gb_s']:.1f} GB/s) -> x{floor['measured_over_floor']:.2f}", flush=True)
    finish(report, args.json)


if __name__ == "__main__":
    main()
