"""The backend protocol: what a backend and the scheduler say to each other over HTTP, the
twin of `playground.queue` (the contract between the frontend and the scheduler).

    health.py   GET /health: the backend's statuses, its loading stages, the report's fields
                (built by the backend, read by the scheduler's worker)
    events.py   POST /generate: the NDJSON events, each built and read here; POST /cancel
    upscale.py  POST /upscale: its body (built by the scheduler, read by the backend); it
                answers with the events of events.py

docs/architecture.md ("Backend HTTP protocol") describes it; how a backend announces itself
in Redis is `playground.backend_registry`.
"""
from playground.protocol.events import (
    ENDINGS,
    STOPPING,
    Event,
    cancel_answer,
    cancelled_event,
    done_event,
    error_event,
    event_kind,
    parse_event,
    preview_event,
    progress_event,
    started_event,
    stopped_event,
    was_cancelled,
)
from playground.protocol.health import (
    BackendStatus,
    Health,
    Stage,
    error_report,
    loading_report,
    parse_health,
    ready_report,
)

__all__ = [
    "ENDINGS", "STOPPING", "BackendStatus", "Event", "Health", "Stage", "cancel_answer", "cancelled_event",
    "done_event", "error_event", "error_report", "event_kind", "loading_report", "parse_event",
    "parse_health", "preview_event", "progress_event", "ready_report", "started_event", "stopped_event",
    "was_cancelled",
]
