"""LibraryStore on a real folder: atomic writes, deletes, caching, rebuild, races."""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import uuid

import pytest

from playground.library import LibraryStore

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


def entry(created: float | None = None, **extra) -> dict:
    return {"queue_id": str(uuid.uuid4()), "text_prompt": "a squirrel", "seed": 42, "num_images": 2,
            "creation_unixtime": time.time() if created is None else created,
            "process_time_secs": 1.5, "gen_top_k": None, "gen_top_p": None, "temperature": None,
            "condition_scale": None, "model": "tiny", **extra}


def read_index(store: LibraryStore) -> list[dict]:
    return json.loads(store.index_path.read_bytes())


def test_add_job_writes_pngs_job_file_and_index(tmp_path):
    store = LibraryStore(tmp_path)
    stored = store.add_job(entry(), [PNG, PNG + b"2"])
    qid = stored["queue_id"]
    assert len(stored["generated_images"]) == 2
    for url in stored["generated_images"]:
        assert url.startswith(f"library/{qid}/") and url.endswith(".png")
        uuid.UUID(url.split("/")[-1][:-4])
    assert sorted((tmp_path / qid / u.split("/")[-1]).read_bytes() for u in stored["generated_images"]) == [PNG, PNG + b"2"]
    assert json.loads((tmp_path / qid / "job.json").read_bytes()) == stored
    assert read_index(store) == [stored] == store.entries()
    assert json.loads(store.entries_json()) == [stored]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_entries_are_newest_first(tmp_path):
    store = LibraryStore(tmp_path)
    old, new, middle = (store.add_job(entry(created=t), [PNG]) for t in (100.0, 300.0, 200.0))
    assert [e["queue_id"] for e in store.entries()] == [new["queue_id"], middle["queue_id"], old["queue_id"]]


def test_readding_a_job_replaces_it(tmp_path):
    store = LibraryStore(tmp_path)
    first = store.add_job(entry(), [PNG, PNG])
    again = store.add_job({**first, "seed": 43}, [PNG])
    assert [e["seed"] for e in store.entries()] == [43]
    assert sorted(p.name for p in (tmp_path / first["queue_id"]).iterdir()) == sorted(
        ["job.json"] + [u.split("/")[-1] for u in again["generated_images"]])


def test_a_jobs_reveals_live_and_go_with_it(tmp_path):
    store = LibraryStore(tmp_path)
    stored = store.add_job(entry(keep_previews=True), [PNG, PNG], reveals=[b"RIFF one", b"RIFF two"])
    folder = tmp_path / stored["queue_id"]
    assert [u.rsplit(".", 1)[1] for u in stored["reveal_images"]] == ["webp", "webp"]
    assert [(folder / u.split("/")[-1]).read_bytes() for u in stored["reveal_images"]] == [b"RIFF one", b"RIFF two"]
    assert json.loads((folder / "job.json").read_bytes())["keep_previews"] is True
    # Stored again (a later attempt) without reveals: the old ones go.
    again = store.add_job({**stored, "keep_previews": False}, [PNG])
    assert sorted(p.name for p in folder.iterdir()) == sorted(["job.json", again["generated_images"][0].split("/")[-1]])
    store.add_job(stored, [PNG], reveals=[b"RIFF"])
    assert store.delete_job(stored["queue_id"]) and not folder.exists()


