"""The model engine: DalleBart + VQGAN in JAX, loaded from the official checkpoint files.

    engine = load_engine("tiny", cache_dir=Path("cache"))
    engine.warm_up((2, 4, 6, 8))
    result = engine.generate(GenerationRequest("a red cube", num_images=2, seed=7))

Importing this package is cheap: JAX work starts in `load_engine`.
"""
from .checkpoint import CheckpointError
from .generator import (
    Engine,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    load_engine,
)
from .models import MODEL_CHOICES, ModelUnavailableError

__all__ = [
    "MODEL_CHOICES",
    "CheckpointError",
    "Engine",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "ModelUnavailableError",
    "load_engine",
]
