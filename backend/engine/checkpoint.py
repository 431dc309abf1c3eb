"""Read and write flax's `flax_model.msgpack` format, one leaf at a time.

The format (flax.serialization): a msgpack map of nested maps whose leaves are ext type 1
holding msgpack `(shape, dtype name, raw C-order bytes)`. Leaves over 2**30 bytes are
written as a map `{"__msgpack_chunked_array__": True, "shape": {"0": ..}, "chunks":
{"0": leaf, ..}}` of flat pieces. Reading streams the file: each leaf is checked against the
expected shape from its header before its data is kept, and cast to the wanted dtype as it
arrives, so host memory peaks near the size of the result, not twice the file.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import ml_dtypes
import msgpack
import numpy as np

NDARRAY_EXT = 1
NPSCALAR_EXT = 3
CHUNKED_MARKER = "__msgpack_chunked_array__"
MAX_CHUNK_BYTES = 2**30  # flax's limit; msgpack cannot hold one object over 2**31 - 1 bytes
_MAX_OBJECT_BYTES = 2**31 - 1

DtypeFor = Callable[[str, np.dtype], np.dtype]
_SKIPPED = object()


class CheckpointError(ValueError):
    """The file is not a checkpoint of the expected model (names the first mismatch)."""


def keep_dtype(path: str, stored: np.dtype) -> np.dtype:
    return stored


def cast_floats_to(dtype) -> DtypeFor:
    """Cast every floating-point leaf to `dtype`; integer leaves stay as stored."""
    target = np.dtype(dtype)

    def choose(path: str, stored: np.dtype) -> np.dtype:
        return target if np.issubdtype(stored, np.floating) or stored == ml_dtypes.bfloat16 else stored

    return choose


def _dtype_from_name(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _bin_payload_offset(data: bytes, at: int) -> int:
    """Offset of the raw bytes of the msgpack bin object that starts at `at`."""
    header = data[at]
    sizes = {0xC4: 1, 0xC5: 2, 0xC6: 4}
    if header not in sizes:
        raise CheckpointError("array leaf: its data is not a msgpack bin object")
    return at + 1 + sizes[header]


def _leaf_header(ext: msgpack.ExtType, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, stored dtype, data offset) of an ndarray ext leaf, reading only its header."""
    if ext.code not in (NDARRAY_EXT, NPSCALAR_EXT):
        raise CheckpointError(f"{path}: unsupported msgpack ext type {ext.code}")
    reader = msgpack.Unpacker(io.BytesIO(ext.data), raw=False, read_size=256)
    if reader.read_array_header() != 3:
        raise CheckpointError(f"{path}: malformed array leaf")
    shape = tuple(reader.unpack())
    dtype = _dtype_from_name(reader.unpack())
    return shape, dtype, _bin_payload_offset(ext.data, reader.tell())


class _Reader:
    def __init__(self, stream, expected: Mapping[str, tuple[int, ...]] | None, dtype_for: DtypeFor,
                 keep: Callable[[str], bool]):
        self.unpacker = msgpack.Unpacker(
            stream, raw=False, strict_map_key=False, max_buffer_size=_MAX_OBJECT_BYTES,
            max_bin_len=_MAX_OBJECT_BYTES, max_ext_len=_MAX_OBJECT_BYTES)
        self.expected = expected
        self.dtype_for = dtype_for
        self.keep = keep
        self.seen: set[str] = set()

    def _check(self, path: str, shape: tuple[int, ...]) -> None:
        if self.expected is None:
            return
        if path not in self.expected:
            raise CheckpointError(f"unexpected parameter {path!r} with shape {list(shape)} in the checkpoint")
        if tuple(self.expected[path]) != tuple(shape):
            raise CheckpointError(
                f"parameter {path!r} has shape {list(shape)}, the model config needs {list(self.expected[path])}")

    def _read_map_header(self) -> int | None:
        try:
            return self.unpacker.read_map_header()
        except ValueError:  # not a map: a leaf follows
            return None

    def read_tree(self) -> dict:
        count = self._read_map_header()
        if count is None:
            raise CheckpointError("the file is not a flax msgpack checkpoint (its top level is not a map)")
        tree = self._read_map("", count)
        return {} if tree is _SKIPPED else tree

    def _read_value(self, path: str):
        count = self._read_map_header()
        if count is None:
            return self._read_leaf(path, self.unpacker.unpack())
        return self._read_map(path, count)

    def _read_map(self, path: str, count: int):
        tree: dict = {}
        for index in range(count):
            key = str(self.unpacker.unpack())
            if index == 0 and key == CHUNKED_MARKER:
                return self._read_chunked(path, count)
            value = self._read_value(f"{path}/{key}" if path else key)
            if value is not _SKIPPED:
                tree[key] = value
        return tree if tree or not count else _SKIPPED  # drop maps whose leaves were all skipped

    def _read_chunked(self, path: str, count: int) -> np.ndarray:
        self.unpacker.unpack()  # the marker's value, True
        shape: tuple[int, ...] | None = None
        pieces: list[np.ndarray] = []
        for _ in range(count - 1):
            key = self.unpacker.unpack()
            if key == "shape":
                shape_map = self.unpacker.unpack()
                shape = tuple(shape_map[str(i)] for i in range(len(shape_map)))
                self._check(path, shape)
            elif key == "chunks":
                for _ in range(self.unpacker.read_map_header()):
                    self.unpacker.unpack()  # "0", "1", ...: flax writes them in order
                    pieces.append(self._cast_leaf(path, self.unpacker.unpack(), check_shape=False))
            else:
                raise CheckpointError(f"{path}: unknown key {key!r} in a chunked array")
        if shape is None:
            raise CheckpointError(f"{path}: chunked array without a shape")
        self.seen.add(path)
        flat = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return flat.reshape(shape)

    def _read_leaf(self, path: str, value) -> np.ndarray:
        if not isinstance(value, msgpack.ExtType):
            raise CheckpointError(f"{path}: expected an array, found {type(value).__name__}")
        self.seen.add(path)
        if not self.keep(path):
            self._check(path, _leaf_header(value, path)[0])
            return _SKIPPED
        return self._cast_leaf(path, value, check_shape=True)

    def _cast_leaf(self, path: str, ext: msgpack.ExtType, check_shape: bool) -> np.ndarray:
        shape, stored, offset = _leaf_header(ext, path)
        if check_shape:
            self._check(path, shape)
        # A read-only view of the leaf's bytes: no copy unless a cast is needed, and a cast
        # releases the file's bytes as soon as it is done.
        array = np.frombuffer(ext.data, dtype=stored, offset=offset).reshape(shape)
        wanted = np.dtype(self.dtype_for(path, stored))
        return array.astype(wanted) if wanted != stored else array


