"""Prove and measure the engine on a CUDA GPU in one command (about 8 minutes on an H100).

    python benchmarks/gpu_check.py --out gpu-report        # on a machine with CUDA JAX
    python benchmarks/gpu_check.py --dry-run --out /tmp/x  # on a CPU: small models, same code

Needs JAX with CUDA, numpy, Pillow, msgpack, ml_dtypes, tokenizers, pytest, and the backend's
own packages (flask, gunicorn, ftfy, emoji, unidecode, python-dotenv) for the HTTP stage.
Each stage runs in its own process, so a crash or an out-of-memory ends only that stage and
device memory is counted per model:

  device    the GPU, driver and JAX; measured copy bandwidth and matrix-product rate
  bench     per model and dtype (mega bfloat16 and float16, mini float32 and bfloat16): a
            random checkpoint of the published shape in the official files, load, compile
            (cold cache), 1/2/4/8 images (tokens, VQGAN, PNG, end to end), the decoding step
            against its floor (weight bytes per step / measured bandwidth), device memory;
            then time to ready and peak memory in a fresh process with the cache warm (for the
            file's own dtype)
            (the first run also profiles its token loop: kernels per step, busy share)
  previous  with --previous: the engine against an earlier copy of it, alternately at 8 images
  http      two backends (gunicorn + Flask) on the one GPU, mega and mini: whole /generate
            requests, alone and at once, and each process's GPU memory
  numerics  the engine's numerical tests (pytest) on the GPU at JAX's default matrix-product
            precision (TF32 for float32 weights) and at full float32; greedy mini tokens on
            the GPU against the CPU, and where they part, the two best scores on each
  batching  issue 30's GPU target: 8 jobs of 8 images of mega (bfloat16), different prompts,
            seeds and values, one at a time (a backend with one slot) against together in one
            BatchRunner (BACKEND_SLOTS=8), rounds alternating; jobs per minute, each job's
            latency, a lone job both ways, the same codes both ways, the runner's compile
            time and device memory (what sets the default slots on a GPU)
  features  what runs only on an accelerator, mini float32 at 8 images: previews drawn by a
            VQGAN pass (with and without, alternately), the first continuation after warm-up
            (its prefill compiled there) against a fresh job, CLIP ranking 16 candidates in
            float16 (a random ViT-B/32; the demo CLIP in the dry run) against generating them

Writes report.json and report.txt (the summary table) into --out after every stage; the
stages' logs, the profile and the compiled loop's HLO stay in --work.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_engine  # noqa: E402  (after the path setup above)
from playground.protocol import Event, event_kind  # noqa: E402

PROMPT = bench_engine.PROMPT
IMAGE_COUNTS = (1, 2, 4, 8)
# (model, dtype of the weights) in the order they run; the file of each model is written in
# the first dtype and cast on load for the second.
BENCH_RUNS = (("mega", "bfloat16"), ("mini", "float32"), ("mega", "float16"), ("mini", "bfloat16"))
FILE_DTYPE = {"mega": "bfloat16", "mini": "float32"}
# The dry run: the same code on shapes a CPU does in seconds.
DRY_SIZES = {
    "mini": dict(bench_engine.SIZES["mini"], d_model=64, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96),
    "mega": dict(bench_engine.SIZES["mega"], d_model=128, encoder_layers=2, decoder_layers=3,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128),
}
BATCHING_JOBS = (8, 8)  # issue 30's GPU target: 8 jobs of 8 images, at least 5x the jobs per minute
NUMERIC_TESTS = ("tests/test_generator.py", "tests/test_dallebart.py")


# ---------------------------------------------------------------- the parent: stages in child processes


class Run:
    def __init__(self, out: Path, work: Path, dry_run: bool, budget_secs: float, only: set[str] | None):
        self.out, self.work, self.dry_run, self.only = out, work, dry_run, only
        self.deadline = time.monotonic() + budget_secs
        self.cache = work / "cache"  # checkpoints and one compilation cache for every stage
        self.report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry_run": dry_run, "stages": {}}

    def env(self) -> dict:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # as the backend runs: memory as used
        if self.dry_run:
            env["JAX_PLATFORMS"] = "cpu"
        return env

    def stage(self, name: str, args: list[str], timeout: float) -> dict:
        """Run `gpu_check.py --stage ...` in a child; its last stdout line is its JSON result."""
        left = self.deadline - time.monotonic()
        if self.only and name not in self.only:
            return {}
        if left < 20:
            result = {"skipped": "out of time"}
        else:
            started = time.monotonic()
            log = self.work / f"{name}.log"
            command = [sys.executable, __file__, "--work", str(self.work), *(["--dry-run"] if self.dry_run else []),
                       "--stage", *args]
            with log.open("w") as sink:
                try:
                    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=sink, text=True, env=self.env(),
                                         timeout=min(timeout, left), check=False)
                    lines = run.stdout.strip().splitlines()
                    result = json.loads(lines[-1]) if run.returncode == 0 and lines else {
                        "error": f"exit {run.returncode}", "log_tail": _tail(log)}
                except subprocess.TimeoutExpired:
                    result = {"error": f"timed out after {min(timeout, left):.0f} s", "log_tail": _tail(log)}
            result["stage_secs"] = round(time.monotonic() - started, 1)
        self.report["stages"][name] = result
        self.save()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: "
              f"{result.get('error') or result.get('skipped') or 'ok'} ({result.get('stage_secs', 0)} s)", flush=True)
        return result

    def save(self) -> None:
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2, default=str))
        (self.out / "report.txt").write_text(summary(self.report))


def _tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(errors="replace")
    return text[-chars:]


def main_parent(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    run = Run(args.out, work, args.dry_run, args.budget_secs, only)
    run.stage("device", ["device"], 120)
    (first_model, first_dtype), (second_model, second_dtype), *rest = BENCH_RUNS
    run.stage(f"bench-{first_model}-{first_dtype}", ["bench", first_model, first_dtype, "profile"], 240)
    if args.previous:
        run.stage("previous", ["previous", first_model, first_dtype, str(args.previous.resolve())], 240)
    run.stage(f"batching-{first_model}-{first_dtype}", ["batching", first_model, first_dtype], 300)
    run.stage(f"bench-{second_model}-{second_dtype}", ["bench", second_model, second_dtype], 240)
    run.stage("http", ["http"], 180)
    run.stage("numerics", ["numerics"], 240)
    run.stage("numerics-float32", ["numerics", "float32"], 180)
    run.stage("features", ["features"], 240)
    for model, dtype in rest:
        run.stage(f"bench-{model}-{dtype}", ["bench", model, dtype], 240)
    run.report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    run.save()
    print(summary(run.report))


# ---------------------------------------------------------------- stages (each in its own process)


def stage_device(work: Path, dry_run: bool) -> dict:
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    info = {"jax": jax.__version__, "platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,"
             "compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    # Copy bandwidth: read + write of a large array, as METHOD-style device copies are counted.
    size = 2**26 if dry_run else 2**30  # elements of bfloat16: 2 GiB on the GPU
    x = jnp.arange(size, dtype=jnp.bfloat16)
    copy = jax.jit(lambda a: a + jnp.bfloat16(1))
    copy(x).block_until_ready()
    secs = min(bench_engine.timed(lambda: copy(x).block_until_ready()) for _ in range(5))
    info["copy_bandwidth_gb_s"] = 2 * x.nbytes / secs / 1e9
    # Matrix-product rate on a large bfloat16 product (random data, not zeros).
    n = 1024 if dry_run else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    product = jax.jit(lambda a, b: a @ b)
    product(a, b).block_until_ready()
    secs = min(bench_engine.timed(lambda: product(a, b).block_until_ready()) for _ in range(5))
    info["bf16_matmul_tflop_s"] = 2 * n**3 / secs / 1e12
    return info


def _sizes(dry_run: bool) -> dict:
    return DRY_SIZES if dry_run else bench_engine.SIZES


def model_folder(work: Path, model: str, dry_run: bool) -> Path:
    """The random checkpoint of `model` (written once per run, in the file dtype)."""
    vqgan_config = None
    if dry_run:
        from backend.engine.models import tiny_vqgan_config

        vqgan_config = tiny_vqgan_config()
    return bench_engine.write_random_model(work / "cache" / f"random-{model}", model, FILE_DTYPE[model],
                                           sizes=_sizes(dry_run), vqgan_config=vqgan_config)


def stage_bench(work: Path, dry_run: bool, model: str, dtype: str, profile: str = "") -> dict:
    import jax

    from backend.engine import GenerationRequest, load_engine

    report: dict = {"model": model, "dtype": dtype}
    started = time.perf_counter()
    folder = model_folder(work, model, dry_run)
    report["write_checkpoint_secs"] = time.perf_counter() - started
    started = time.perf_counter()
    engine = load_engine(str(folder), work / "cache", dtype=dtype)
    report["load_secs"] = time.perf_counter() - started
    report["device_bytes_after_load"] = _memory()["bytes_in_use"]
    report["compile_secs"] = {}
    for images in IMAGE_COUNTS:  # cold: this run's compilation cache starts empty
        started = time.perf_counter()
        engine.warm_up((images,))
        report["compile_secs"][images] = time.perf_counter() - started
    report["generation"] = bench_engine.bench_generation(engine, IMAGE_COUNTS, repeats=2)
    report["device_peak_bytes"] = _memory()["peak_bytes_in_use"]
    report["programs"] = program_costs(engine, max(IMAGE_COUNTS))
    floor = bench_engine.machine_floor(engine, IMAGE_COUNTS)
    report["floor"] = step_floors(engine, floor, report["generation"])
    if profile:
        request = GenerationRequest(PROMPT, max(IMAGE_COUNTS), seed=7)
        report["profile"] = profile_tokens(engine, request, work / "profile")
        chunk = engine.chunk_program(max(IMAGE_COUNTS), start=0)
        report["hlo"] = hlo_counts(chunk, work / "chunk-hlo.txt")
    del engine
    if dtype == FILE_DTYPE[model]:  # a restart: load + warm-up from the warm compilation cache, 8 images
        report["ready_cached"] = bench_engine.time_to_ready(folder, work / "cache", dtype, IMAGE_COUNTS)
    report["devices"] = [str(d) for d in jax.devices()]
    return report


def _memory() -> dict:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return {"bytes_in_use": stats.get("bytes_in_use"), "peak_bytes_in_use": stats.get("peak_bytes_in_use")}


def program_costs(engine, images: int) -> dict:
    """XLA's own count of the chunk program: its FLOPs, bytes and buffers, per decoding step."""
    chunk = engine.chunk_program(images, start=0)
    costs = {}
    with contextlib.suppress(Exception):  # cost and memory analyses are best effort on every backend
        cost = chunk.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        costs["chunk_flops"] = cost.get("flops")
        costs["chunk_bytes_accessed"] = cost.get("bytes accessed")
    with contextlib.suppress(Exception):
        memory = chunk.memory_analysis()
        costs["chunk_temp_bytes"] = memory.temp_size_in_bytes
        costs["chunk_argument_bytes"] = memory.argument_size_in_bytes
        costs["chunk_alias_bytes"] = memory.alias_size_in_bytes
    return costs


