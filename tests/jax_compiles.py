"""Which XLA compilations a block of test code caused, from JAX's monitoring events."""
from __future__ import annotations

import contextlib

import jax

_recording: list[list[str]] = []


def _listen(event, duration, **_):
    if event.startswith("/jax/core/compile"):
        for compiles in _recording:
            compiles.append(event)


# JAX has no public way to remove a listener, so one stays registered for the whole session.
jax.monitoring.register_event_duration_secs_listener(_listen)


@contextlib.contextmanager
def recorded_compiles():
    """Yields a list that gathers the compile events raised inside the `with` block."""
    compiles: list[str] = []
    _recording.append(compiles)
    try:
        yield compiles
    finally:
        _recording.remove(compiles)