def test_a_grid_s_sheet_lives_beside_its_cells_and_goes_alone(tmp_path):
    """A grid sweep's entry: its sheet (`sheet_image`), and `cells` along generated_images."""
    store = LibraryStore(tmp_path)
    cells = [{"seed": 1}, {"seed": 2}, {"seed": 3}]
    stored = store.add_job(entry(cells=cells, grid={"x": {"field": "seed", "values": [1, 2, 3]}}),
                           [PNG + b"1", PNG + b"2", PNG + b"3"], sheet=b"sheet PNG")
    folder = tmp_path / stored["queue_id"]
    assert (folder / stored["sheet_image"].split("/")[-1]).read_bytes() == b"sheet PNG"
    assert stored["sheet_image"] not in stored["generated_images"]
    # A cell deleted: its values go with it; the sheet stays.
    assert store.delete_image(stored["generated_images"][1])
    [left] = store.entries()
    assert left["cells"] == [{"seed": 1}, {"seed": 3}] and left["sheet_image"] == stored["sheet_image"]
    # The sheet deleted: the cells stay.
    assert store.delete_image(stored["sheet_image"])
    [left] = store.entries()
    assert left["sheet_image"] is None and len(left["generated_images"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["job.json"] + [u.split("/")[-1] for u in left["generated_images"]])
    assert store.delete_job(stored["queue_id"]) and not folder.exists()


def test_add_job_rejects_bad_queue_id_and_missing_fields(tmp_path):
    store = LibraryStore(tmp_path)
    with pytest.raises(ValueError):
        store.add_job({**entry(), "queue_id": "../escape"}, [PNG])
    with pytest.raises(ValueError):
        store.add_job({"queue_id": str(uuid.uuid4())}, [PNG])
    assert list(tmp_path.iterdir()) == []


def test_entries_cache_reloads_when_another_process_writes(tmp_path):
    reader, writer = LibraryStore(tmp_path), LibraryStore(tmp_path)
    assert reader.entries() == []
    added = writer.add_job(entry(), [PNG])
    assert reader.entries() == [added]
    cached = reader.entries()
    assert reader.entries() is cached  # unchanged file: no reload


def test_delete_image_updates_index_and_job_file(tmp_path):
    store = LibraryStore(tmp_path)
    stored = store.add_job(entry(), [PNG, PNG])
    gone, kept = stored["generated_images"]
    assert store.delete_image(gone) is True
    assert not (tmp_path / gone.removeprefix("library/")).exists()
    assert store.entries()[0]["generated_images"] == [kept]
    assert json.loads((tmp_path / stored["queue_id"] / "job.json").read_bytes())["generated_images"] == [kept]
    assert store.delete_image(gone) is False


def test_deleting_the_last_image_deletes_the_job(tmp_path):
    store = LibraryStore(tmp_path)
    stored = store.add_job(entry(), [PNG])
    assert store.delete_image(stored["generated_images"][0]) is True
    assert store.entries() == [] and not (tmp_path / stored["queue_id"]).exists()


@pytest.mark.parametrize("bad", [
    "library/../library.json", "../etc/passwd", "/etc/passwd", "library.json",
    f"library/{uuid.uuid4()}/job.json", f"library/{uuid.uuid4()}/../../x.png",
    f"library/{uuid.uuid4()}\\{uuid.uuid4()}.png", f"library/{uuid.uuid4()}/{uuid.uuid4()}.png\x00",
    f"library/{str(uuid.uuid4()).upper()}/{uuid.uuid4()}.png", "", None, 42,
])
def test_delete_image_refuses_anything_but_library_uuid_png(tmp_path, bad):
    store = LibraryStore(tmp_path)
    stored = store.add_job(entry(), [PNG])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError):
        store.delete_image(bad)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert store.entries() == [stored]


def test_delete_image_does_not_follow_symlinks(tmp_path):
    library, outside = tmp_path / "library", tmp_path / "outside.png"
    outside.write_bytes(PNG)
    store = LibraryStore(library)
    qid, name = str(uuid.uuid4()), str(uuid.uuid4())
    (library / qid).mkdir()
    (library / qid / f"{name}.png").symlink_to(outside)
    assert store.delete_image(f"library/{qid}/{name}.png") is False
    assert outside.read_bytes() == PNG


def test_delete_image_does_not_follow_a_symlinked_job_folder(tmp_path):
    library, outside = tmp_path / "library", tmp_path / "outside"
    outside.mkdir()
    name = str(uuid.uuid4())
    (outside / f"{name}.png").write_bytes(PNG)
    store = LibraryStore(library)
    qid = str(uuid.uuid4())
    (library / qid).symlink_to(outside, target_is_directory=True)
    assert store.delete_image(f"library/{qid}/{name}.png") is False
    assert store.delete_job(qid) is False
    assert (outside / f"{name}.png").read_bytes() == PNG


