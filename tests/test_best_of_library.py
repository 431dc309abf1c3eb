"""Best of N in the library: CLIP scores stay with their pictures when one is deleted, and
GET /getlibrary?sort=score orders jobs by their best picture's score."""
from __future__ import annotations

import json
import uuid

from frontend.library_view import LibraryView
from playground.library import LibraryStore

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


def entry(created: float, **extra) -> dict:
    return {"queue_id": str(uuid.uuid4()), "text_prompt": f"job {created}", "creation_unixtime": created,
            "process_time_secs": 1.0, "seed": 1, "num_images": 2, **extra}


def test_deleting_a_picture_drops_its_score_and_index(tmp_path):
    store = LibraryStore(tmp_path)
    stored = store.add_job(entry(1.0, clip_scores=[30.5, 28.0, 20.25], candidate_indices=[5, 0, 3]),
                           [PNG, PNG + b"2", PNG + b"3"])
    assert store.delete_image(stored["generated_images"][1])
    (listed,) = store.entries()
    assert listed["clip_scores"] == [30.5, 20.25] and listed["candidate_indices"] == [5, 3]
    assert listed["generated_images"] == [stored["generated_images"][0], stored["generated_images"][2]]
    store.rebuild(force=True)  # from the job's own file: the same
    assert store.entries()[0]["clip_scores"] == [30.5, 20.25]


def test_library_sorted_by_score(tmp_path):
    store = LibraryStore(tmp_path)
    unranked = store.add_job(entry(1.0), [PNG])
    low = store.add_job(entry(2.0, clip_scores=[12.0, 3.0]), [PNG, PNG])
    high = store.add_job(entry(3.0, clip_scores=[25.0]), [PNG])
    view = LibraryView(store)
    newest = [e["queue_id"] for e in json.loads(view.page(0, 10).body)]
    assert newest == [high["queue_id"], low["queue_id"], unranked["queue_id"]]  # newest first as before
    by_score = [e["queue_id"] for e in json.loads(view.page(0, 10, sort="score").body)]
    assert by_score == [high["queue_id"], low["queue_id"], unranked["queue_id"]]
    store.add_job(entry(4.0, clip_scores=[1.0]), [PNG])
    view = LibraryView(store)
    scores = [max(e.get("clip_scores") or [None]) if e.get("clip_scores") else None
              for e in json.loads(view.page(0, 10, sort="score").body)]
    assert scores == [25.0, 12.0, 1.0, None]
    page = view.page(1, 2, query="job", sort="score")
    assert page.total == 4 and [e["clip_scores"] for e in json.loads(page.body)] == [[12.0, 3.0], [1.0]]