def step_floors(engine, floor: dict, generation: dict) -> dict:
    """Per image count: the measured decoding step against two floors, weights only (the
    issue's definition) and weights + the key/value cache read in full."""
    config = engine.config
    itemsize = engine.cache_dtype.itemsize
    bandwidth = floor["bandwidth_gb_s"] * 1e9
    weights = floor["step_weight_params"] * itemsize
    result = {"bandwidth_gb_s": floor["bandwidth_gb_s"], "step_weight_bytes": weights, "per_images": {}}
    for images in IMAGE_COUNTS:
        rows = 2 * images
        cache = 2 * config.decoder_layers * config.image_length * rows * config.d_model * itemsize
        measured = generation[images]["tokens_secs"] / config.image_length
        result["per_images"][images] = {
            "measured_step_ms": 1e3 * measured,
            "floor_weights_ms": 1e3 * weights / bandwidth,
            "floor_weights_and_cache_ms": 1e3 * (weights + cache) / bandwidth,
            "measured_over_floor": measured / (weights / bandwidth),
            "matmul_floor_ms": floor["per_images"][images]["floor_step_ms"],
        }
    return result


def stage_previous(work: Path, dry_run: bool, model: str, dtype: str, previous: str) -> dict:
    """The engine against a previous version of it (a copy of its package, imported as
    `previous_engine` from the folder `previous`), alternately at 8 images: tokens time, and
    whether both give the same codes."""
    from backend.engine import GenerationRequest, load_engine

    sys.path.insert(0, previous)
    import previous_engine

    images = max(IMAGE_COUNTS)
    folder = model_folder(work, model, dry_run)
    engines = {"engine": load_engine(str(folder), work / "cache", dtype=dtype),
               "previous": previous_engine.load_engine(str(folder), work / "cache", dtype=dtype)}
    request = GenerationRequest(PROMPT, images, seed=7)
    previous_request = previous_engine.GenerationRequest(PROMPT, images, seed=7)
    report: dict = {"images": images, "compile_secs": {}, "same_codes": None}
    for name, engine in engines.items():
        started = time.perf_counter()
        engine.warm_up((images,))
        report["compile_secs"][name] = time.perf_counter() - started
    times: dict[str, list[float]] = {name: [] for name in engines}
    codes = {}
    for _ in range(3):  # alternately, so a slow moment hits both alike
        for name, engine in engines.items():
            started = time.perf_counter()
            codes[name] = engine.generate_codes(request if name == "engine" else previous_request)[0]
            times[name].append(time.perf_counter() - started)
    report["same_codes"] = bool((codes["engine"] == codes["previous"]).all())
    report["tokens_secs"] = {name: {"best": min(t), "median": statistics.median(t)} for name, t in times.items()}
    return report


