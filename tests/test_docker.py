"""The Docker setup run for real: a private Docker engine builds the three images from the
Dockerfile unchanged, Compose brings up the CPU variant with the demo model, and a user's first
run is played through: a prompt, `down`/`up`, a backend crash mid-job, a host-folder library.

Runs under CI=true (as root: it installs Debian's docker.io when missing and starts its own
dockerd, see tests/docker_engine.py); elsewhere it skips. The times of each phase are printed
(`pytest -s`, or the captured output of a failure).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from docker_engine import PrivateDockerd, compose_binary, install_engine, load_or_build_standins
from playground.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
FILES = ("docker-compose.yml", "docker-compose.cpu.yml")
PROJECT = "dalle-playground"
# docker-compose.yml's pins: the stand-ins are tagged as these.
PYTHON_IMAGE = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
REDIS_IMAGE = re.search(r"^\s+image: (redis:\S+)$", (ROOT / "docker-compose.yml").read_text(), re.M).group(1)
README = ROOT / "README.md"
DOCKER_DOCS = ROOT / "docs" / "docker.md"
# The job killed mid-way: the most images, so it runs longest.
CRASH_IMAGES = 8
HOW_TO_RUN = "needs root and CI=true: CI=true .venv/bin/python -m pytest tests/test_docker.py -s"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def pytest_skip_unless_ci():
    if os.environ.get("CI") != "true":
        pytest.skip(f"the real Docker run {HOW_TO_RUN}")
    if os.geteuid() != 0:
        pytest.fail(f"the real Docker run {HOW_TO_RUN}")


class Timings(dict):
    def phase(self, name: str):
        timings = self

        class Phase:
            def __enter__(self):
                self.start = time.monotonic()

            def __exit__(self, *exc):
                timings[name] = round(time.monotonic() - self.start, 1)
                print(f"docker test: {name} took {timings[name]} s", flush=True)

        return Phase()


class Stack:
    """`docker compose` with the CPU files against the private engine, and the frontend's API."""

    def __init__(self, engine: PrivateDockerd, port: int, override: Path):
        self.engine, self.port = engine, port
        self.env = {key: value for key, value in engine.env.items() if not key.startswith("COMPOSE_")}
        self.env.update(DALLE_MODEL="demo", FRONTEND_PORT=str(port))
        self.command = [*compose_binary(), "--project-directory", str(ROOT), "--env-file", os.devnull]
        # The CPU files, and the test's one setting beyond their variables (`override`).
        self.files = (*(ROOT / name for name in FILES), override)

    def compose(self, *args: str, timeout: float = 600, check: bool = True, files: tuple[Path, ...] = (),
                **env: str) -> subprocess.CompletedProcess:
        """`docker compose` with the stack's files (or `files`) and `env` added to its environment."""
        command = [*self.command, *(option for path in files or self.files for option in ("-f", str(path)))]
        result = subprocess.run([*command, *args], env={**self.env, **env}, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{self.logs()}")
        return result

    def logs(self) -> str:
        result = self.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        return f"--- compose logs ---\n{result.stdout[-8000:]}{result.stderr[-2000:]}"

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | list | None]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")
        except OSError:
            return 0, None

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def wait_ready(self, timeout: float = 300) -> None:
        self.wait(lambda: self.api("GET", "/health")[0] == 200, timeout, "/health to say ready")

    def submit(self, text: str, num_images: int = 2, **extra) -> str:
        status, body = self.api("POST", "/prompt", {"text": text, "num_images": num_images, "seed": 7, **extra})
        assert status == 200, body
        return body["queue_id"]

    def job(self, job_id: str) -> dict:
        status, body = self.api("GET", f"/jobs/{job_id}")
        assert status == 200, body
        return body

    def wait_done(self, job_id: str, timeout: float = 300) -> dict:
        def finished():
            status, job = self.api("GET", f"/jobs/{job_id}")
            assert status != 404, f"job {job_id} is gone\n{self.logs()}"
            return job if status == 200 and job["status"] in ("done", "failed", "cancelled") else None
        job = self.wait(finished, timeout, f"job {job_id} to finish")
        assert job["status"] == "done", job
        return job

    def fetch(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            return response.read()

    def assert_pictures_in(self, folder: Path, job_id: str, count: int) -> None:
        """The job's PNGs are in `folder` (the library as the host sees it), and they are what
        the frontend serves."""
        pngs = sorted((folder / job_id).glob("*.png"))
        assert len(pngs) == count, f"{folder / job_id}: {[p.name for p in pngs]}"
        for png in pngs:
            with Image.open(png) as image:
                assert image.format == "PNG" and image.width == image.height > 0, png
            assert self.fetch(f"/library/{job_id}/{png.name}") == png.read_bytes(), png


    def volume_folder(self, name: str) -> Path:
        return Path(self.engine.docker("volume", "inspect", "--format", "{{.Mountpoint}}",
                                       f"{PROJECT}_{name}").stdout.strip())

    def container_state(self, service: str) -> dict:
        """`docker inspect`'s State of a service's container, with its RestartCount."""
        container = self.compose("ps", "--all", "--quiet", service).stdout.strip()
        inspected = json.loads(self.engine.docker("inspect", container).stdout)[0]
        return {**inspected["State"], "RestartCount": inspected["RestartCount"]}

    def backend_main_pid(self) -> int:
        """The backend's main process as the host sees it: the child of the container's init."""
        init = self.container_state("backend")["Pid"]
        (child,) = Path(f"/proc/{init}/task/{init}/children").read_text().split()
        return int(child)


@pytest.fixture(scope="module")
def engine():
    pytest_skip_unless_ci()
    install_engine()
    root = Path(tempfile.mkdtemp(prefix="dpg-docker-", dir="/tmp"))
    dockerd = PrivateDockerd(root)
    try:
        yield dockerd.start()
    finally:
        dockerd.stop()
        left = dockerd.leftovers()
        assert not left, f"the private dockerd left behind: {left}"


def test_the_cpu_stack_runs_keeps_its_data_and_recovers_from_a_crash(engine, tmp_path):
    timings = Timings()
    # The backend compiles only the two batch sizes the test uses (of 2, 4, 6, 8): each start is
    # ready sooner.
    override = tmp_path / "docker-compose.test.yml"
    override.write_text(f'services: {{backend: {{environment: {{BACKEND_WARMUP_BATCH_SIZES: "2,{CRASH_IMAGES}"}}}}}}\n')
    stack = Stack(engine, free_port(), override)
    try:
        with timings.phase("stand-in base images"):
            print(f"docker test: stand-ins {load_or_build_standins(engine, PYTHON_IMAGE, REDIS_IMAGE, tmp_path)}")
        with timings.phase("build"):
            stack.compose("build", timeout=1200)
        sizes = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}").stdout
        print(f"docker test: images\n{sizes}", flush=True)
        # A machine without the NVIDIA Container Toolkit (as this one): the default GPU file
        # cannot start its backend, and the README quotes what Docker says.
        engine.docker("tag", "dalle-playground/backend:cpu", "dalle-playground/backend:local")
        gpu = stack.compose("up", "-d", "--no-build", check=False, files=(ROOT / "docker-compose.yml",))
        assert gpu.returncode == 1, gpu.stderr
        (refusal,) = [line.strip() for line in gpu.stderr.splitlines() if "could not select device driver" in line]
        assert refusal == 'Error response from daemon: could not select device driver "nvidia" with capabilities: [[gpu]]'
        assert refusal in " ".join(README.read_text(encoding="utf-8").split())
        stack.compose("down", files=(ROOT / "docker-compose.yml",))

        with timings.phase("up"):
            stack.compose("up", "-d")
        with timings.phase("ready"):
            stack.wait_ready()

        # A prompt through the frontend; its PNGs in the library volume.
        with timings.phase("first prompt"):
            first = stack.submit("the red squirrel dances in the moonlight")
            stack.wait_done(first)
        stack.assert_pictures_in(stack.volume_folder("library"), first, 2)

        # `down`/`up` keeps the library and a job still queued (no backend to take it, once the
        # scheduler has seen it gone).
        stack.compose("stop", "backend")
        stack.wait(lambda: stack.api("GET", "/health")[0] == 503, 60, "/health to miss the backend")
        queued = stack.submit("a blue bird", num_images=2)
        assert stack.job(queued)["status"] == "queued"
        with timings.phase("down and up"):
            stack.compose("down")
            stack.compose("up", "-d")
            stack.wait_ready()
        stack.wait_done(queued)
        status, library = stack.api("GET", "/getlibrary")
        assert status == 200 and {first, queued} <= {entry["queue_id"] for entry in library}

        # kill -9 of the backend's main process mid-job: Docker restarts the container and the
        # job finishes on its second attempt.
        with timings.phase("crash and recovery"):
            # A job can end between being seen running and the kill; then it took one attempt
            # and another job is tried.
            for _ in range(3):
                crashed = stack.submit("a cat made of clouds", num_images=CRASH_IMAGES)
                running = stack.wait(lambda: (lambda job: job["status"] != "queued" and job)(stack.job(crashed)),
                                     120, "the job to start", interval=0.05)
                if running["status"] != "running":
                    continue
                os.kill(stack.backend_main_pid(), 9)
                if stack.wait_done(crashed, timeout=600)["attempts"] == 2:
                    break
            else:
                raise AssertionError("no job was killed mid-run and finished on its second attempt in 3 tries")

        # `docker compose kill` is a stop on purpose, not a crash: Docker does not restart it
        # (docs/docker.md says so). Its restart manager acts within a second; three are given.
        restarts = stack.container_state("backend")["RestartCount"]
        stack.compose("kill", "backend")
        killed = stack.wait(lambda: (lambda s: s["Status"] == "exited" and s)(stack.container_state("backend")),
                            60, "the killed backend to exit")
        assert killed["ExitCode"] == 137, killed
        time.sleep(3)
        after = stack.container_state("backend")
        assert after["Status"] == "exited" and after["RestartCount"] == restarts, after

        # A host folder owned by another user as the library: taken over, and written.
        host_library = tmp_path / "host-library"
        host_library.mkdir()
        os.chown(host_library, 1000, 1000)
        with timings.phase("host-folder library"):
            stack.compose("up", "-d", LIBRARY_VOLUME=str(host_library))
            stack.wait_ready()
            in_folder = stack.submit("a lighthouse at dawn")
            stack.wait_done(in_folder)
        stack.assert_pictures_in(host_library, in_folder, 2)
        assert (host_library.stat().st_uid, host_library.stat().st_gid) == (10001, 10001)
    finally:
        stack.compose("down", "--volumes", "--timeout", "5", check=False, timeout=300)
        print(f"docker test: timings {json.dumps(timings)}", flush=True)


def test_debians_docker_has_no_compose_and_the_docs_say_how_to_get_it(engine):
    """Debian's docker.io client (installed with the engine) has no Compose v2 plugin."""
    debian_client = Path("/usr/bin/docker")
    owner = subprocess.run(["dpkg", "-S", str(debian_client)], capture_output=True, text=True)
    if owner.returncode != 0 or not owner.stdout.startswith("docker.io:"):
        pytest.skip("/usr/bin/docker is not Debian's docker.io client")
    result = subprocess.run([str(debian_client), "compose", "version"], capture_output=True, text=True,
                            env=engine.env, timeout=60)
    assert result.returncode != 0
    said = result.stderr.strip().splitlines()[0]
    assert said == "docker: 'compose' is not a docker command."
    for doc in (README, DOCKER_DOCS):
        assert said in " ".join(doc.read_text(encoding="utf-8").split()), doc.name
    assert "docker-compose-plugin" in DOCKER_DOCS.read_text(encoding="utf-8")
