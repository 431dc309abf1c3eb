"""backend/engine/clip.py: configs, parameter trees, loading checks; fidelity is in
test_clip_reference.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

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
    from PIL import Image

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
