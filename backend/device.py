"""Where the model runs: DALLE_DEVICE = auto | gpu | cpu.

JAX falls back to the CPU when its CUDA plugin cannot start (no GPU passed to the container, a
driver too old, a missing library), and says so only in a log line. A backend meant for a GPU
would then load Mega into host RAM and draw a picture in minutes instead of a second. With
`gpu` (what docker-compose.yml sets) that fallback is an error instead, reported on /health.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import MutableMapping

from playground.writable import StartupError

DEVICE_CHOICES = ("auto", "gpu", "cpu")

# Where JAX reports why the CUDA backend did not start (logger of jax._src.xla_bridge). A CUDA
# plugin that fails in initialize() (no device node, `cuInit(0) failed: Unknown CUDA error 303`
# where the toolkit passed no GPU) is logged as a plugin configuration error with its exception.
_JAX_BRIDGE_LOGGER = "jax._src.xla_bridge"
_JAX_CUDA_MESSAGES = ("Unable to initialize backend 'cuda'", "CUDA backend failed to initialize",
                      "An NVIDIA GPU may be present", "Jax plugin configuration error")


class NoGpuError(StartupError):
    pass


def apply_device_setting(device: str, environ: MutableMapping[str, str]) -> None:
    """Before JAX is imported: `cpu` keeps JAX off the GPU (and skips the CUDA plugin)."""
    if device == "cpu":
        environ["JAX_PLATFORMS"] = "cpu"


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(marker in message for marker in _JAX_CUDA_MESSAGES):
            if record.exc_info and record.exc_info[1] is not None:  # the reason is the exception
                message = f"{message}: {' '.join(str(record.exc_info[1]).split())}"
            self.lines.append(message)


def jax_devices_with_reasons() -> tuple[list, list[str], str | None]:
    """JAX's devices, what JAX logged about the CUDA backend while starting, and the error if
    starting failed outright (e.g. JAX_PLATFORMS=cuda with no usable GPU)."""
    logger = logging.getLogger(_JAX_BRIDGE_LOGGER)
    capture, level = _Capture(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)  # "Unable to initialize backend" is logged at INFO
    try:
        import jax

        try:
            return list(jax.devices()), capture.lines, None
        except Exception as error:  # RuntimeError from a plugin; AssertionError when none started
            return [], capture.lines, str(error) or f"JAX could not start any backend ({type(error).__name__})"
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)


def no_gpu_message(devices: list, jax_lines: list[str], error: str | None, jax_platforms: str) -> str:
    counts = Counter(device.platform for device in devices)
    seen = ", ".join(f"{n} {platform} device{'s' if n > 1 else ''}" for platform, n in sorted(counts.items()))
    seen = seen or "no devices"
    parts = [f"DALLE_DEVICE=gpu but JAX found no GPU (it sees {seen}"
             + (f"; JAX_PLATFORMS={jax_platforms}" if jax_platforms else "") + ")"]
    parts += [line.rstrip(".") for line in dict.fromkeys(jax_lines)]
    if error:
        parts.append(error.rstrip("."))
    parts.append("Check that the container gets a GPU (`docker compose exec backend nvidia-smi`, "
                 "the NVIDIA Container Toolkit, the driver version), or set DALLE_DEVICE=cpu to "
                 "run on the CPU on purpose")
    return ". ".join(parts) + "."


def check_device(device: str, jax_platforms: str = "") -> list:
    """The devices the engine will use; with `gpu`, NoGpuError unless JAX has a GPU."""
    devices, jax_lines, error = jax_devices_with_reasons()
    if device == "gpu" and not any(d.platform == "gpu" for d in devices):
        raise NoGpuError(no_gpu_message(devices, jax_lines, error, jax_platforms))
    if error:
        raise RuntimeError(error)
    return devices
