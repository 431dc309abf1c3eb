"""backend/engine/clip.py: configs, parameter trees, loading checks; fidelity is in
test_clip_reference.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.engine import checkpoint, clip

TREES = Path(__file__).parent / "data" / "checkpoint_trees"
TINY = Path(__file__).parent / "data" / "reference_clip" / "model"


@pytest.mark.parametrize("name", ["clip_vit_base_patch32", "clip_vit_large_patch14"])
def test_published_configs_give_transformers_parameter_trees(name):
    published = json.loads((TREES / f"{name}.json").read_text())
    config = clip.ClipConfig.from_dict(published.pop("config"))
    assert clip.expected_param_shapes(config) == {path: tuple(shape) for path, shape in published.items()}


def test_published_config_values():
    published = json.loads((TREES / "clip_vit_large_patch14.json").read_text())["config"]
    config = clip.ClipConfig.from_dict(published)
    assert (config.vision.patch_size, config.vision.num_hidden_layers, config.projection_dim) == (14, 24, 768)
    assert clip.ClipConfig.from_dict(config.to_dict()) == config


def test_config_refuses_what_the_code_lacks():
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        clip.ClipConfig.from_dict({"text_config": {"hidden_act": "relu"}})
    with pytest.raises(ValueError, match="not a CLIP model"):
        clip.ClipConfig.from_dict({"model_type": "bart"})


def test_a_wrong_shape_names_the_parameter(tmp_path):
    folder = tmp_path / "clip"
    shutil.copytree(TINY, folder)
    config = clip.read_config(folder)
    params = checkpoint.read_checkpoint(folder / "flax_model.msgpack")
    params["vision_model"]["encoder"]["layers"]["1"]["mlp"]["fc1"]["bias"] = np.zeros(5, np.float32)
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", params)
    with pytest.raises(checkpoint.CheckpointError, match="'vision_model/encoder/layers/1/mlp/fc1/bias' has shape"):
        clip.load_clip(folder)
    del params["vision_model"]["encoder"]["layers"]["1"]["mlp"]["fc1"]["bias"]
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", params)
    with pytest.raises(checkpoint.CheckpointError, match="'vision_model/encoder/layers/1/mlp/fc1/bias'.*missing"):
        clip.read_params(folder, config)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_weights_rank_like_float32(dtype):
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)) for _ in range(3)]
    full = clip.load_clip(TINY, dtype="float32")
    half = clip.load_clip(TINY, dtype=dtype)
    assert half.dtype == dtype
    assert half.params["text_model"]["final_layer_norm"]["scale"].dtype == np.dtype(dtype)
    np.testing.assert_allclose(half.score("a red circle", pictures), full.score("a red circle", pictures),
                               atol=0.05)


def test_random_params_match_the_config():
    config = clip.read_config(TINY)
    params = clip.random_params(config, seed=1)
    assert checkpoint.tree_shapes(params) == clip.expected_param_shapes(config)


def test_clip_model_choices(tmp_path):
    from backend.engine import models

    assert models.resolve_clip("none", tmp_path) is None and models.resolve_clip("", tmp_path) is None
    assert models.resolve_clip("demo", tmp_path) == ("demo", models.DEMO_FOLDER / "clip")
    assert models.resolve_clip(str(TINY), tmp_path) == ("model", TINY)
    assert models.default_clip("demo") == "demo" and models.default_clip("mini") == "none"
    with pytest.raises(models.ModelUnavailableError, match="unknown CLIP model"):
        models.resolve_clip("no-such-thing", tmp_path)
    with pytest.raises(models.ModelUnavailableError, match="lacks tokenizer.json"):
        (tmp_path / "half").mkdir()
        for name in ("config.json", "flax_model.msgpack"):
            shutil.copy(TINY / name, tmp_path / "half" / name)
        models.resolve_clip(str(tmp_path / "half"), tmp_path)


def test_a_hub_clip_is_downloaded_into_the_cache_like_the_models(tmp_path):
    from backend.engine import models
    from backend.engine.progress import LoadProgress
    from testkit.fake_hub import FakeHub

    with FakeHub({"openai/clip-vit-base-patch32": TINY}) as hub:
        progress = LoadProgress()
        name, folder = models.resolve_clip("openai/clip-vit-base-patch32", tmp_path, progress, hub.url)
        assert name == "openai/clip-vit-base-patch32"
        assert folder.is_relative_to(tmp_path / "huggingface" / "models--openai--clip-vit-base-patch32")
        assert any(entry["name"].endswith("flax_model.msgpack") for entry in progress.snapshot()["files"])
        picture = Image.new("RGB", (40, 40))
        assert clip.load_clip(folder, name).score("a red circle", [picture]).shape == (1,)
    with pytest.raises(models.ModelUnavailableError, match="set CLIP_MODEL to that folder"):
        models.resolve_clip("openai/clip-vit-large-patch14", tmp_path / "offline", endpoint="http://127.0.0.1:9")
