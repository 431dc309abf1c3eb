"""The backend protocol module (`playground.protocol`): what docs/architecture.md says a backend
sends is what the module builds, and the scheduler's reading of /health copes with any answer."""
from __future__ import annotations

import json
import re

import pytest

from playground.protocol import (
    ENDINGS,
    BackendStatus,
    Event,
    Stage,
    error_report,
    loading_report,
    parse_event,
    parse_health,
    ready_report,
    stopped_event,
)
from playground.protocol.health import MAX_LOADING_FILES, MAX_NAME_CHARS, MAX_SLOTS
from testkit.processes import REPO_ROOT


def documented_protocol() -> str:
    text = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return text[text.index("## Backend HTTP protocol"):text.index("## Engine API")]


def test_the_document_names_the_events_statuses_and_stages_of_the_module():
    doc = documented_protocol()
    assert set(re.findall(r'"event":"(\w+)"', doc)) == set(Event)
    # A backend says three of the statuses; unreachable and unknown are the scheduler's words.
    assert set(re.findall(r'"status":"(\w+)"', doc)) == {BackendStatus.LOADING, BackendStatus.READY,
                                                          BackendStatus.ERROR}
    stages = [found.replace('"', "").split("|") for found in re.findall(r'"stage":((?:"\w+"\|?)+)', doc)]
    assert stages == [[BackendStatus.READY], list(Stage), [BackendStatus.ERROR]]
    assert "`playground/protocol/`" in doc, "the document points to the protocol's home"


def test_reports_and_events_say_what_the_document_says():
    assert json.dumps(stopped_event(), separators=(",", ":")) in documented_protocol()
    assert loading_report("mini", {"stage": Stage.DOWNLOADING, "files": []}) == {
        "status": "loading", "model": "mini", "error": None, "stage": "downloading", "files": []}
    assert error_report("mini", "no GPU") == {"status": "error", "model": "mini", "error": "no GPU", "stage": "error"}
    assert set(ready_report("mini")) == {"status", "model", "error", "stage", "devices", "slots", "busy", "job_id",
                                         "load_secs", "image_tokens", "image_codes", "ranks", "clip_model",
                                         "upscale_model", "grid_cells_max"}
    assert ENDINGS == (Event.DONE, Event.CANCELLED, Event.ERROR, Event.STOPPED)


@pytest.mark.parametrize("line, error", [
    (b"not json", "a line that is not JSON: b'not json'"),
    (b"[1, 2]", "a line that is not an event object: b'[1, 2]'"),
])
def test_a_line_that_is_no_event_is_refused_with_what_it_is(line, error):
    with pytest.raises(ValueError) as refused:
        parse_event(line)
    assert str(refused.value) == error


def test_the_scheduler_reads_any_health_answer():
    assert parse_health(ready_report("mini", busy=False, ranks=True)).idle
    assert not parse_health(ready_report("mini", busy=True)).idle
    odd = parse_health(["not", "an", "object"])
    assert (odd.status, odd.error) == (BackendStatus.ERROR, "unexpected /health answer: ['not', 'an', 'object']")
    assert parse_health({}).status == BackendStatus.ERROR and not parse_health({}).idle
    assert parse_health({"status": ["ready"]}).status == BackendStatus.ERROR
    assert parse_health({"status": "ready", "ranks": "yes"}).ranks is None  # only a boolean counts
    files = [{"name": "x" * 1000, "bytes_done": -5, "bytes_total": 0}] * 40 + ["not a file"]
    loading = parse_health({"status": "loading", "stage": 7, "files": files}).loading
    assert loading["stage"] is None and len(loading["files"]) == MAX_LOADING_FILES
    assert loading["files"][0] == {"name": "x" * MAX_NAME_CHARS, "bytes_done": 0, "bytes_total": None}
    assert parse_health(ready_report("mini")).loading is None


def test_a_backends_slots_are_read_within_bounds():
    """What a /health says of its slots starts that many workers: a wrong answer is bounded."""
    for said, read in [(None, 1), (3, 3), (0, 1), (-2, 1), (10**6, MAX_SLOTS), (True, 1), ("4", 1), (2.0, 1)]:
        body = ready_report("mini") | ({"slots": said} if said is not None else {})
        if said is None:
            del body["slots"]
        assert parse_health(body).slots == read, said
