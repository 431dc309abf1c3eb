"""The flax msgpack reader/writer: compatible with flax itself both ways, chunked leaves,
leaf-by-leaf casting, bounded host memory, and clear errors for checkpoints that do not fit."""
from __future__ import annotations

import tracemalloc

import ml_dtypes
import msgpack
import numpy as np
import pytest

from backend.engine import checkpoint
from backend.engine.checkpoint import (
    CheckpointError,
    read_checkpoint,
    tree_shapes,
    write_checkpoint,
)

serialization = pytest.importorskip("flax.serialization")


def sample_tree():
    rng = np.random.default_rng(0)
    return {
        "lm_head": {"kernel": rng.standard_normal((8, 12), dtype=np.float32)},
        "model": {
            "encoder": {"embed": rng.standard_normal((5, 8)).astype(np.float16),
                        "ln": {"bias": rng.standard_normal(8).astype(ml_dtypes.bfloat16)}},
            "decoder": {"layers": {"stack": {"kernel": rng.standard_normal((2, 8, 8), dtype=np.float32)}},
                        "steps": np.arange(6, dtype=np.int32).reshape(2, 3)},
        },
    }


def assert_trees_equal(left, right):
    assert tree_shapes(left) == tree_shapes(right)
    flat_right = dict(checkpoint.flatten_tree(right))
    for path, leaf in checkpoint.flatten_tree(left):
        other = np.asarray(flat_right[path])
        assert np.asarray(leaf).dtype == other.dtype, path
        np.testing.assert_array_equal(np.asarray(leaf), other, err_msg=path)


def test_reads_what_flax_writes(tmp_path):
    tree = sample_tree()
    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(serialization.to_bytes(tree))
    assert_trees_equal(read_checkpoint(path), tree)


def test_flax_reads_what_we_write(tmp_path):
    tree = sample_tree()
    path = tmp_path / "flax_model.msgpack"
    write_checkpoint(path, tree)
    assert_trees_equal(serialization.msgpack_restore(path.read_bytes()), tree)
    assert path.read_bytes() == serialization.to_bytes(tree)  # byte for byte the same format


def test_chunked_leaves_both_ways(tmp_path, monkeypatch):
    # Lower both sides' chunk limit so a small array takes flax's chunked encoding.
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 64)
    monkeypatch.setattr(checkpoint, "MAX_CHUNK_BYTES", 64)
    tree = {"big": {"kernel": np.arange(3 * 50, dtype=np.float32).reshape(3, 50)},
            "small": np.ones(4, np.float32)}
    flax_file = tmp_path / "flax.msgpack"
    flax_file.write_bytes(serialization.to_bytes(tree))
    ours = tmp_path / "ours.msgpack"
    write_checkpoint(ours, tree)
    assert ours.read_bytes() == flax_file.read_bytes()
    expected = {"big/kernel": (3, 50), "small": (4,)}
    restored = read_checkpoint(flax_file, expected, checkpoint.cast_floats_to(np.float16))
    assert restored["big"]["kernel"].dtype == np.float16
    np.testing.assert_array_equal(restored["big"]["kernel"], tree["big"]["kernel"].astype(np.float16))
    bad = {"big/kernel": (50, 3), "small": (4,)}
    with pytest.raises(CheckpointError, match=r"'big/kernel' has shape \[3, 50\].*\[50, 3\]"):
        read_checkpoint(flax_file, bad)


def test_casts_floats_only(tmp_path):
    path = tmp_path / "m.msgpack"
    write_checkpoint(path, sample_tree())
    restored = read_checkpoint(path, dtype_for=checkpoint.cast_floats_to("float16"))
    dtypes = {p: leaf.dtype for p, leaf in checkpoint.flatten_tree(restored)}
    assert dtypes.pop("model/decoder/steps") == np.int32
    assert set(dtypes.values()) == {np.dtype(np.float16)}


def test_mismatches_name_the_first_offending_path(tmp_path):
    tree = sample_tree()
    path = tmp_path / "m.msgpack"
    write_checkpoint(path, tree)
    expected = tree_shapes(tree)
    assert tree_shapes(read_checkpoint(path, expected)) == expected

    wrong_shape = dict(expected, **{"model/encoder/embed": (5, 9)})
    with pytest.raises(CheckpointError, match=r"'model/encoder/embed' has shape \[5, 8\].*needs \[5, 9\]"):
        read_checkpoint(path, wrong_shape)

    renamed = {("model/encoder/embedding" if p == "model/encoder/embed" else p): s for p, s in expected.items()}
    with pytest.raises(CheckpointError, match=r"unexpected parameter 'model/encoder/embed'"):
        read_checkpoint(path, renamed)

    extra = dict(expected, **{"model/decoder/final_ln/bias": (8,), "model/a/b": (1,)})
    with pytest.raises(CheckpointError, match=r"'model/a/b' \(shape \[1\]\) is missing.*2 missing"):
        read_checkpoint(path, extra)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.msgpack"
    path.write_bytes(b"\x93\x01\x02\x03")  # a msgpack array, not a map
    with pytest.raises(CheckpointError, match="not a flax msgpack checkpoint"):
        read_checkpoint(path)
    path.write_bytes(serialization.to_bytes({"a": np.ones(100, np.float32)})[:-50])
    with pytest.raises(CheckpointError, match="not a readable msgpack checkpoint"):
        read_checkpoint(path)
    packer = msgpack.Packer(use_bin_type=True)
    odd_dtype = packer.pack({"a": msgpack.ExtType(1, msgpack.packb(([2], "float99", b"12345678")))})
    path.write_bytes(odd_dtype)
    with pytest.raises(CheckpointError, match="not a readable msgpack checkpoint"):
        read_checkpoint(path)
    short_data = packer.pack({"a": msgpack.ExtType(1, msgpack.packb(([4], "float32", b"1234"), use_bin_type=True))})
    path.write_bytes(short_data)
    with pytest.raises(CheckpointError, match="not a readable msgpack checkpoint"):
        read_checkpoint(path)


def test_skipped_leaves_are_checked_not_kept(tmp_path):
    path = tmp_path / "m.msgpack"
    write_checkpoint(path, sample_tree())
    restored = read_checkpoint(path, tree_shapes(sample_tree()), keep=lambda p: not p.startswith("model/"))
    assert list(restored) == ["lm_head"]


def test_host_memory_stays_near_the_result(tmp_path):
    leaves, leaf_bytes = 12, 4 * 2**20
    tree = {f"layer_{i}": {"kernel": np.full(leaf_bytes // 4, i, np.float32)} for i in range(leaves)}
    path = tmp_path / "big.msgpack"
    write_checkpoint(path, tree)
    del tree
    file_bytes = path.stat().st_size
    tracemalloc.start()
    try:
        restored = read_checkpoint(path, dtype_for=checkpoint.cast_floats_to(np.float16))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result_bytes = sum(leaf.nbytes for _, leaf in checkpoint.flatten_tree(restored))
    assert result_bytes == leaves * leaf_bytes // 2
    # Reading the whole file first (as flax does) would need file + result; we need the
    # result plus a few leaves in flight.
    assert peak < result_bytes + 4 * leaf_bytes, (peak, result_bytes, file_bytes)
    assert peak < file_bytes