def test_delete_job_removes_entry_and_folder(tmp_path):
    store = LibraryStore(tmp_path)
    keep, gone = store.add_job(entry(), [PNG]), store.add_job(entry(), [PNG, PNG])
    assert store.delete_job(gone["queue_id"]) is True
    assert store.entries() == [keep] and not (tmp_path / gone["queue_id"]).exists()
    assert store.delete_job(gone["queue_id"]) is False
    with pytest.raises(ValueError):
        store.delete_job("..")


def test_rebuild_recreates_a_missing_or_corrupt_index(tmp_path):
    store = LibraryStore(tmp_path)
    added = [store.add_job(entry(created=float(t)), [PNG]) for t in range(3)]
    store.index_path.write_bytes(b"[{\"half\": ")
    # A reader meeting a corrupt index rebuilds it rather than failing.
    assert [e["queue_id"] for e in LibraryStore(tmp_path).entries()] == [a["queue_id"] for a in reversed(added)]
    store.index_path.unlink()
    assert store.rebuild() is True
    assert len(read_index(store)) == 3
    assert store.rebuild() is False  # valid: left alone


def test_a_write_after_the_index_vanished_keeps_every_job(tmp_path):
    store = LibraryStore(tmp_path)
    first = store.add_job(entry(), [PNG])
    store.index_path.unlink()
    second = store.add_job(entry(), [PNG])
    assert {e["queue_id"] for e in read_index(store)} == {first["queue_id"], second["queue_id"]}


def _add_many(library_dir: str, count: int) -> None:
    store = LibraryStore(library_dir)
    for _ in range(count):
        store.add_job(entry(), [PNG, PNG])


def test_concurrent_processes_adding_and_deleting_keep_the_index_valid(tmp_path):
    """Two processes add jobs while this one deletes images and jobs and reads the index:
    every read parses, and at the end exactly the added-minus-deleted jobs remain."""
    store = LibraryStore(tmp_path)
    seeded = [store.add_job(entry(), [PNG, PNG]) for _ in range(10)]
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_add_many, args=(str(tmp_path), 25)) for _ in range(2)]
    for w in writers:
        w.start()
    deleted_jobs = set()
    for i, job in enumerate(seeded):
        if i % 2:
            assert store.delete_job(job["queue_id"])
            deleted_jobs.add(job["queue_id"])
        else:
            assert store.delete_image(job["generated_images"][0])
        json.loads(store.index_path.read_bytes())  # always a whole, valid file
    while any(w.is_alive() for w in writers):
        json.loads(store.index_path.read_bytes())
        time.sleep(0.005)
    for w in writers:
        assert w.exitcode == 0
    final = read_index(store)
    assert len(final) == 10 + 50 - len(deleted_jobs)
    assert len({e["queue_id"] for e in final}) == len(final)
    assert not deleted_jobs & {e["queue_id"] for e in final}
    on_disk = {p.parent.name for p in tmp_path.glob("*/job.json")}
    assert on_disk == {e["queue_id"] for e in final}


def test_threads_share_one_store_safely(tmp_path):
    store = LibraryStore(tmp_path)
    threads = [threading.Thread(target=lambda: [store.add_job(entry(), [PNG]) for _ in range(10)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_index(store)) == 40 == len(store.entries())


def test_getlibrary_with_ten_thousand_jobs_is_served_from_cache(tmp_path):
    store = LibraryStore(tmp_path)
    entries = [{**entry(created=float(i)), "generated_images": [f"library/x/{uuid.uuid4()}.png"] * 4}
               for i in range(10_000)]
    store.index_path.write_bytes(json.dumps(entries).encode())
    store.entries_json()  # first load parses the file
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        body = store.entries_json()
        timings.append(time.perf_counter() - start)
    assert len(body) > 1_000_000
    assert sorted(timings)[25] < 0.005
    assert json.loads(body)[0]["creation_unixtime"] == 9999.0  # written oldest first, served newest first
    os.utime(store.index_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.entries_json() == body  # re-read after the change, same content
