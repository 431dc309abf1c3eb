"""Read (and write) the tensors of a PyTorch `.pth` file without torch, and without running its pickle.

`torch.save` writes a zip archive: `<folder>/data.pkl` pickles the saved object, and every
tensor's storage lies raw in `<folder>/data/<key>` (little-endian, as `<folder>/byteorder`
says when present). The pickle names torch's rebuild functions; unpickling it with the real
ones would run whatever a hostile file names (`os.system` and the like), so it is read by an
unpickler that knows only the few names a file of tensors needs, and builds numpy arrays
instead. Anything else is refused with `CheckpointError`. `write_state_dict` writes the same
format (what `torch.save({"params": state_dict})` writes), for the networks we train ourselves.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError

# Storage classes as `torch.save` names them, and the numpy type of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for `torch.<Name>Storage` in the pickle: only its element type matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_ignored) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2: a strided view of a flat storage, copied out."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise CheckpointError(f"tensor with a malformed layout (size {size}, stride {stride})")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise CheckpointError(f"tensor of size {size} reaches past the end of its storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride))
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, requires_grad, backward_hooks, *_ignored) -> np.ndarray:
    """torch._utils._rebuild_parameter: a Parameter is its tensor."""
    return data


# What each allowed name stands for, made afresh at each look-up: a pickle can set attributes
# on what it looked up (BUILD), and that must not outlive the file.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: lambda *args: _rebuild_tensor(*args),
    ("torch._utils", "_rebuild_parameter"): lambda: lambda *args: _rebuild_parameter(*args),
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # a built-in type: immutable
    **{("torch", name): (lambda name=name: _StorageType(name)) for name in _STORAGE_DTYPES},
}


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, folder: str, byteorder: str):
        super().__init__(file)
        self.archive, self.folder, self.byteorder = archive, folder, byteorder
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise CheckpointError(
                f"refused: the file's pickle names {module}.{name}, which is not part of a file of tensors")
        return _ALLOWED[(module, name)]()

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise CheckpointError(f"refused: unknown persistent id in the pickle: {pid!r:.80}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.folder}/data/{key}")
            except KeyError:
                raise CheckpointError(f"storage {key} is missing from the archive") from None
            dtype = storage_type.dtype.newbyteorder("<" if self.byteorder == "little" else ">")
            if len(raw) != numel * dtype.itemsize:
                raise CheckpointError(f"storage {key} holds {len(raw)} bytes, not {numel} {storage_type.name} elements")
            self.storages[key] = np.frombuffer(raw, dtype).astype(storage_type.dtype)
        return self.storages[key]


def read_torch_file(path: Path | str) -> object:
    """The object a `torch.save` zip archive holds, its tensors as numpy arrays."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path.name}: not a PyTorch zip archive ({error})") from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path.name}: not a PyTorch zip archive (no single <folder>/data.pkl)")
        folder = pickles[0].split("/")[0]
        byteorder = "little"
        if f"{folder}/byteorder" in archive.namelist():
            byteorder = archive.read(f"{folder}/byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path.name}: unknown byte order {byteorder!r}")
        with archive.open(pickles[0]) as stream:
            try:
                return _TensorUnpickler(stream, archive, folder, byteorder).load()
            except CheckpointError as error:
                raise CheckpointError(f"{path.name}: {error}") from None
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as error:
                raise CheckpointError(f"{path.name}: malformed pickle ({type(error).__name__}: {error})") from None


def read_state_dict(path: Path | str, keys=("params_ema", "params")) -> dict[str, np.ndarray]:
    """The parameters of a training checkpoint: the dict under the first of `keys` present
    (Real-ESRGAN's releases hold `params_ema`, the averaged weights, or `params`), or the file's
    dict itself when it is already a plain name -> tensor mapping."""
    name = Path(path).name
    saved = read_torch_file(path)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{name}: holds a {type(saved).__name__}, not a dict of tensors")
    for key in keys:
        if key in saved:
            saved = saved[key]
            break
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in saved.items()):
        raise CheckpointError(f"{name}: expected a dict of named tensors (under one of {', '.join(keys)})")
    return dict(saved)


class _Global:
    """A name the written pickle refers to (torch's rebuild function, a storage class)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only writes what is callable as a REDUCE
        raise TypeError(f"{self.module}.{self.name} is a name in a written pickle, not a function here")


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        shape = self.storage.array.shape
        strides = tuple(s // self.storage.array.itemsize for s in self.storage.array.strides)
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, 0, shape, strides, False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):
    """Writes `_Global`s as pickle GLOBALs (no module of that name need exist here) and each
    storage as a persistent id, as torch.save does."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_torch_global(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_Global] = save_torch_global

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.array.size)
        return None


def write_state_dict(path: Path | str, state: dict[str, np.ndarray], key: str = "params") -> None:
    """Save `{key: state}` as a float32 torch zip archive that torch.load and `read_state_dict` read."""
    path = Path(path)
    folder = path.stem
    storages = {name: _Storage(str(i), np.ascontiguousarray(array, dtype="<f4"))
                for i, (name, array) in enumerate(state.items())}
    payload = io.BytesIO()
    _TorchPickler(payload, protocol=2).dump(
        {key: collections.OrderedDict((name, _Tensor(storage)) for name, storage in storages.items())})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{folder}/data.pkl", payload.getvalue())
        archive.writestr(f"{folder}/byteorder", "little")
        for storage in storages.values():
            archive.writestr(f"{folder}/data/{storage.key}", storage.array.tobytes())
        archive.writestr(f"{folder}/version", "3\n")
