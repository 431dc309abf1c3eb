"""Redis is the commit point of a job's result: nothing of a claim that is no longer current
is ever listed, served or placed outside `.staging`, however long its writer is paused and
wherever in the store, and no client sees a job done without its result.

A writer (the scheduler's real attempt) is paused at each point of LibraryStore.add_job, the
job is taken over meanwhile where that is still possible, and the writer resumed. A watcher
reads the library folder, /getlibrary and /jobs/<id> of a real frontend the whole time, and
the writer itself looks again right after each step, so a stale result cannot slip between
two of the watcher's looks."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from filelock import FileLock

from frontend.config import Config
from frontend.threaded import serving
from playground.library import STAGING_DIR, LibraryStore
from playground.queue import JobQueue
from testkit.standin_backend import solid_png
from scheduler.worker import _LibraryAttempt
from scheduler.worker_queue import WorkerQueue

PNG = solid_png()
PAUSES = ("after staging", "inside the lock, before publishing", "before committing")


class Watcher:
    """What a client and the library folder showed of one job, looked at again and again."""

    def __init__(self, frontend_url: str, library_dir, job_id: str):
        self.url, self.folder, self.job_id = frontend_url, library_dir / job_id, job_id
        self.listed: list[list[str]] = []   # the job's generated_images in /getlibrary, each time seen
        self.files: set[str] = set()        # every picture ever seen in library/<job>/
        self.statuses: list[dict] = []      # /jobs/<id>
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def look(self) -> None:
        if self.folder.is_dir():
            self.files.update(p.name for p in self.folder.iterdir() if p.suffix == ".png")
        for entry in self._get("/getlibrary"):
            if entry.get("queue_id") == self.job_id:
                self.listed.append(entry["generated_images"])
        self.statuses.append(self._get(f"/jobs/{self.job_id}"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.look()
            time.sleep(0.002)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pause", PAUSES)
def test_a_paused_writer_never_shows_a_stale_result(pause, redis_url, redis_client, tmp_path):
    library_dir = tmp_path / "library"
    library = LibraryStore(library_dir)
    queue = JobQueue(redis_client)
    stale = WorkerQueue(redis_client, "stale", "http://127.0.0.1:1")
    assert stale.register()
    job = queue.submit({"text": "a red circle", "num_images": 2, "seed": 1})
    mine = stale.claim(timeout=1)
    paused, resume = threading.Event(), threading.Event()

    with serving(Config(port=0, redis_url=redis_url, library_dir=library_dir)) as server, \
            Watcher(server.url, library_dir, job.id) as watcher:

        def pause_here(point: str) -> None:
            if point == pause:
                paused.set()
                assert resume.wait(30)
            watcher.look()

        class Attempt(_LibraryAttempt):
            def commit(self, urls):
                pause_here("before committing")
                outcome = super().commit(urls)
                watcher.look()
                return outcome

        publish = library._publish_locked

        def publish_after_a_pause(staging, entry):
            pause_here("inside the lock, before publishing")
            publish(staging, entry)
            watcher.look()

        library._publish_locked = publish_after_a_pause
        fields = {"seed": 1, "model": "tiny", "codes": [], "process_time_secs": 1.0}
        outcome = {}
        lock = FileLock(str(library_dir / "library.json.lock"))  # another process's hold on the library
        if pause == "after staging":
            lock.acquire()

        def write():
            outcome["stored"] = library.add_job({"queue_id": job.id, "text_prompt": "a red circle",
                                                 "creation_unixtime": 0.0}, [PNG, PNG],
                                                attempt=Attempt(stale, mine, fields))

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        if pause == "after staging":
            staged = library_dir / STAGING_DIR / f"{job.id}.{mine.claim}" / "job.json"
            deadline = time.monotonic() + 10
            while not staged.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert staged.exists()
            paused.set()
        assert paused.wait(10)

        # Paused past its heartbeat: another worker sweeps the job back and claims it, if it can.
        redis_client.delete(stale.keys.alive(stale.worker_id))
        other = WorkerQueue(redis_client, "other", "http://127.0.0.1:2")
        assert other.register()
        other.sweep_dead_workers()
        theirs = other.claim(timeout=0.2)
        time.sleep(0.1)  # the watcher keeps looking while the writer is paused
        watcher.look()
        if pause == "after staging":
            lock.release()
        resume.set()
        writer.join(20)
        assert not writer.is_alive()
        watcher.look()

        if theirs is not None:  # taken over: the paused writer's result never counts
            assert outcome["stored"] is None
            final = library.add_job({"queue_id": job.id, "text_prompt": "a red circle", "creation_unixtime": 0.0},
                                    [PNG], attempt=_LibraryAttempt(other, theirs, fields))["generated_images"]
        else:  # committed before the pause ended: it is the result
            final = outcome["stored"]["generated_images"]
        watcher.look()

    assert queue.get(job.id).status == "done" and queue.get(job.id).images == final
    assert watcher.listed and all(listed == final for listed in watcher.listed), \
        f"/getlibrary listed {[listed for listed in watcher.listed if listed != final][:1]}, not the result {final}"
    assert watcher.files == {url.rsplit("/", 1)[1] for url in final}, "a stale picture was placed in the library"
    done = [status for status in watcher.statuses if status["status"] == "done"]
    assert done and all(status.get("result", {}).get("generated_images") == final for status in done), \
        "a job was shown done without its result"
    assert all(status["status"] == "done" for status in watcher.statuses[watcher.statuses.index(done[0]):]), \
        "a job shown done went back"
    assert not (library_dir / STAGING_DIR).exists() or not any((library_dir / STAGING_DIR).iterdir())
    # Committed before the pause could end, it cannot be taken over: only then is it the result.
    assert (pause == "inside the lock, before publishing") == (theirs is None)
