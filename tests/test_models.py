"""The model registry: the generated tiny model, local folders, published models through the
hub (a real HTTP server speaking the hub's file API: there is no network here), and the errors
users see. The downloads themselves are tested in test_download.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from huggingface_hub import constants as hub_constants

from backend.engine import (
    CheckpointError,
    GenerationRequest,
    ModelUnavailableError,
    load_engine,
    models,
)
from backend.engine.dallebart import DalleBartConfig, expected_param_shapes

serialization = pytest.importorskip("flax.serialization")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tiny_model_is_generated_once_and_deterministically(model_cache_dir, tmp_path):
    folder = models.ensure_tiny_model(model_cache_dir)
    stamp = (folder / "flax_model.msgpack").stat().st_mtime_ns
    assert models.ensure_tiny_model(model_cache_dir) == folder
    assert (folder / "flax_model.msgpack").stat().st_mtime_ns == stamp
    assert not list(model_cache_dir.glob(".tiny-*"))  # no half-built leftovers

    models.write_tiny_model(tmp_path / "again")
    first, second = files_of(folder), files_of(tmp_path / "again")
    assert set(first) >= {"config.json", "flax_model.msgpack", "tokenizer.json", "vocab.json", "merges.txt",
                          "vqgan/config.json", "vqgan/flax_model.msgpack"}
    assert first == second


def test_tiny_files_are_in_the_official_format(model_cache_dir):
    folder = models.ensure_tiny_model(model_cache_dir)
    config = DalleBartConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert (config.image_length, config.max_text_length, config.image_vocab_size) == (256, 64, 1024)
    restored = serialization.msgpack_restore((folder / "flax_model.msgpack").read_bytes())  # flax reads it
    flat = {"/".join(path): leaf.shape for path, leaf in _flatten(restored)}
    assert flat == expected_param_shapes(config)
    vqgan = json.loads((folder / "vqgan" / "config.json").read_text())
    assert (vqgan["n_embed"], vqgan["resolution"]) == (1024, 256)


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def test_local_folder_loads_through_the_same_path(model_cache_dir, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(models.ensure_tiny_model(model_cache_dir), folder)
    files = models.resolve_model(str(folder), tmp_path / "cache")
    assert (files.name, files.dalle_dir, files.vqgan_dir, files.dtype) == ("my-model", folder, folder / "vqgan", None)

    engine = load_engine(str(folder), tmp_path / "cache")
    tiny = load_engine("tiny", model_cache_dir)
    assert engine.model_name == "my-model"
    request = GenerationRequest("a green ring", 2, seed=21)
    np.testing.assert_array_equal(engine.generate_codes(request)[0], tiny.generate_codes(request)[0])


def test_folder_problems_are_named(model_cache_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelUnavailableError, match="unknown model 'nope'.*tiny, mini, mega, mega_full"):
        models.resolve_model("nope", tmp_path)

    folder = tmp_path / "broken"
    shutil.copytree(models.ensure_tiny_model(model_cache_dir), folder)
    (folder / "flax_model.msgpack").unlink()
    with pytest.raises(ModelUnavailableError, match="lacks flax_model.msgpack"):
        models.resolve_model(str(folder), tmp_path)

    shutil.rmtree(folder / "vqgan")
    shutil.copy(model_cache_dir / "tiny" / "flax_model.msgpack", folder)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match=f"{models.VQGAN_REPO}@{models.VQGAN_REVISION}"):
        models.resolve_model(str(folder), tmp_path)


def test_checkpoint_that_does_not_fit_its_config_is_refused(model_cache_dir, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(models.ensure_tiny_model(model_cache_dir), folder)
    config = json.loads((folder / "config.json").read_text())
    config["decoder_ffn_dim"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"GLU_0/Dense_0/kernel' has shape \[2, 64, 128\].*\[2, 64, 96\]"):
        load_engine(str(folder), tmp_path / "cache")


def test_offline_published_model_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError) as raised:
        models.resolve_model("mini", tmp_path)
    message = str(raised.value)
    for needed in ("dalle-mini/dalle-mini", "flax_model.msgpack", "config.json", "DALLE_MODEL", str(tmp_path)):
        assert needed in message


def test_published_models_come_from_the_hub(fake_hub, tmp_path):
    cache = tmp_path / "cache"
    mega = models.resolve_model("mega", cache, endpoint=fake_hub.url)
    assert mega.dtype == "float16" and mega.name == "mega"
    assert mega.dalle_dir.parent.parent == cache / "huggingface" / "models--dalle-mini--dalle-mega"
    asked = [(seen.method, seen.path.split("/resolve/")[0], seen.path.split("/")[4], seen.path.split("/")[-1])
             for seen in fake_hub.requests if seen.server == "hub"]
    assert asked[0] == ("HEAD", "/dalle-mini/dalle-mega", "main", "config.json")
    assert ("HEAD", "/dalle-mini/dalle-mega", fake_hub.commits["dalle-mini/dalle-mega"],
            "enwiki-words-frequency.txt") in asked  # optional: asked for, at the commit main pointed to
    assert ("HEAD", f"/{models.VQGAN_REPO}", models.VQGAN_REVISION, "flax_model.msgpack") in asked

    engine = load_engine("mini", cache, endpoint=fake_hub.url)  # the tiny files, served as if they were mini's
    assert engine.model_name == "mini"
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(engine.params)} == {np.dtype("float32")}
    result = engine.generate(GenerationRequest("a blue star", 2, seed=3))
    assert len(result.images) == 2
