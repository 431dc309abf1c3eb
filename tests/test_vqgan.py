"""VQGAN decoder/encoder on a small random model with the real model's resolutions."""
from __future__ import annotations

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backend.engine import vqgan
from backend.engine.vqgan import VQGANConfig, decode_codes, encode_images, init_vqgan_params

# config.json of dalle-mini/vqgan_imagenet_f16_16384 (with keys our config does not use).
PUBLISHED_CONFIG = {
    "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
    "z_channels": 256, "embed_dim": 256, "n_embed": 16384, "resolution": 256, "in_channels": 3,
    "out_ch": 3, "double_z": False, "dropout": 0.0, "resamp_with_conv": True, "give_pre_end": False,
}
# SHA-256 of the published flax_model.msgpack's parameter list, one "path (shape)" line per
# tensor in sorted order, e.g. "decoder/conv_in/kernel (3, 3, 256, 512)".
PUBLISHED_TREE_SHA256 = "6373ba099528d519d4a41827309808a5574cc5d6a15d280dff2d27d907646883"
PUBLISHED_TENSORS = 343
PUBLISHED_PARAMS = 76_073_859

SMALL = VQGANConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(16,),
                    z_channels=32, embed_dim=32, n_embed=64, resolution=256)

decode = jax.jit(decode_codes, static_argnums=1)
encode = jax.jit(encode_images, static_argnums=1)


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(key.key for key in path): tuple(leaf.shape) for path, leaf in leaves}


@pytest.fixture(scope="module")
def params():
    return init_vqgan_params(SMALL, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def codes():
    return jax.random.randint(jax.random.PRNGKey(1), (2, 256), 0, SMALL.n_embed, dtype=jnp.int32)


@pytest.fixture(scope="module")
def images(params, codes):
    return np.asarray(decode(params, SMALL, codes))


def test_published_config_builds_exactly_the_published_tree():
    config = VQGANConfig.from_dict(PUBLISHED_CONFIG)
    shapes = _flat_shapes(jax.eval_shape(lambda key: init_vqgan_params(config, key), jax.random.PRNGKey(0)))
    listing = "\n".join(f"{path} {shape}" for path, shape in sorted(shapes.items()))
    assert len(shapes) == PUBLISHED_TENSORS
    assert sum(math.prod(shape) for shape in shapes.values()) == PUBLISHED_PARAMS
    assert shapes["decoder/up_4/attn_2/q/kernel"] == (1, 1, 512, 512)
    assert shapes["decoder/up_1/block_0/nin_shortcut/kernel"] == (1, 1, 256, 128)
    assert shapes["encoder/down_3/downsample/conv/kernel"] == (3, 3, 256, 256)
    assert shapes["quantize/embedding/embedding"] == (16384, 256)
    assert hashlib.sha256(listing.encode()).hexdigest() == PUBLISHED_TREE_SHA256


def test_config_reads_published_json_and_round_trips():
    config = VQGANConfig.from_dict(PUBLISHED_CONFIG)
    assert config.latent_size == 16 and config.num_resolutions == 5
    assert config.to_dict() == {k: v for k, v in PUBLISHED_CONFIG.items()
                                if k not in ("dropout", "resamp_with_conv", "give_pre_end")}
    assert VQGANConfig.from_dict(config.to_dict()) == config
    hash(config)  # usable as a static jit argument


@pytest.mark.parametrize("changes", [{"ch": 16}, {"resolution": 250}, {"ch_mult": []}])
def test_invalid_config_is_rejected(changes):
    with pytest.raises(ValueError):
        VQGANConfig.from_dict({**PUBLISHED_CONFIG, **changes})


def test_decode_gives_rgb_images_in_unit_range(images):
    assert images.shape == (2, 256, 256, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    # A random decoder still draws structure: neither flat nor fully clipped.
    inside = (images > 0.0) & (images < 1.0)
    assert inside.mean() > 0.5
    assert images.std(axis=(1, 2)).min() > 0.05


def test_decode_is_deterministic(params, codes, images):
    np.testing.assert_array_equal(np.asarray(decode(params, SMALL, codes)), images)


def test_each_image_depends_only_on_its_own_codes(params, codes, images):
    for i in range(codes.shape[0]):
        alone = np.asarray(decode(params, SMALL, codes[i:i + 1]))[0]
        np.testing.assert_allclose(alone, images[i], atol=1e-5)
    assert np.abs(images[0] - images[1]).mean() > 0.01


def test_decode_rejects_codes_of_the_wrong_length(params):
    with pytest.raises(ValueError, match="codes must have shape"):
        decode_codes(params, SMALL, jnp.zeros((2, 255), jnp.int32))


def test_init_is_reproducible_and_seed_dependent():
    a = init_vqgan_params(SMALL, jax.random.PRNGKey(7))
    b = init_vqgan_params(SMALL, jax.random.PRNGKey(7))
    c = init_vqgan_params(SMALL, jax.random.PRNGKey(8))
    kernel = ("decoder", "conv_in", "kernel")
    pick = lambda tree: np.asarray(tree[kernel[0]][kernel[1]][kernel[2]])  # noqa: E731
    np.testing.assert_array_equal(pick(a), pick(b))
    assert not np.array_equal(pick(a), pick(c))


def test_upsample_equals_nearest_resize_then_conv():
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    x = jax.random.normal(keys[0], (2, 5, 7, 32))  # non-square, to catch swapped axes
    conv = {"kernel": jax.random.normal(keys[1], (3, 3, 32, 16)), "bias": jax.random.normal(keys[2], (16,))}
    doubled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    expected = jax.lax.conv_general_dilated(
        doubled, conv["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
    np.testing.assert_allclose(np.asarray(vqgan._upsample(x, {"conv": conv})), np.asarray(expected), atol=1e-4)


def test_encode_picks_the_nearest_codebook_entry(params, images):
    indices = np.asarray(encode(params, SMALL, jnp.asarray(images)))
    assert indices.shape == (2, 256) and indices.dtype == np.int32
    # Brute force: distance from every encoded vector to every codebook entry.
    z = vqgan._conv(vqgan._encoder(jnp.asarray(images), params["encoder"], SMALL), params["quant_conv"])
    z = np.asarray(z, np.float64).reshape(2, 256, 1, SMALL.embed_dim)
    book = np.asarray(params["quantize"]["embedding"]["embedding"], np.float64)
    distances = ((z - book) ** 2).sum(-1)
    chosen = np.take_along_axis(distances, indices[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(chosen, distances.min(-1), rtol=1e-4, atol=1e-4)
    assert len(np.unique(indices)) > 1


def test_encode_rejects_wrong_channel_count(params):
    with pytest.raises(ValueError, match="images must have shape"):
        encode_images(params, SMALL, jnp.zeros((1, 256, 256, 4)))
