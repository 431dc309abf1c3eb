"""The model engine: DalleBart + VQGAN in JAX, loaded from the official checkpoint files.

    engine = load_engine("tiny", cache_dir=Path("cache"))
    engine.warm_up((2, 4, 6, 8))
    result = engine.generate(GenerationRequest("a red cube", num_images=2, seed=7))

Importing this package is cheap: the names that need JAX are imported on first use, so the
backend's web service starts (and answers /health) before JAX loads.
"""
import importlib

from .checkpoint import CheckpointError
from .request import GenerationCancelled, GenerationRequest

_NEEDS_JAX = {"Engine": "generator", "GenerationResult": "generator", "load_engine": "generator",
              "MODEL_CHOICES": "models", "ModelUnavailableError": "models"}

__all__ = ["CheckpointError", "GenerationCancelled", "GenerationRequest", *_NEEDS_JAX]


def __getattr__(name: str):
    if name in _NEEDS_JAX:
        return getattr(importlib.import_module(f".{_NEEDS_JAX[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