def read_checkpoint(path: Path, expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
                    dtype_for: DtypeFor = keep_dtype, keep: Callable[[str], bool] = lambda path: True) -> dict:
    """Load a `flax_model.msgpack` as a nested dict of numpy arrays.

    With `expected_shapes` ({"a/b/kernel": shape}) the tree must match it exactly: the first
    unexpected name or wrong shape (in file order) or missing name (sorted) raises
    CheckpointError naming it. Leaves for which `keep(path)` is false are checked, not kept.
    """
    with open(path, "rb") as stream:
        reader = _Reader(stream, expected_shapes, dtype_for, keep)
        try:
            tree = reader.read_tree()
        except CheckpointError:
            raise
        except (msgpack.UnpackException, ValueError, TypeError) as error:  # truncated, corrupt, bad dtype
            raise CheckpointError(f"{path} is not a readable msgpack checkpoint: {error}") from error
    if expected_shapes is not None:
        missing = sorted(set(expected_shapes) - reader.seen)
        if missing:
            raise CheckpointError(
                f"parameter {missing[0]!r} (shape {list(expected_shapes[missing[0]])}) is missing from "
                f"the checkpoint ({len(missing)} missing)")
    return tree


def flatten_tree(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flatten_tree(value, path)
        else:
            yield path, value


def tree_shapes(tree: Mapping) -> dict[str, tuple[int, ...]]:
    return {path: tuple(np.shape(leaf)) for path, leaf in flatten_tree(tree)}


def _pack_leaf(packer: msgpack.Packer, array: np.ndarray) -> bytes:
    array = np.asarray(array, order="C")  # not ascontiguousarray: it makes a scalar 1-D
    inner = msgpack.packb((list(array.shape), array.dtype.name, array.tobytes()), use_bin_type=True)
    return packer.pack(msgpack.ExtType(NDARRAY_EXT, inner))


def _write_tree(stream, packer: msgpack.Packer, tree: Mapping) -> None:
    stream.write(packer.pack_map_header(len(tree)))
    for key, value in tree.items():
        stream.write(packer.pack(str(key)))
        if isinstance(value, Mapping):
            _write_tree(stream, packer, value)
            continue
        array = np.asarray(value)
        if array.nbytes <= MAX_CHUNK_BYTES:
            stream.write(_pack_leaf(packer, array))
            continue
        per_chunk = max(1, MAX_CHUNK_BYTES // array.dtype.itemsize)
        flat = array.reshape(-1)
        starts = range(0, flat.size, per_chunk)
        stream.write(packer.pack_map_header(3))
        stream.write(packer.pack(CHUNKED_MARKER) + packer.pack(True))
        stream.write(packer.pack("shape") + packer.pack({str(i): n for i, n in enumerate(array.shape)}))
        stream.write(packer.pack("chunks") + packer.pack_map_header(len(starts)))
        for index, start in enumerate(starts):
            stream.write(packer.pack(str(index)))
            stream.write(_pack_leaf(packer, flat[start:start + per_chunk]))


def write_checkpoint(path: Path, tree: Mapping) -> None:
    """Write a nested dict of arrays as flax would, leaf by leaf (atomically: temp file + rename)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    packer = msgpack.Packer(use_bin_type=True)
    with open(partial, "wb") as stream:
        _write_tree(stream, packer, tree)
    partial.replace(path)
