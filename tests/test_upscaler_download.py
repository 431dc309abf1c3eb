"""UPSCALE_MODEL's hub names (backend/engine/upscaler_choice.py), end to end through the backend's
loader against a real HTTP server speaking the hub's file API (testkit.fake_hub): a published
name and a hub file download into the model cache with progress, a cut or interrupted download
resumes, a wrong file and an unknown name are told clearly."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from backend.app import load_upscale_model
from backend.config import Config
from backend.engine import CheckpointError, ModelUnavailableError, esrgan, upscaler_choice
from backend.engine import download
from backend.engine.download import CHUNK_BYTES
from backend.engine.models import DEMO_UPSCALER
from backend.engine.progress import LoadProgress
from backend.engine.torch_checkpoint import write_state_dict
from testkit.fake_hub import FakeHub

X4V3 = "realesr-general-x4v3"


def release_file(path, config: esrgan.Config) -> None:
    """A file of the official format and a published network's shapes (random weights)."""
    rng = np.random.default_rng(5)
    write_state_dict(path, {name: rng.normal(0, 0.05, shape).astype(np.float32)
                            for name, shape in esrgan.expected_shapes(config).items()}, key="params_ema")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """The published x4v3's repository with a file of its shapes; another repository whose
    "RealESRGAN_x4plus.pth" is the small demo upscaler (a wrong file for that name)."""
    root = tmp_path_factory.mktemp("hub")
    x4v3 = upscaler_choice.PUBLISHED[X4V3]
    (root / "x4v3").mkdir()
    release_file(root / "x4v3" / x4v3.name, esrgan.PUBLISHED[X4V3])
    (root / "wrong").mkdir()
    shutil.copy(DEMO_UPSCALER, root / "wrong" / upscaler_choice.PUBLISHED["RealESRGAN_x4plus"].name)
    return {x4v3.repo: root / "x4v3", upscaler_choice.PUBLISHED["RealESRGAN_x4plus"].repo: root / "wrong"}


@pytest.fixture
def hub(repos):
    with FakeHub(repos) as hub:
        yield hub


def load(choice: str, cache, hub, progress: LoadProgress | None = None):
    config = Config.from_env({"UPSCALE_MODEL": choice, "MODEL_CACHE_DIR": str(cache), "HF_ENDPOINT": hub.url})
    return load_upscale_model(config, progress or LoadProgress())


def test_the_published_names_are_the_published_networks():
    assert set(upscaler_choice.PUBLISHED) == set(esrgan.PUBLISHED)
    assert all(hub_file.name == f"{name}.pth" for name, hub_file in upscaler_choice.PUBLISHED.items())


def test_a_published_name_downloads_into_the_cache_and_a_cut_transfer_resumes(hub, tmp_path):
    x4v3 = upscaler_choice.PUBLISHED[X4V3]
    label = f"{x4v3.repo}/{x4v3.name}"
    size = len(hub.file(x4v3.repo, x4v3.name).data)
    hub.cut_transfers(size // 3, file=label)
    progress = LoadProgress()
    upscaler = load(X4V3, tmp_path, hub, progress)
    assert (upscaler.name, upscaler.scale, upscaler.config) == (X4V3, 4, esrgan.PUBLISHED[X4V3])
    first, resumed = hub.ranges(x4v3.repo, x4v3.name)
    start = int(resumed.removeprefix("bytes=").removesuffix("-"))
    assert first is None and 0 < start <= size // 3  # what reached the disk was kept
    assert hub.bytes_sent[label] == size // 3 + size - start < size + CHUNK_BYTES  # about once
    snapshots = tmp_path / "huggingface" / f"models--{x4v3.repo.replace('/', '--')}" / "snapshots"
    assert [path.read_bytes() for path in snapshots.glob(f"*/{x4v3.name}")] == [hub.file(x4v3.repo, x4v3.name).data]
    assert [(f["bytes_done"], f["bytes_total"]) for f in progress.snapshot()["files"]] == [(size, size)]
    # Once in the cache, a start reads it without asking the hub.
    asked = len(hub.requests)
    assert load(X4V3, tmp_path, hub).name == X4V3 and len(hub.requests) == asked


def test_an_interrupted_download_resumes_on_the_next_start(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_RETRY_WAIT_SECS", 0)  # the hub is gone: no waits between the tries
    x4v3 = upscaler_choice.PUBLISHED[X4V3]
    hub.cut_transfers(1_000_000, file=f"{x4v3.repo}/{x4v3.name}", then_offline=True)
    with pytest.raises(ModelUnavailableError, match="UPSCALE_MODEL to the path of the file") as failed:
        load(X4V3, tmp_path, hub)
    assert "the next start resumes there" in str(failed.value) and x4v3.repo in str(failed.value)
    [part] = (tmp_path / "huggingface").glob("models--*/blobs/*.part")
    kept = part.stat().st_size
    assert 0 < kept <= 1_000_000
    hub.refuse = False
    progress = LoadProgress()
    assert load(X4V3, tmp_path, hub, progress).name == X4V3
    assert hub.ranges(x4v3.repo, x4v3.name)[-1] == f"bytes={kept}-"
    assert not part.exists()


def test_a_hub_file_by_its_repository_and_name(hub, tmp_path):
    """<org>/<repo>/<file>.pth: any release file of the hub, its network read off its shapes."""
    x4v3 = upscaler_choice.PUBLISHED[X4V3]
    upscaler = load(f"{x4v3.repo}/{x4v3.name}", tmp_path, hub)
    assert (upscaler.name, upscaler.config) == (X4V3, esrgan.PUBLISHED[X4V3])
    with pytest.raises(ModelUnavailableError, match="not-there.pth"):
        load(f"{x4v3.repo}/not-there.pth", tmp_path, hub)


def test_a_wrong_file_under_a_published_name_is_refused_naming_the_tensor(hub, tmp_path):
    with pytest.raises(CheckpointError, match=r"^RealESRGAN_x4plus\.pth: .*(missing|expected)"):
        load("RealESRGAN_x4plus", tmp_path, hub)


@pytest.mark.parametrize("name", ["realesrgan-x4plus", "RealESRGAN_x4", "x4v3", "demo2"])
def test_an_unknown_name_is_a_configuration_error(name):
    with pytest.raises(ValueError, match=f"^UPSCALE_MODEL names an unknown upscaler '{name}': use demo, none, one of "
                                         f"realesr-general-x4v3, RealESRGAN_x4plus, RealESRGAN_x2plus"):
        Config.from_env({"UPSCALE_MODEL": name})
