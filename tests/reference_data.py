"""What the fidelity tests share: the vectors a reference implementation wrote (make_vectors.py,
make_clip_vectors.py) and the closeness they are held to."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
# float32 on both sides; what is left is summation order (XLA versions, fused vs separate ops).
RELATIVE = 1e-4


def assert_close(actual, expected, relative=RELATIVE):
    """Within `relative` of the expected values' largest magnitude, element by element."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=relative * np.abs(expected).max())


def load_vectors(reference: Path) -> dict:
    with np.load(reference / "vectors.npz") as data:
        return dict(data)


def load_inputs(reference: Path) -> dict:
    return json.loads((reference / "inputs.json").read_text(encoding="utf-8"))


@contextlib.contextmanager
def full_float32_matmuls():
    # The references ran on a CPU; on a GPU, float32 matmuls may otherwise run in TF32.
    with jax.default_matmul_precision("float32"):
        yield


def reference_fixtures(reference: Path):
    """A fidelity test module's fixtures: full float32 matmuls for every test (autouse), and
    the `vectors` and `inputs` the reference wrote into `reference`, read once."""

    @pytest.fixture(autouse=True)
    def float32_matmuls():
        with full_float32_matmuls():
            yield

    @pytest.fixture(scope="module")
    def vectors():
        return load_vectors(reference)

    @pytest.fixture(scope="module")
    def inputs():
        return load_inputs(reference)

    return float32_matmuls, vectors, inputs
