"""Published models' downloads, end to end against a real HTTP server speaking the hub's file
API (testkit.fake_hub, serving the tiny model's files): progress, cut and killed
transfers that resume, servers that ignore Range, corrupt partial files, two downloaders on one
cache, the hub client's own cache (`hf download`), and what a user reads when it fails."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants as hub_constants

from backend.engine import ModelUnavailableError, models
from backend.engine.download import CHUNK_BYTES, DownloadError, download_repo
from backend.engine.progress import LoadProgress, describe

MINI = "dalle-mini/dalle-mini"
WEIGHTS = f"{MINI}/flax_model.msgpack"
ROOT = Path(__file__).resolve().parents[1]


class Recorder(LoadProgress):
    """A LoadProgress that also keeps every report, to check their order."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, int, int | None]] = []

    def file(self, name, bytes_done, bytes_total):
        self.events.append((name, bytes_done, bytes_total))
        super().file(name, bytes_done, bytes_total)

    def of(self, name: str) -> list[tuple[int, int | None]]:
        return [(done, total) for label, done, total in self.events if label == name]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def assert_same_files(files: models.ModelFiles, tiny: Path) -> None:
    for name in models.DALLE_FILES:
        assert (files.dalle_dir / name).read_bytes() == (tiny / name).read_bytes(), name
    for name in models.VQGAN_FILES:
        assert (files.vqgan_dir / name).read_bytes() == (tiny / "vqgan" / name).read_bytes(), name


def part_file(cache: Path, hub, repo: str = MINI, name: str = "flax_model.msgpack") -> Path:
    folder = f"models--{repo.replace('/', '--')}"
    return cache / "huggingface" / folder / "blobs" / f"{hub.file(repo, name).sha256}.part"


@pytest.fixture
def tiny(model_cache_dir) -> Path:
    return models.ensure_tiny_model(model_cache_dir)


def test_a_published_model_downloads_into_the_hub_cache_with_progress(fake_hub, tiny, tmp_path):
    progress = Recorder()
    files = models.resolve_model("mini", tmp_path, progress, fake_hub.url)
    assert_same_files(files, tiny)

    size = len(fake_hub.file(MINI, "flax_model.msgpack").data)
    reports = progress.of(WEIGHTS)
    assert len(reports) > size // CHUNK_BYTES  # step by step, not only at the end
    assert all(total == size for _done, total in reports)
    assert [done for done, _total in reports] == sorted(done for done, _total in reports)
    assert reports[0][0] == 0 and reports[-1][0] == size
    snapshot = progress.snapshot()
    assert snapshot["stage"] == "downloading"
    assert {entry["name"] for entry in snapshot["files"]} == (
        {f"{MINI}/{name}" for name in models.DALLE_FILES}
        | {f"{models.VQGAN_REPO}/{name}" for name in models.VQGAN_FILES})
    assert all(entry["bytes_done"] == entry["bytes_total"] for entry in snapshot["files"])

    # The hub client's own layout: it finds the files without the network.
    hub_cache = tmp_path / "huggingface"
    path = huggingface_hub.hf_hub_download(MINI, "flax_model.msgpack", cache_dir=hub_cache, local_files_only=True)
    assert Path(path) == files.dalle_dir / "flax_model.msgpack"
    assert huggingface_hub.try_to_load_from_cache(MINI, "enwiki-words-frequency.txt", cache_dir=hub_cache) \
        is huggingface_hub.file_download._CACHED_NO_EXIST  # the optional file the repo lacks: remembered

    # A second start uses the cache and asks the hub nothing.
    asked = len(fake_hub.requests)
    assert models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url) == files
    assert len(fake_hub.requests) == asked


def test_a_cut_transfer_resumes_where_it_stopped(fake_hub, tiny, tmp_path):
    size = len(fake_hub.file(MINI, "flax_model.msgpack").data)
    # What the hub client leaves when it is killed mid-download: never resumed, so removed.
    leftover = part_file(tmp_path, fake_hub).with_suffix(".0123abcd.incomplete")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x" * 1000)
    fake_hub.cut_transfers(700_000, file=WEIGHTS)
    files = models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url)
    assert_same_files(files, tiny)
    first, resumed = fake_hub.ranges(MINI, "flax_model.msgpack")
    start = int(resumed.removeprefix("bytes=").removesuffix("-"))
    assert first is None and 0 < start <= 700_000
    assert fake_hub.bytes_sent[WEIGHTS] == 700_000 + size - start < size + CHUNK_BYTES  # about once
    assert not leftover.exists()


def test_an_interrupted_download_resumes_on_the_next_start(fake_hub, tiny, tmp_path):
    fake_hub.cut_transfers(700_000, file=WEIGHTS, then_offline=True)
    with pytest.raises(DownloadError, match="cannot reach.*the next start resumes there"):
        download_repo(MINI, None, models.DALLE_FILES, tmp_path / "huggingface", endpoint=fake_hub.url,
                      retry_delay=0)
    kept = part_file(tmp_path, fake_hub).stat().st_size
    assert 0 < kept <= 700_000

    fake_hub.refuse = False
    progress = Recorder()
    files = models.resolve_model("mini", tmp_path, progress, fake_hub.url)
    assert_same_files(files, tiny)
    assert fake_hub.ranges(MINI, "flax_model.msgpack")[-1] == f"bytes={kept}-"
    assert progress.of(WEIGHTS)[0][0] == kept  # the progress starts where the disk is
    assert not part_file(tmp_path, fake_hub).exists()