def profile_tokens(engine, request, folder: Path) -> dict:
    """A JAX profiler trace of the first chunks of a generation, summed per device kernel."""
    import jax

    from backend.engine import GenerationCancelled

    cancel = threading.Event()
    chunks = 4

    def stop_after(done, total):
        if done >= chunks * engine.chunk_steps:
            cancel.set()

    engine.generate_codes(request)  # warm
    started = time.perf_counter()
    try:
        with jax.profiler.trace(str(folder), create_perfetto_trace=True):
            with contextlib.suppress(GenerationCancelled):
                engine.generate_codes(request, on_progress=stop_after, cancel=cancel)
    except Exception as error:  # noqa: BLE001 - a profiler that cannot run must not end the stage
        return {"error": f"{type(error).__name__}: {error}"}
    wall = time.perf_counter() - started
    traces = sorted(folder.rglob("perfetto_trace.json.gz"))
    if not traces:
        return {"error": "no perfetto trace written", "wall_secs": wall}
    summary = summarize_trace(json.loads(gzip.open(traces[-1]).read()))
    summary["traced_wall_secs"] = wall
    return summary


def summarize_trace(trace: dict) -> dict:
    """Per device (GPU) process: kernels launched, their summed time, the busy share of the
    traced span, and the kernels that take the most time."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    result: dict = {"processes": sorted(set(names.values()))}
    for pid, process in names.items():
        if not any(tag in process for tag in ("/device:GPU", "/device:CPU")):
            continue
        spans = sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events
                       if e.get("pid") == pid and e.get("ph") == "X")
        if not spans:
            continue
        busy, end = 0.0, None
        for start, stop, _ in spans:  # the union of the intervals: streams may overlap
            if end is None or start > end:
                busy += stop - start
                end = stop
            elif stop > end:
                busy += stop - end
                end = stop
        per_name: dict[str, list[float]] = {}
        for start, stop, name in spans:
            per_name.setdefault(name, []).append(stop - start)
        top = sorted(per_name.items(), key=lambda item: -sum(item[1]))[:25]
        span_us = spans[-1][1] - spans[0][0]
        result[process] = {
            "events": len(spans), "busy_us": busy, "span_us": span_us,
            "busy_share": busy / span_us if span_us else None,
            "top": [{"name": name[:160], "count": len(d), "total_us": sum(d), "mean_us": sum(d) / len(d)}
                    for name, d in top],
        }
    return result


def hlo_counts(compiled, keep: Path) -> dict:
    """How many kernels the compiled chunk program launches, by kind (from its HLO text, kept)."""
    try:
        text = compiled.as_text()
    except Exception as error:  # noqa: BLE001
        return {"error": str(error)}
    keep.write_text(text)
    counts = {kind: text.count(f" {kind}(") for kind in ("fusion", "custom-call", "while", "conditional", "sort",
                                                         "copy", "dynamic-update-slice", "all-reduce")}
    counts["lines"] = text.count("\n")
    return counts


def stage_batching(work: Path, dry_run: bool, model: str, dtype: str) -> dict:
    """Jobs one at a time against together in one BatchRunner (bench_batching.compare)."""
    import jax

    from backend.engine import load_engine
    from backend.engine.batching import BatchRunner
    from bench_batching import compare, job_requests

    jobs, images = (4, 2) if dry_run else BATCHING_JOBS
    engine = load_engine(str(model_folder(work, model, dry_run)), work / "cache", dtype=dtype)
    engine.preview_every = 0  # the decoding's figures, not the previews'
    runner = BatchRunner(engine, slots=jobs, sizes=(images, jobs * images))  # the lone job's size and all together
    report: dict = {"model": model, "dtype": dtype, "jobs": jobs, "images": images, "sizes": list(runner.sizes),
                    "device_bytes_after_load": _memory()["bytes_in_use"]}
    started = time.perf_counter()
    engine.warm_up((images,))
    report["engine_warm_up_secs"] = time.perf_counter() - started
    started = time.perf_counter()
    runner.warm_up(continuations=False)
    report["runner_warm_up_secs"] = time.perf_counter() - started
    report.update(compare(engine, runner, job_requests(jobs, images), rounds=1 if dry_run else 2,
                          lone_rounds=1 if dry_run else 3))
    runner.close()
    report["device_peak_bytes"] = _memory()["peak_bytes_in_use"]
    report["devices"] = [str(d) for d in jax.devices()]
    return report


def stage_features(work: Path, dry_run: bool) -> dict:
    from backend.engine import GenerationRequest, load_engine
    from backend.engine.clip import load_clip
    from backend.engine.models import CLIP_DEMO_SUBFOLDER, DEMO_FOLDER
    from bench_clip import write_random_clip

    images = max(IMAGE_COUNTS)
    engine = load_engine(str(model_folder(work, "mini", dry_run)), work / "cache", dtype="float32")
    report: dict = {"images": images, "preview_method": engine.preview_method}
    started = time.perf_counter()
    engine.warm_up((images,))
    report["warm_up_secs"] = time.perf_counter() - started
    fresh = GenerationRequest(PROMPT, images, seed=11)
    started = time.perf_counter()
    codes = engine.generate(fresh).codes
    report["fresh_secs"] = time.perf_counter() - started
    # The first continuation after warm-up: on an accelerator its prefill is compiled already.
    continued = GenerationRequest(PROMPT, images, seed=11, init_codes=tuple(int(c) for c in codes[0]), keep_rows=8)
    report["first_continuation_secs"] = bench_engine.timed(lambda: engine.generate(continued))
    report["continuation_secs"] = bench_engine.timed(lambda: engine.generate(continued))
    report["previews"] = bench_engine.bench_previews(engine, images, rounds=2)

    if dry_run:
        clip_folder, clip_name = DEMO_FOLDER / CLIP_DEMO_SUBFOLDER, "demo"
    else:
        clip_folder, clip_name = write_random_clip(work / "cache" / "random-clip"), "clip_vit_base_patch32"
    ranker = load_clip(clip_folder, clip_name, dtype="float16")
    candidates = 2 * images
    started = time.perf_counter()
    pictures = [picture for seed in (1, 2)
                for picture in engine.generate(GenerationRequest(PROMPT, images, seed=seed)).images]
    generate_secs = time.perf_counter() - started
    ranker.score(PROMPT, pictures)  # compiles
    rank_secs = min(bench_engine.timed(lambda: ranker.score(PROMPT, pictures)) for _ in range(3))
    report["clip"] = {"model": clip_name, "dtype": "float16", "candidates": candidates, "rank_secs": rank_secs,
                      "generate_secs": generate_secs, "rank_share_percent": 100 * rank_secs / generate_secs}
    return report


def stage_http(work: Path, dry_run: bool) -> dict:
    """Two backends on the one GPU (mega and mini), real gunicorn + Flask; whole requests."""
    from playground.redis_server import free_port

    backends = {}
    logs = []
    try:
        for model in ("mega", "mini"):
            folder = model_folder(work, model, dry_run)
            port = free_port()
            log = (work / f"backend-{model}.log").open("w")
            logs.append(log)
            env = dict(os.environ, DALLE_MODEL=str(folder), MODEL_CACHE_DIR=str(work / "cache"),
                       BACKEND_HOST="127.0.0.1", BACKEND_PORT=str(port),
                       BACKEND_WARMUP_BATCH_SIZES=",".join(map(str, IMAGE_COUNTS)))
            process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            backends[model] = {"process": process, "url": f"http://127.0.0.1:{port}", "started": time.monotonic()}
        report: dict = {"backends": {}}
        for model, backend in backends.items():
            health = _wait_ready(backend["url"], backend["process"], timeout=150)
            report["backends"][model] = {"ready_secs": time.monotonic() - backend["started"], "health": health}
        images = max(IMAGE_COUNTS)
        for model, backend in backends.items():
            runs = [_generate(backend["url"], images, seed) for seed in (1, 2, 3)]
            report["backends"][model]["alone"] = {
                "request_secs": [r["request_secs"] for r in runs], "best_secs": min(r["request_secs"] for r in runs),
                "backend_timings": runs[-1]["timings"], "images": images}
        together: dict = {}
        threads = [threading.Thread(target=lambda m=m, b=b: together.__setitem__(m, _generate(b["url"], images, 9)))
                   for m, b in backends.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report["both_at_once"] = {m: r["request_secs"] for m, r in together.items()}
        report["gpu_processes"] = _gpu_processes()
        return report
    finally:
        for backend in backends.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(backend["process"].pid, signal.SIGTERM)
        for backend in backends.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                backend["process"].wait(20)
        for log in logs:
            log.close()


def _wait_ready(url: str, process, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend at {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
            if body.get("status") == "error":
                raise RuntimeError(f"backend at {url}: {body.get('error')}") from None
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"backend at {url} not ready after {timeout} s")


def _generate(url: str, images: int, seed: int) -> dict:
    body = json.dumps({"job_id": f"gpu-check-{seed}", "text": PROMPT, "num_images": images, "seed": seed}).encode()
    request = urllib.request.Request(f"{url}/generate", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        events = [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]
    elapsed = time.perf_counter() - started
    last = events[-1]
    if event_kind(last) != Event.DONE or len(last.get("images", [])) != images:
        raise RuntimeError(f"/generate ended with {str(last)[:300]}")
    return {"request_secs": elapsed, "timings": last["timings"]}


def _gpu_processes() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable: {error}"


def stage_numerics(work: Path, dry_run: bool, precision: str = "default") -> dict:
    """The engine's numerical tests on this device at JAX's default matrix-product precision
    (TF32 for float32 on recent NVIDIA GPUs) or at full float32; with the default, greedy
    tokens here against the CPU too."""
    import jax
    import pytest

    if precision != "default":
        jax.config.update("jax_default_matmul_precision", precision)
    report: dict = {"precision": precision}
    junit = work / f"numerics-{precision}.xml"

    class Fixtures:  # what tests/conftest.py gives these files, without its Redis and browser
        @pytest.fixture(scope="session")
        def model_cache_dir(self, tmp_path_factory):
            return tmp_path_factory.mktemp("model-cache")

    selection = ["-k", "not two_devices"] if dry_run else []
    code = pytest.main([*(str(ROOT / t) for t in NUMERIC_TESTS), "-q", "--noconftest", "-p", "no:cacheprovider",
                        f"--junitxml={junit}", "-o", "addopts=", *selection], plugins=[Fixtures()])
    report["pytest_exit_code"] = int(code)
    report["pytest"] = _junit_summary(junit)
    if precision == "default":
        report["greedy_vs_cpu"] = greedy_against_cpu(work, dry_run)
    return report


def _junit_summary(path: Path) -> dict:
    import xml.etree.ElementTree as ElementTree

    if not path.exists():
        return {"error": "no junit report"}
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = []
    for case in suite.iter("testcase"):
        problem = next((p for p in (case.find("failure"), case.find("error")) if p is not None), None)
        if problem is not None:  # (an Element without children is false: compare with None)
            failed.append(f"{case.get('name')}: {problem.get('message', '')[:400]}")
    return {key: suite.get(key) for key in ("tests", "failures", "errors", "skipped", "time")} | {"failed": failed}


def greedy_against_cpu(work: Path, dry_run: bool) -> dict:
    """Greedy mini tokens (one image, float32 weights) on the GPU, at JAX's default matrix-product
    precision and at full float32, against the CPU: where they part and by what margin."""
    import jax
    import numpy as np

    from backend.engine import GenerationRequest, dallebart, load_engine

    folder = model_folder(work, "mini", dry_run)
    request = GenerationRequest(PROMPT, 1, seed=3, top_k=1)
    cpu = load_engine(str(folder), work / "cache", dtype="float32", devices=jax.devices("cpu"))
    expected = cpu.generate_codes(request)[0][0]
    report = {}
    for precision in ("default", "float32"):
        if precision == "float32" and report["default"]["first_difference"] is None:
            break  # nothing to explain
        with jax.default_matmul_precision(None if precision == "default" else "float32"):
            engine = load_engine(str(folder), work / "cache", dtype="float32")
            codes = engine.generate_codes(request)[0][0]
        differ = np.flatnonzero(codes != expected)
        entry = {"tokens": len(codes), "first_difference": int(differ[0]) if len(differ) else None,
                 "matching_prefix": int(differ[0]) if len(differ) else len(codes)}
        if len(differ):
            position = int(differ[0])
            entry["margins_at_difference"] = {
                name: _greedy_margin(e, expected[:position], position, dallebart) for name, e in (("cpu", cpu),
                                                                                                  ("gpu", engine))}
        report[precision] = entry
    return report


def _greedy_margin(engine, prefix, position: int, dallebart) -> dict:
    """Super-conditioned scores of the two best codes at `position`, teacher-forced on `prefix`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    config = engine.config
    ids, mask = engine.encode_text(PROMPT)
    device = engine.devices[0]
    sequence = np.full((1, config.image_length), config.decoder_start_token_id, np.int32)
    sequence[0, 1:position + 1] = prefix[:position]
    with jax.default_device(device):
        rows = []
        for r in range(2):
            states = dallebart.encode(engine.params, config, jnp.asarray(ids[r:r + 1]), jnp.asarray(mask[r:r + 1]))
            rows.append(np.asarray(dallebart.decode_full(engine.params, config, jnp.asarray(sequence), states,
                                                         jnp.asarray(mask[r:r + 1]))[0, position]))
    cond, uncond = rows
    scores = uncond + 10.0 * (cond - uncond)
    scores[engine.num_codes:] = -np.inf
    best = np.argsort(-scores)[:2]
    return {"codes": best.tolist(), "scores": scores[best].tolist(), "gap": float(scores[best[0]] - scores[best[1]])}


