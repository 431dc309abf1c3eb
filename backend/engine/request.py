"""What one generation is asked for, and how it can end early; no JAX here, so the backend's
web service can use it without loading JAX until the model loads."""
from __future__ import annotations

import dataclasses

import numpy as np

from playground import request_fields as fields
from playground.request_fields import Bounds

DEFAULT_SAMPLING = {field.name: field.model_default for field in fields.SAMPLING}


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

    def validate(self, max_images: int = fields.CANDIDATES.bounds.maximum) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.text, str):
            raise ValueError("text must be a string")  # noqa: TRY004 - every bad field is a ValueError
        # The engine draws every candidate, and clips a top-k to its codebook.
        bounds_here = {fields.NUM_IMAGES.name: Bounds(1, max_images), fields.TOP_K.name: Bounds(1)}
        for field in fields.taken_by(fields.ENGINE):
            if field.kind not in (int, float):
                continue
            value = getattr(self, field.name)
            if value is None and field not in (fields.NUM_IMAGES, fields.SEED):
                continue
            if field.kind is int and not _is_int(value):
                raise ValueError(f"{field.name} must be an integer")
            if field.kind is float and not (_is_number(value) and np.isfinite(value)):
                raise ValueError(f"{field.name} must be a finite number")
            field.check(value, bounds_here.get(field.name))
        if (self.init_codes is None) != (self.keep_rows is None):
            raise ValueError("init_codes and keep_rows come together")
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
