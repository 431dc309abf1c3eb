"""A machine without a GPU: the CPU override on its own playground and on a backend joining
another machine's, merged by the real Compose binary (`docker compose config`)."""
from __future__ import annotations

import re

import pytest
from test_compose import CPU, MAIN, REMOTE_BACKEND, REMOTE_ENV, ROOT, compose_config, visible_gpus

# The one command docs/docker.md and the README give a GPU-less machine that joins.
JOIN_WITHOUT_GPU = f"docker compose -f {REMOTE_BACKEND} -f {CPU} up -d --build"


def assert_runs_on_the_cpu(backend: dict) -> None:
    assert visible_gpus(backend, 4, docker_desktop=False) is None, "it asks Docker for a GPU"
    assert backend["build"]["args"]["JAX_CUDA"] == "cpu" and backend["image"].endswith(":cpu")
    environment = backend["environment"]
    assert environment["DALLE_DEVICE"] == "cpu"
    # No GPU setting of the main file is left over: CUDA would see no GPU at all.
    assert environment["CUDA_VISIBLE_DEVICES"] == "" and environment["CUDA_DEVICE_ORDER"] == ""


@pytest.mark.parametrize("files", [(MAIN, CPU), (REMOTE_BACKEND, CPU)], ids=["own-playground", "joining"])
def test_the_cpu_override_clears_every_gpu_setting(files):
    services = compose_config(*files, **REMOTE_ENV)["services"]
    assert_runs_on_the_cpu(services["backend"])


def test_a_machine_without_a_gpu_joins_as_a_gpu_machine_does_otherwise():
    joining = compose_config(REMOTE_BACKEND, CPU, **REMOTE_ENV)["services"]
    assert set(joining) == {"backend"}
    backend, gpu_machine = joining["backend"], compose_config(REMOTE_BACKEND, **REMOTE_ENV)["services"]["backend"]
    assert backend["environment"]["REDIS_URL"] == REMOTE_ENV["MAIN_REDIS_URL"]
    assert backend["environment"]["BACKEND_ADVERTISE_URL"] == REMOTE_ENV["BACKEND_ADVERTISE_URL"]
    for same in ("ports", "healthcheck", "restart", "volumes", "stop_grace_period"):
        assert backend[same] == gpu_machine[same], same


def test_the_docs_give_the_command_that_is_checked_here():
    for doc in ("README.md", "docs/docker.md"):
        text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
        assert JOIN_WITHOUT_GPU in text, f"{doc} does not give: {JOIN_WITHOUT_GPU}"
    assert re.search(rf"-f {REMOTE_BACKEND} -f {CPU}\b", (ROOT / CPU).read_text(encoding="utf-8"))
