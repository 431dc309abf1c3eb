"""The backend's configuration, read from environment variables."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from backend.device import DEVICE_CHOICES
from backend.engine import upscaler_choice
from playground.protocol.health import MAX_SLOTS
from playground.settings import get_float, get_int, get_list, get_str


@dataclass(frozen=True)
class Config:
    model: str = "demo"
    cache_dir: Path = Path("cache")
    host: str = "127.0.0.1"
    port: int = 8080
    # Jobs run at once (BACKEND_SLOTS), decoded together; the scheduler feeds each slot.
    slots: int = 1
    # Batch sizes compiled before the backend reports ready; others compile on first use.
    warm_up_batch_sizes: tuple[int, ...] = (2, 4, 6, 8)
    # How often a running /generate stream reports progress (the scheduler needs ≤ 2 s).
    progress_interval_secs: float = 0.5
    # The Hugging Face hub (or a mirror) published models come from; None: huggingface_hub's
    # default. HF_ENDPOINT is huggingface_hub's own variable, read here so it is explicit.
    hub_endpoint: str | None = None
    # Announcing itself in Redis (playground/backend_registry.py), so schedulers find it: both
    # set, or no announcing. advertise_url is how a scheduler reaches this backend.
    redis_url: str | None = None
    redis_prefix: str = "dalle"
    advertise_url: str | None = None
    # auto: whatever JAX finds; gpu: no GPU is an error (Docker); cpu: JAX never touches a GPU.
    device: str = "auto"
    # Live previews: None lets the engine space them by their cost (at most 10% of the
    # generation time), 0 turns them off, N sends one every N image tokens.
    preview_every_tokens: int | None = None
    # Tests only: a pause after each chunk of tokens, so a small model runs long enough to
    # show several previews.
    test_chunk_delay_secs: float = 0.0
    # Tests only: a wait after each tile of an upscale (a cancel cuts it short), so one runs
    # long enough to be cancelled.
    test_tile_delay_secs: float = 0.0
    # The host side of the cache folder (MODEL_CACHE_VOLUME, passed in by compose), for messages.
    cache_host_path: str = ""
    # CLIP, which ranks a job's candidates: "demo", a hub repository, a folder, "none"; ""
    # picks by model (backend.engine.models.default_clip: the demo's CLIP with the demo model).
    clip_model: str = ""
    # The upscaler of upscale jobs (UPSCALE_MODEL): "demo" (the shipped one), a published name
    # or a hub file "<org>/<repo>/<file>.pth" (downloaded into the cache), a release file's path,
    # or None ("none": this backend upscales nothing). backend.engine.upscaler_choice.
    upscale_model: str | None = "demo"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        sizes = get_list(env, "BACKEND_WARMUP_BATCH_SIZES", ["2", "4", "6", "8"])
        try:
            warm_up = tuple(int(size) for size in sizes)
        except ValueError:
            raise ValueError(f"BACKEND_WARMUP_BATCH_SIZES must be integers, got {sizes!r}") from None
        device = get_str(env, "DALLE_DEVICE", cls.device).lower()
        if device not in DEVICE_CHOICES:
            raise ValueError(f"DALLE_DEVICE must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
        every = get_str(env, "PREVIEW_EVERY_TOKENS", "").strip()
        if every and not (every.isascii() and every.isdigit()):
            raise ValueError(f"PREVIEW_EVERY_TOKENS must be a whole number (0: no previews), got {every!r}")
        slots = get_int(env, "BACKEND_SLOTS", cls.slots)
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"BACKEND_SLOTS must be between 1 and {MAX_SLOTS}, got {slots}")
        return cls(
            model=get_str(env, "DALLE_MODEL", cls.model),
            slots=slots,
            cache_dir=Path(get_str(env, "MODEL_CACHE_DIR", str(cls.cache_dir))),
            host=get_str(env, "BACKEND_HOST", cls.host),
            port=get_int(env, "BACKEND_PORT", cls.port),
            warm_up_batch_sizes=warm_up,
            progress_interval_secs=get_float(env, "BACKEND_PROGRESS_INTERVAL", cls.progress_interval_secs),
            hub_endpoint=get_str(env, "HF_ENDPOINT", "") or None,
            redis_url=get_str(env, "REDIS_URL", "") or None,
            redis_prefix=get_str(env, "REDIS_PREFIX", cls.redis_prefix),
            advertise_url=get_str(env, "BACKEND_ADVERTISE_URL", "").rstrip("/") or None,
            device=device,
            cache_host_path=get_str(env, "MODEL_CACHE_HOST_PATH", ""),
            preview_every_tokens=int(every) if every else None,
            test_chunk_delay_secs=get_float(env, "BACKEND_TEST_CHUNK_DELAY_SECS", 0.0),
            test_tile_delay_secs=get_float(env, "BACKEND_TEST_TILE_DELAY_SECS", 0.0),
            clip_model=get_str(env, "CLIP_MODEL", ""),
            upscale_model=_upscale_model(get_str(env, "UPSCALE_MODEL", "demo")),
        )


def _upscale_model(value: str) -> str | None:
    """UPSCALE_MODEL: "none" (any case) for no upscaler, empty for the demo's; a name that is
    none of the choices is refused at once (backend.engine.upscaler_choice)."""
    value = value.strip()
    if value.lower() == upscaler_choice.NONE:
        return None
    error = upscaler_choice.choice_error(value or upscaler_choice.DEMO)
    if error is not None:
        raise ValueError(f"UPSCALE_MODEL names an {error}")
    return value or upscaler_choice.DEMO
