"""What one generation is asked for, and how it can end early; no JAX here, so the backend's
web service can use it without loading JAX until the model loads."""
from __future__ import annotations

import dataclasses

import numpy as np

from playground.limits import MAX_CANDIDATES, MAX_SEED

DEFAULT_SAMPLING = {"top_k": 50, "top_p": 1.0, "temperature": 1.0, "condition_scale": 10.0}


class GenerationCancelled(Exception):
    """The caller's cancel event was set; no images were produced."""


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    text: str
    num_images: int
    seed: int = 0
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    condition_scale: float | None = None
    # A continuation: these codes' first `keep_rows` rows are kept, the rest sampled.
    init_codes: tuple[int, ...] | None = None
    keep_rows: int | None = None

    def validate(self, max_images: int = MAX_CANDIDATES) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.text, str):
            raise ValueError("text must be a string")  # noqa: TRY004 - every bad field is a ValueError
        if not _is_int(self.num_images) or not 1 <= self.num_images <= max_images:
            raise ValueError(f"num_images must be an integer from 1 to {max_images}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError("top_k must be an integer >= 1")
        checks = (("top_p", lambda v: 0 < v <= 1, "in (0, 1]"), ("temperature", lambda v: v > 0, "> 0"),
                  ("condition_scale", lambda v: v >= 0, ">= 0"))
        for name, ok, rule in checks:
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not np.isfinite(value) or not ok(value)):
                raise ValueError(f"{name} must be a number {rule}")
        if (self.init_codes is None) != (self.keep_rows is None):
            raise ValueError("init_codes and keep_rows come together")
        if self.keep_rows is not None and (not _is_int(self.keep_rows) or self.keep_rows < 1):
            raise ValueError("keep_rows must be an integer >= 1")
        if self.init_codes is not None and not all(_is_int(code) and code >= 0 for code in self.init_codes):
            raise ValueError("init_codes must be integers >= 0")

    def sampling(self) -> dict[str, float | int]:
        """The four sampling values, defaults filled in."""
        given = {name: getattr(self, name) for name in DEFAULT_SAMPLING}
        return {name: DEFAULT_SAMPLING[name] if value is None else value for name, value in given.items()}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