# ---------------------------------------------------------------- the summary table


def summary(report: dict) -> str:
    stages = report["stages"]
    lines = [f"gpu_check {'(dry run) ' if report['dry_run'] else ''}started {report['started']}"]
    device = stages.get("device", {})
    if "device_kind" in device:
        lines.append(f"device: {device.get('nvidia_smi') or device['device_kind']}; JAX {device['jax']}; "
                     f"copy {device['copy_bandwidth_gb_s']:.0f} GB/s; bf16 matmul {device['bf16_matmul_tflop_s']:.0f} "
                     "TFLOP/s")
    lines.append("")
    lines.append("model  dtype     img  tokens s  VQGAN s  PNG s  total s  step ms  floor ms  x floor  compile s")
    for name, stage in stages.items():
        if not name.startswith("bench-"):
            continue
        if "generation" not in stage:
            lines.append(f"{name}: {stage.get('error') or stage.get('skipped')}")
            continue
        for images, g in stage["generation"].items():
            f = stage["floor"]["per_images"][images]
            lines.append(f"{stage['model']:<6} {stage['dtype']:<9} {images:>3}  {g['tokens_secs']:8.3f}  "
                         f"{g['vqgan_secs']:7.3f}  {g['png_secs']:5.3f}  {g['total_secs']:7.3f}  "
                         f"{f['measured_step_ms']:7.2f}  {f['floor_weights_ms']:8.2f}  {f['measured_over_floor']:7.1f}  "
                         f"{stage['compile_secs'][images]:9.1f}")
        ready = stage.get("ready_cached")
        lines.append(f"       load {stage['load_secs']:.1f} s; device memory: weights "
                     f"{_gb(stage['device_bytes_after_load'])}, peak {_gb(stage['device_peak_bytes'])}" + (
                         f"; restart with warm cache: ready {ready['ready_secs']:.1f} s, peak at {ready['images']} "
                         f"images {_gb(ready['device_peak_bytes'])}" if ready else ""))
    previous = stages.get("previous", {})
    if "tokens_secs" in previous:
        lines.append("")
        lines.append(f"against the previous engine, {previous['images']} images, tokens best / median s "
                     f"(same codes: {previous['same_codes']}):")
        for name, t in previous["tokens_secs"].items():
            lines.append(f"  {name:<10} {t['best']:.3f} / {t['median']:.3f}")
    for name, stage in stages.items():
        for process, p in (stage.get("profile") or {}).items():
            if isinstance(p, dict) and "events" in p:
                lines.append(f"profile of {name} on {process}: {p['events']} events, busy {p['busy_share']:.0%} "
                             f"of {p['span_us'] / 1e3:.1f} ms; HLO {stage.get('hlo')}")
                for top in p["top"][:8]:
                    lines.append(f"    {top['total_us'] / 1e3:8.2f} ms {top['count']:6d}x {top['name'][:70]}")
    http = stages.get("http", {})
    if "backends" in http:
        lines.append("")
        for model, b in http["backends"].items():
            lines.append(f"http {model}: ready {b['ready_secs']:.1f} s; {b['alone']['images']} images: "
                         f"best {b['alone']['best_secs']:.3f} s ({', '.join(f'{s:.3f}' for s in b['alone']['request_secs'])})")
        lines.append(f"http both at once: {http.get('both_at_once')}; GPU processes: {http.get('gpu_processes')!r}")
    for name in ("numerics", "numerics-float32"):
        numerics = stages.get(name, {})
        if "pytest" in numerics:
            p = numerics["pytest"]
            lines.append("")
            lines.append(f"{name}: {p.get('tests')} tests, {p.get('failures')} failed, {p.get('errors')} errors"
                         + (f"; greedy vs CPU: {numerics['greedy_vs_cpu']}" if "greedy_vs_cpu" in numerics else ""))
            lines.extend(f"  FAILED {f}" for f in p.get("failed", []))
    for name, stage in stages.items():
        if name.startswith("batching-") and "speed_up" in stage:
            one, together = stage["one_at_a_time"], stage["batched"]
            lines.append("")
            lines.append(f"{name}: {stage['jobs']} jobs of {stage['images']} images: one at a time "
                         f"{one['jobs_per_minute']:.1f} jobs/min, together {together['jobs_per_minute']:.1f} "
                         f"(x{stage['speed_up']:.2f}); mean latency {one['mean_latency_secs']:.2f} -> "
                         f"{together['mean_latency_secs']:.2f} s; lone job {one['lone_job_secs']:.3f} -> "
                         f"{together['lone_job_secs']:.3f} s ({stage['lone_job_slower_percent']:+.1f}%); "
                         f"same codes: {stage['same_codes']}; runner compile {stage['runner_warm_up_secs']:.1f} s; "
                         f"peak {_gb(stage['device_peak_bytes'])}")
    features = stages.get("features", {})
    if "clip" in features:
        f, previews, clip = features, features["previews"], features["clip"]
        lines.append("")
        lines.append(f"features, mini float32, {f['images']} images: warm-up {f['warm_up_secs']:.1f} s; fresh job "
                     f"{f['fresh_secs']:.3f} s, first continuation (keep 8 rows) {f['first_continuation_secs']:.3f} s, "
                     f"then {f['continuation_secs']:.3f} s")
        lines.append(f"  previews ({previews['method']}): {previews['previews_per_job']} a job, "
                     f"{previews['overhead_wall_percent']:+.1f}% wall time; CLIP {clip['model']} {clip['dtype']}: "
                     f"{clip['candidates']} candidates in {clip['rank_secs']:.3f} s, {clip['rank_share_percent']:.1f}% "
                     f"of generating them")
    for name, stage in stages.items():
        if "error" in stage:
            lines.append(f"{name} ERROR: {stage['error']}")
    return "\n".join(lines) + "\n"


def _gb(value) -> str:
    return "?" if value is None else f"{value / 1e9:.2f} GB"


# ---------------------------------------------------------------- command line


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-report"), help="where report.json/.txt go")
    parser.add_argument("--work", type=Path, help="scratch folder for checkpoints and caches (default: a temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="small models on the CPU: checks the script")
    parser.add_argument("--budget-secs", type=float, default=450, help="stop starting stages after this")
    parser.add_argument("--only", help="comma-separated stage names, e.g. device,bench-mega-bfloat16,http")
    parser.add_argument("--previous", type=Path, help="a folder holding an earlier engine package as "
                        "previous_engine/, to time against (e.g. git archive HEAD~1 backend/engine)")
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.stage:
        return main_parent(args)
    name, *rest = args.stage
    stages = {"device": stage_device, "bench": stage_bench, "previous": stage_previous, "http": stage_http,
              "numerics": stage_numerics, "features": stage_features, "batching": stage_batching}
    result = stages[name](args.work, args.dry_run, *rest)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
