"""The torch-free `.pth` reader: real `torch.save` files read exactly, hostile or broken ones
refused with an error that names the problem, and nothing in a hostile pickle ever run."""
from __future__ import annotations

import collections
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from backend.engine import esrgan
from backend.engine.checkpoint import CheckpointError
from backend.engine.torch_checkpoint import read_state_dict, read_torch_file, write_state_dict
from backend.engine.upscaler import load_upscaler
from reference_data import DATA

REFERENCE = DATA / "reference_upscaler"
SRVGG = REFERENCE / "srvgg_x4.pth"


def _with_pickle(tmp_path, payload: bytes, source=SRVGG):
    """A copy of a real torch file whose data.pkl is `payload`."""
    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as crafted:
        for entry in original.infolist():
            data = payload if entry.filename.endswith("/data.pkl") else original.read(entry)
            crafted.writestr(entry, data)
    return path


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_real_torch_file_reads_as_its_tensors():
    state = read_state_dict(SRVGG)
    config = json.loads((REFERENCE / "inputs.json").read_text())["models"]["srvgg_x4"]
    assert set(state) == set(esrgan.expected_shapes(esrgan.SRVGGConfig(config["num_feat"], config["num_conv"])))
    assert state["body.0.weight"].shape == (16, 3, 3, 3) and state["body.0.weight"].dtype == np.float32
    assert np.isfinite(state["body.0.weight"]).all() and np.abs(state["body.0.weight"]).max() > 0.01


def test_the_weights_are_found_under_params_ema_or_params():
    assert list(read_torch_file(SRVGG)) == ["params_ema"]
    assert list(read_torch_file(REFERENCE / "broken_shape.pth")) == ["params"]
    assert read_state_dict(REFERENCE / "broken_shape.pth")["body.3.weight"].shape == (15,)


@pytest.mark.parametrize("hostile", ["reduce", "global"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, hostile):
    marker = tmp_path / "ran"
    if hostile == "reduce":
        payload = pickle.dumps({"params_ema": _RunsACommand(marker)}, protocol=2)
    else:  # a bare reference to a callable outside the allowed few
        payload = pickle.dumps({"params_ema": {"x": print}}, protocol=2)
    path = _with_pickle(tmp_path, payload)
    name = "system" if hostile == "reduce" else "print"
    with pytest.raises(CheckpointError, match=rf"crafted\.pth: refused: .*{name}.*not part of a file of tensors"):
        read_state_dict(path)
    assert not marker.exists()


def test_what_a_pickle_does_to_the_names_it_looks_up_stays_in_that_file(tmp_path):
    # GLOBAL torch.FloatStorage, then BUILD {"dtype": "x"} on it: sets an attribute.
    path = _with_pickle(tmp_path, b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00xsb.")
    with pytest.raises(CheckpointError, match=r"holds a _StorageType, not a dict of tensors"):
        read_state_dict(path)
    assert read_state_dict(SRVGG)["body.0.weight"].dtype == np.float32


def test_a_storage_missing_from_the_archive_is_named(tmp_path):
    path = tmp_path / "partial.pth"
    with zipfile.ZipFile(SRVGG) as original, zipfile.ZipFile(path, "w") as partial:
        for entry in original.infolist():
            if not entry.filename.endswith("/data/3"):
                partial.writestr(entry, original.read(entry))
    with pytest.raises(CheckpointError, match=r"storage 3 is missing"):
        read_state_dict(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    # Protocol-2 pickle of {"w": _rebuild_tensor_v2(<storage 0 of 4 floats>, 0, (8,), (1,), False, {})}
    # written by hand: a persistent id, then the rebuild call.
    payload = (b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n("
               + b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
               + b"K\x00K\x08\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs.")
    path = tmp_path / "strided.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("strided/data.pkl", payload)
        archive.writestr("strided/data/0", np.arange(4, dtype="<f4").tobytes())
    with pytest.raises(CheckpointError, match=r"size \(8,\) reaches past the end of its storage"):
        read_torch_file(path)


def test_the_same_hand_written_tensor_within_its_storage_reads(tmp_path):
    payload = (b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n("
               + b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ"
               + b"K\x01K\x02K\x02\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)RtRs.")
    path = tmp_path / "strided.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("strided/data.pkl", payload)
        archive.writestr("strided/data/0", np.arange(6, dtype="<f4").tobytes())
    # offset 1, size (2, 2), stride (3, 1): rows [1, 2] and [4, 5]
    np.testing.assert_array_equal(read_torch_file(path)["w"], [[1, 2], [4, 5]])


def test_not_a_zip_archive_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(collections.OrderedDict(w=1)))
    with pytest.raises(CheckpointError, match=r"legacy\.pth: not a PyTorch zip archive"):
        read_state_dict(path)


def test_a_missing_tensor_is_named():
    with pytest.raises(CheckpointError, match=r"broken_missing\.pth: body\.4\.bias: missing"):
        load_upscaler(REFERENCE / "broken_missing.pth")


def test_a_wrongly_shaped_tensor_is_named():
    with pytest.raises(CheckpointError, match=r"broken_shape\.pth: body\.3\.weight: shape \(15,\), expected \(16,\)"):
        load_upscaler(REFERENCE / "broken_shape.pth")


def test_a_file_of_another_configuration_than_expected_is_refused():
    with pytest.raises(CheckpointError, match=r"srvgg_x4\.pth: body\.0\.weight: shape \(16, 3, 3, 3\), expected \(64, 3, 3, 3\)"):
        load_upscaler(SRVGG, expected=esrgan.PUBLISHED["realesr-general-x4v3"])
    with pytest.raises(CheckpointError, match=r"srvgg_x4\.pth: conv_first\.weight: missing"):
        load_upscaler(SRVGG, expected=esrgan.PUBLISHED["RealESRGAN_x4plus"])


def test_what_write_state_dict_writes_reads_back_exactly(tmp_path):
    """(That torch.load reads it too was checked once, in the reference venv; the official
    file's layout is what the reader is tested on above.)"""
    state = {"a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "a.bias": np.float32([1.5, -2])}
    write_state_dict(tmp_path / "ours.pth", state)
    assert list(read_torch_file(tmp_path / "ours.pth")) == ["params"]
    back = read_state_dict(tmp_path / "ours.pth")
    assert list(back) == list(state)
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])


def test_to_state_dict_undoes_to_params():
    state = read_state_dict(SRVGG)
    config = esrgan.infer_config(state)
    again = esrgan.to_state_dict(esrgan.to_params(state, config), config)
    assert list(again) == list(esrgan.expected_shapes(config))
    for name in state:
        np.testing.assert_array_equal(again[name], state[name])