def test_a_killed_process_resumes_after_a_restart(fake_hub, tiny, tmp_path):
    size = len(fake_hub.file(MINI, "flax_model.msgpack").data)
    fake_hub.hold_after(1_000_000, file=WEIGHTS)
    code = "import sys; from pathlib import Path; from backend.engine import models; " \
           "models.resolve_model('mini', Path(sys.argv[1]), endpoint=sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), fake_hub.url], env=env)
    try:
        part = part_file(tmp_path, fake_hub)
        wait_for(lambda: fake_hub.bytes_sent.get(WEIGHTS) == 1_000_000 and part.is_file()
                 and part.stat().st_size >= 2 * CHUNK_BYTES, 120, "the child to be mid-download")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    kept = part.stat().st_size
    fake_hub.release()

    files = models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url)
    assert_same_files(files, tiny)
    assert fake_hub.ranges(MINI, "flax_model.msgpack") == [None, f"bytes={kept}-"]
    assert fake_hub.bytes_sent[WEIGHTS] == 1_000_000 + size - kept < size + CHUNK_BYTES


def test_a_server_that_ignores_range_still_gives_the_right_file(fake_hub, tiny, tmp_path):
    size = len(fake_hub.file(MINI, "flax_model.msgpack").data)
    fake_hub.ignore_range = True
    fake_hub.cut_transfers(700_000, file=WEIGHTS)
    files = models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url)
    assert_same_files(files, tiny)
    assert len(fake_hub.ranges(MINI, "flax_model.msgpack")) == 2
    assert fake_hub.bytes_sent[WEIGHTS] == 700_000 + size  # the whole file again, not appended


def test_a_corrupt_partial_file_is_downloaded_again_not_loaded(fake_hub, tiny, tmp_path):
    fake_hub.cut_transfers(700_000, file=WEIGHTS, then_offline=True)
    with pytest.raises(DownloadError):
        download_repo(MINI, None, models.DALLE_FILES, tmp_path / "huggingface", endpoint=fake_hub.url,
                      retry_delay=0)
    part = part_file(tmp_path, fake_hub)
    damaged = bytearray(part.read_bytes())
    damaged[1000] ^= 0xFF
    part.write_bytes(bytes(damaged))

    fake_hub.refuse = False
    files = models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url)
    assert_same_files(files, tiny)
    ranges = fake_hub.ranges(MINI, "flax_model.msgpack")
    assert ranges[-2] == f"bytes={len(damaged)}-" and ranges[-1] is None  # resumed, refused, again


def test_two_backends_on_one_cache_download_each_file_once(fake_hub, tiny, tmp_path):
    size = len(fake_hub.file(MINI, "flax_model.msgpack").data)
    fake_hub.hold_after(1_000_000, file=WEIGHTS)
    first, second = Recorder(), Recorder()
    results = {}

    def load(name, progress):
        results[name] = models.resolve_model("mini", tmp_path, progress, fake_hub.url)

    threads = [threading.Thread(target=load, args=("first", first))]
    threads[0].start()
    wait_for(lambda: part_file(tmp_path, fake_hub).is_file(), 60, "the first download to start")
    threads.append(threading.Thread(target=load, args=("second", second)))
    threads[1].start()
    # The second waits for the first and reports its progress from the partial file.
    wait_for(lambda: any(done > 0 for done, _total in second.of(WEIGHTS)), 30, "the second to see progress")
    fake_hub.release()
    for thread in threads:
        thread.join(60)
    assert results["first"] == results["second"]
    assert_same_files(results["second"], tiny)
    assert fake_hub.bytes_sent[WEIGHTS] == size
    assert second.of(WEIGHTS)[0][1] == size


def test_a_cache_filled_by_hf_download_is_used_as_it_is(fake_hub, tiny, tmp_path):
    hub_cache = tmp_path / "huggingface"
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "hf-home")}
    hf = Path(sys.executable).parent / "hf"
    # As docs/engine.md says, the optional file included: the repository lacks it, hf skips it.
    for repo, revision, files in ((MINI, "main", (*models.DALLE_FILES, models.WORD_FREQUENCIES_FILE)),
                                  (models.VQGAN_REPO, models.VQGAN_REVISION, models.VQGAN_FILES)):
        subprocess.run([str(hf), "download", repo, *files, "--revision", revision, "--cache-dir", str(hub_cache)],
                       env=env, check=True, capture_output=True, timeout=120)
    fake_hub.requests.clear()
    fake_hub.transfers.clear()

    files = models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url)
    assert_same_files(files, tiny)
    assert fake_hub.transfers == []
    # Only the optional file is looked up: hf does not remember that the repository lacks it.
    assert [seen.path.rsplit("/", 1)[-1] for seen in fake_hub.requests] == [models.WORD_FREQUENCIES_FILE]


def test_a_hub_that_cannot_be_reached_gives_one_clear_error(fake_hub, tmp_path):
    url = fake_hub.url
    fake_hub.stop()
    with pytest.raises(ModelUnavailableError) as raised:
        models.resolve_model("mini", tmp_path, Recorder(), url)
    message = str(raised.value)
    for needed in (MINI, "flax_model.msgpack", "config.json", "DALLE_MODEL", str(tmp_path), "cannot reach",
                   "hf download"):
        assert needed in message


def test_offline_mode_uses_the_cache_and_names_itself_when_it_cannot(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="offline: HF_HUB_OFFLINE is set"):
        models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url)
    assert fake_hub.requests == []
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    files = models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert models.resolve_model("mini", tmp_path, Recorder(), fake_hub.url) == files


def test_http_errors_are_named(fake_hub, tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"dalle-mini/nope@main.*HTTP 404"):
        models.download("dalle-mini/nope", None, models.DALLE_FILES, tmp_path, "nope", endpoint=fake_hub.url)


def test_progress_lines_read_well():
    assert describe(512 * 10**6, 1_750_000_000) == "512 MB of 1.75 GB (29%)"
    assert describe(1275, None) == "1.27 kB"
