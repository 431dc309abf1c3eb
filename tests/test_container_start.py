"""What a container does before and as it starts, run as real processes: the entrypoint that
fixes a host folder's owner and drops root, each service's check that it can write its data
folder, the backend's GPU check (DALLE_DEVICE) and its container health check.

The tests run as root in CI, and root writes anywhere: a service that must meet a folder it
cannot write runs as `nobody` (65534), either through the entrypoint's own privilege drop or
started as that user (with setpriv, keeping only the right to read, see `run_as_prefix`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from backend.healthcheck import check, describe_loading
from playground.protocol import BackendStatus, Stage, loading_report
from playground.redis_server import free_port
from testkit.processes import REPO_ROOT, ServiceProcess, backend_process, run_as_prefix
from playground.writable import not_writable_message

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root (to chown and drop privileges) and setpriv")


@pytest.fixture
def shared_dir():
    """A folder other users can reach (pytest's tmp_path is root's, mode 700)."""
    path = Path(tempfile.mkdtemp(prefix="dalle-container-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def read_only_folder(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "library.json").write_text("{}")
    folder.chmod(0o555)  # root's, no one else may write
    return folder


def run_service(module: str, env: dict[str, str], uid: int, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*run_as_prefix(uid), sys.executable, "-m", module], cwd=REPO_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Each service refuses to start on a data folder it cannot write, with the documented line
# ---------------------------------------------------------------------------------------------
def refusal(service: str, library: Path) -> list[str]:
    """The lines a service prints when it refuses to start as NOBODY on `library`, which
    compose mounted from the host folder /mnt/big/dalle/library."""
    env = {"LIBRARY_DIR": str(library), "LIBRARY_HOST_PATH": "/mnt/big/dalle/library",
           # Never reached: the check comes first.
           "REDIS_URL": "redis://127.0.0.1:1/0", "BACKEND_URLS": "http://127.0.0.1:1",
           "FRONTEND_HOST": "127.0.0.1", "FRONTEND_PORT": str(free_port())}
    run = run_service(service, env, uid=NOBODY)
    assert run.returncode == 1, run.stderr
    return [line for line in run.stderr.splitlines() if line.strip()]


@needs_root
@pytest.mark.parametrize("service", ["scheduler", "frontend"])
def test_a_service_exits_with_one_line_naming_the_folder_and_the_fix(service, shared_dir):
    library = read_only_folder(shared_dir, "library")
    assert refusal(service, library) == [
        f"{service}: cannot write to LIBRARY_DIR={library} (host folder /mnt/big/dalle/library, set by "
        f"LIBRARY_VOLUME) as uid {NOBODY}: Permission denied. Fix: sudo chown -R {NOBODY}:{NOBODY} "
        "/mnt/big/dalle/library  (or set APP_UID/APP_GID in .env to the folder's owner, "
        "`stat -c %u:%g /mnt/big/dalle/library`, then docker compose up -d)"]
    assert sorted(p.name for p in library.iterdir()) == ["library.json"], "the probe file was left behind"


@pytest.fixture
def read_only_mount(shared_dir):
    """A folder on a file system mounted read-only (root writes nowhere on it either)."""
    folder = shared_dir / "read-only"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0777", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@needs_root
def test_a_read_only_library_gets_its_own_fix_not_a_chown(read_only_mount):
    assert refusal("scheduler", read_only_mount) == [
        f"scheduler: cannot write to LIBRARY_DIR={read_only_mount} (host folder /mnt/big/dalle/library, set by "
        f"LIBRARY_VOLUME) as uid {NOBODY}: Read-only file system. Fix: mount it read-write (chown cannot change a "
        "read-only file system): drop `:ro` from its volume in the compose file, or remount the disk that "
        "holds it (`findmnt -T /mnt/big/dalle/library` shows it; `sudo mount -o remount,rw` it)"]


@needs_root
def test_the_backend_reports_a_cache_it_cannot_write_on_health_at_once(shared_dir):
    cache = read_only_folder(shared_dir, "cache")
    backend = backend_process(shared_dir, cache, model="tiny", run_as=NOBODY,
                              extra_env={"MODEL_CACHE_HOST_PATH": "model-cache", "DALLE_DEVICE": "cpu"}).start()
    try:
        body = wait_for_health_status(backend, "error", timeout=60)
        assert body["error"] == (
            f"cannot write to MODEL_CACHE_DIR={cache} (Docker volume model-cache) as uid {NOBODY}: "
            f"Permission denied. Fix: docker compose run --rm --no-deps --entrypoint chown backend "
            f"-R {NOBODY}:{NOBODY} {cache}")
        # The container check turns it unhealthy, with the reason as its one line.
        code, line = check(backend.url + "/health")
        assert (code, line) == (1, f"error: {body['error']}")
        assert f"loading model tiny failed: {body['error']}" in backend.log_tail()
        assert "Traceback" not in backend.log_tail(), "a clear one-line error, not a stack trace"
    finally:
        backend.stop()


def test_the_message_outside_docker_names_the_folder_itself(tmp_path):
    line = not_writable_message(tmp_path / "library", "LIBRARY_DIR", "Permission denied", {}, uid=1000, gid=1000)
    assert line == (f"cannot write to LIBRARY_DIR={tmp_path / 'library'} as uid 1000: Permission denied. "
                    f"Fix: sudo chown -R 1000:1000 {(tmp_path / 'library').resolve()}  (or choose another LIBRARY_DIR)")


# ---------------------------------------------------------------------------------------------
# The entrypoint: fix what needs it, drop root, exec the service
# ---------------------------------------------------------------------------------------------
# The "service" after the drop: a shell (reachable by any user, unlike an interpreter that may
# live in root's home) that writes and deletes a file in the folder, then says who it runs as.
SHELL_PROBE = ["/bin/sh", "-c", 'touch "$LIBRARY_DIR/.probe" && rm "$LIBRARY_DIR/.probe" && id -u && id -g && id -G']
# The same start-up check the services run, for an entrypoint that is not root.
PYTHON_PROBE = [sys.executable, "-c", "import os; from playground.writable import ensure_writable; "
                "ensure_writable(os.environ['LIBRARY_DIR'], 'LIBRARY_DIR', os.environ)"]


def run_entrypoint(folder: Path, uid: int = NOBODY, as_user: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "APP_UID": str(uid), "APP_GID": str(uid), "LIBRARY_DIR": str(folder)}
    prefix, probe = ([], SHELL_PROBE) if as_user is None else (run_as_prefix(as_user), PYTHON_PROBE)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "playground.container_entrypoint", "--data-dir-from", "LIBRARY_DIR",
         "--", *probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


@needs_root
def test_a_root_owned_host_folder_is_given_to_the_app_user_before_root_is_dropped(shared_dir):
    folder = shared_dir / "library"
    (folder / "job-1").mkdir(parents=True)  # as Docker creates a missing bind source: root's
    (folder / "job-1" / "0.png").write_bytes(b"png")
    run = run_entrypoint(folder)
    assert run.returncode == 0, run.stderr
    # uid, gid, and no group but its own: root and root's groups are gone.
    assert run.stdout.split() == [str(NOBODY), str(NOBODY), str(NOBODY)], run.stdout
    for path in (folder, folder / "job-1", folder / "job-1" / "0.png"):
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, NOBODY), path
    assert f"belonged to 0:0: gave 3 entries to {NOBODY}:{NOBODY}" in run.stderr


@needs_root
def test_a_folder_the_user_can_already_write_is_left_alone(shared_dir):
    folder = shared_dir / "library"
    folder.mkdir()
    folder.chmod(0o777)
    (folder / "theirs.png").write_bytes(b"png")  # root's file in a world-writable folder
    run = run_entrypoint(folder)
    assert run.returncode == 0, run.stderr
    assert folder.stat().st_uid == 0 and (folder / "theirs.png").stat().st_uid == 0, "changed what needed no change"
    assert run.stderr == ""


@needs_root
def test_the_right_owner_without_write_permission_gets_only_the_mode_fixed(shared_dir):
    folder = shared_dir / "library"
    folder.mkdir()
    (folder / "inner").mkdir()
    os.chown(folder, NOBODY, NOBODY)
    folder.chmod(0o555)
    run = run_entrypoint(folder)
    assert run.returncode == 0, run.stderr
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "inner").stat().st_uid == 0, "recursive chown where the folder's owner was right"


@needs_root
def test_a_missing_folder_is_created_for_the_app_user(shared_dir):
    folder = shared_dir / "new" / "library"
    run = run_entrypoint(folder)
    assert run.returncode == 0, run.stderr
    assert folder.stat().st_uid == NOBODY


@needs_root
def test_not_started_as_root_it_changes_nothing_and_the_service_explains(shared_dir):
    folder = read_only_folder(shared_dir, "library")
    run = run_entrypoint(folder, as_user=NOBODY)
    assert run.returncode == 1
    assert folder.stat().st_uid == 0
    assert f"cannot write to LIBRARY_DIR={folder} as uid {NOBODY}: Permission denied" in run.stderr


def test_the_entrypoint_refuses_root_as_the_app_user(shared_dir):
    run = run_entrypoint(shared_dir, uid=0)
    assert run.returncode != 0 and "APP_UID must not be 0" in run.stderr


# ---------------------------------------------------------------------------------------------
# DALLE_DEVICE: a backend meant for a GPU that finds none fails loudly
# ---------------------------------------------------------------------------------------------
def wait_for_health_status(backend: ServiceProcess, status: str, timeout: float) -> dict:
    seen: list[dict] = []

    def reached() -> bool:
        try:
            body = requests.get(backend.url + "/health", timeout=2).json()
        except (requests.RequestException, ValueError):
            return False
        seen.append(body)
        return body.get("status") == status
    backend.wait_until(reached, timeout, f'/health status "{status}" (last: {seen[-1:]})', interval=0.1)
    return seen[-1]


NO_GPU = ("DALLE_DEVICE=gpu but JAX found no GPU (it sees 1 cpu device; JAX_PLATFORMS=cpu). Check that "
          "the container gets a GPU (`docker compose exec backend nvidia-smi`, the NVIDIA Container "
          "Toolkit, the driver version), or set DALLE_DEVICE=cpu to run on the CPU on purpose.")


def test_a_gpu_backend_without_a_gpu_reports_an_error_within_seconds(tmp_path, model_cache_dir):
    backend = backend_process(tmp_path, model_cache_dir, model="demo",
                              extra_env={"DALLE_DEVICE": "gpu", "JAX_PLATFORMS": "cpu"}).start()
    try:
        body = wait_for_health_status(backend, "error", timeout=30)
        assert body["error"] == NO_GPU
        assert check(backend.url + "/health") == (1, f"error: {NO_GPU}")
        assert f"loading model demo failed: {NO_GPU}" in backend.log_tail()
    finally:
        backend.stop()


def test_the_error_carries_what_jax_said_when_it_cannot_start_the_cuda_backend(tmp_path, model_cache_dir):
    backend = backend_process(tmp_path, model_cache_dir, model="demo",
                              extra_env={"DALLE_DEVICE": "gpu", "JAX_PLATFORMS": "cuda"}).start()
    try:
        error = wait_for_health_status(backend, "error", timeout=30)["error"]
        # Here no GPU and no plugin: JAX starts nothing. (On a machine with a GPU whose plugin
        # fails, JAX's own "Unable to initialize backend 'cuda': ..." takes this place.)
        assert error.startswith("DALLE_DEVICE=gpu but JAX found no GPU (it sees no devices; JAX_PLATFORMS=cuda). "), error
        assert error.endswith("or set DALLE_DEVICE=cpu to run on the CPU on purpose."), error
    finally:
        backend.stop()


# What JAX's CUDA 12 plugin does in a container that the NVIDIA Container Toolkit gave no GPU:
# its initialize() raises, and JAX logs that with the exception (seen on a real first run).
FAILING_CUDA_PLUGIN = '''
def initialize():
    raise RuntimeError("Unable to load CUDA. Is it installed? cuInit(0) failed: Unknown CUDA error 303")
'''


def test_the_error_carries_the_exception_of_a_cuda_plugin_that_fails_to_start(tmp_path, model_cache_dir):
    plugin = tmp_path / "plugins" / "jax_plugins" / "xla_cuda12"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(FAILING_CUDA_PLUGIN)
    env = {"DALLE_DEVICE": "gpu", "JAX_PLATFORMS": "",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), str(REPO_ROOT)])}
    backend = backend_process(tmp_path, model_cache_dir, model="demo", extra_env=env).start()
    try:
        error = wait_for_health_status(backend, "error", timeout=60)["error"]
        assert ("Jax plugin configuration error: Exception when calling jax_plugins.xla_cuda12.initialize(): "
                "Unable to load CUDA. Is it installed? cuInit(0) failed: Unknown CUDA error 303. ") in error, error
    finally:
        backend.stop()


def test_what_jax_logs_about_its_cuda_backend_goes_into_the_message():
    import logging

    from backend.device import _Capture, no_gpu_message

    capture = _Capture()
    logger = logging.getLogger("test.jax_bridge")
    logger.setLevel(logging.INFO)  # as check_device sets JAX's: the cuda reason is logged at INFO
    logger.addHandler(capture)
    logger.warning("An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not installed. "
                   "Falling back to cpu.")
    logger.info("Unable to initialize backend 'cuda': FAILED_PRECONDITION: No visible GPU devices.")
    logger.info("Unable to initialize backend 'tpu': not a TPU machine")  # not ours: left out
    logger.removeHandler(capture)

    class Cpu:
        platform = "cpu"
    message = no_gpu_message([Cpu()], capture.lines, None, "")
    assert message == (
        "DALLE_DEVICE=gpu but JAX found no GPU (it sees 1 cpu device). An NVIDIA GPU may be present on this "
        "machine, but a CUDA-enabled jaxlib is not installed. Falling back to cpu. Unable to initialize "
        "backend 'cuda': FAILED_PRECONDITION: No visible GPU devices. Check that the container gets a GPU "
        "(`docker compose exec backend nvidia-smi`, the NVIDIA Container Toolkit, the driver version), or "
        "set DALLE_DEVICE=cpu to run on the CPU on purpose.")


def test_a_cpu_backend_runs_on_the_cpu_and_the_check_calls_it_healthy(tmp_path, model_cache_dir):
    # JAX_PLATFORMS=cuda alone would fail here (no CUDA plugin): DALLE_DEVICE=cpu must win.
    env = {"DALLE_DEVICE": "cpu", "BACKEND_WARMUP_BATCH_SIZES": "2", "JAX_PLATFORMS": "cuda"}
    backend = backend_process(tmp_path, model_cache_dir, model="demo", extra_env=env).start()
    try:
        answers = []
        backend.wait_until(lambda: answers.append(check(backend.url + "/health")) or answers[-1][0] == 0, 60,
                           "the health check to pass")
        assert answers[-1][1].startswith(("loading: ", "ready: ")), answers
        body = wait_for_health_status(backend, "ready", timeout=240)
        assert [device.lower().startswith("tfrt_cpu") or "cpu" in device.lower() for device in body["devices"]] == [True]
        code, line = check(backend.url + "/health")
        assert code == 0 and line.startswith("ready: demo on "), line
        # The container runs the module itself, with the port from its environment.
        run = subprocess.run([sys.executable, "-m", "backend.healthcheck"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=30, env={**os.environ, "BACKEND_PORT": backend.url.rsplit(":", 1)[1]})
        assert run.returncode == 0 and run.stdout == line + "\n"
    finally:
        backend.stop()


# ---------------------------------------------------------------------------------------------
# The health check's one line while loading, and with no backend
# ---------------------------------------------------------------------------------------------
class FakeHealth(BaseHTTPRequestHandler):
    body: dict = {}
    status = 503

    def do_GET(self):  # noqa: N802 (http.server's name)
        data = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_check_is_healthy_while_downloading_and_says_how_far(fake_backend):
    FakeHealth.body = loading_report("mini", {"stage": Stage.DOWNLOADING, "files": [
        {"name": "dalle-mini/dalle-mini/config.json", "bytes_done": 1200, "bytes_total": 1200},
        {"name": "dalle-mini/dalle-mini/flax_model.msgpack", "bytes_done": 512_000_000, "bytes_total": 1_750_000_000},
        {"name": "dalle-mini/vqgan_imagenet_f16_16384/flax_model.msgpack", "bytes_done": 0, "bytes_total": 304_000_000}]})
    url = f"http://127.0.0.1:{fake_backend.server_port}/health"
    assert check(url) == (0, "loading: downloading dalle-mini/dalle-mini/flax_model.msgpack "
                             "512 MB / 1.75 GB (file 2 of 3) [mini]")


@pytest.mark.parametrize("body, line", [
    ({"status": BackendStatus.LOADING, "model": "mini", "error": None}, "loading: starting [mini]"),
    ({"status": BackendStatus.LOADING, "stage": Stage.COMPILING, "files": []}, "loading: compiling"),
    ({"status": BackendStatus.LOADING, "stage": Stage.DOWNLOADING, "files": [{"name": "x.msgpack"}]},
     "loading: downloading x.msgpack"),
])
def test_the_loading_line_copes_with_missing_fields(body, line):
    assert describe_loading(body) == line


def test_no_answer_is_unhealthy():
    code, line = check(f"http://127.0.0.1:{free_port()}/health")
    assert code == 1 and line.startswith("no answer from http://127.0.0.1:") and "refused" in line.lower()


# ---------------------------------------------------------------------------------------------
# docs/docker.md quotes the messages exactly as the code prints them
# ---------------------------------------------------------------------------------------------
def test_troubleshooting_quotes_the_messages_the_code_prints():
    from backend.device import no_gpu_message

    docs = " ".join((REPO_ROOT / "docs" / "docker.md").read_text(encoding="utf-8").split())

    class Cpu:
        platform = "cpu"
    host = {"MODEL_CACHE_HOST_PATH": "/mnt/bigdisk/dalle/cache"}
    messages = [
        no_gpu_message([Cpu()], [], None, ""),
        not_writable_message(Path("/cache"), "MODEL_CACHE_DIR", "Permission denied", host, uid=10001, gid=10001),
        not_writable_message(Path("/cache"), "MODEL_CACHE_DIR", "Permission denied",
                             {"MODEL_CACHE_HOST_PATH": "model-cache"}, uid=10001, gid=10001),
        not_writable_message(Path("/library"), "LIBRARY_DIR", "Read-only file system",
                             {"LIBRARY_HOST_PATH": "/mnt/big/dalle/library"}, uid=10001, gid=10001, read_only=True),
        "scheduler: cannot write to LIBRARY_DIR=/library (host folder",
        "container-entrypoint: could not make /cache writable for 10001:10001",
        "container-entrypoint: /library belonged to 0:0: gave 3 entries to 10001:10001",
        "loading: downloading dalle-mini/dalle-mini/flax_model.msgpack 512 MB / 1.75 GB (file 2 of 3) [mini]",
    ]
    for message in messages:
        assert " ".join(message.split()) in docs, f"docs/docker.md does not quote: {message}"
