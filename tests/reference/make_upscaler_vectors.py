"""Write tests/data/reference_upscaler/: small random Real-ESRGAN networks made, saved and run
by the official code, for tests/test_upscaler_reference.py; and the tensor shapes of the
three published models, for tests/test_upscaler.py.

This script never runs in the project's environment: it needs torch, in a virtual environment
of its own, kept outside the repository. It was run with Python 3.11 and

    python3.11 -m venv "$ESRGANREFVENV"
    "$ESRGANREFVENV/bin/pip" install torch numpy      # -> torch 2.14.1, numpy 2.4.6
    "$ESRGANREFVENV/bin/python" tests/reference/make_upscaler_vectors.py    # from the repository root

The official code is not installed (basicsr's setup needs torch and its import pulls in
torchvision, cv2 and more): the script downloads the two pinned release archives from PyPI,
checks their sha256, and runs these files from them as they are, with stand-ins only for the
imports they do not use (the arch registry, torchvision, the deformable-conv ops, cv2, the
download helper):

    basicsr 1.4.2      basicsr/archs/rrdbnet_arch.py, basicsr/archs/arch_util.py
    realesrgan 0.3.0   realesrgan/archs/srvgg_arch.py, realesrgan/utils.py (RealESRGANer)

What is written, all float32 on the CPU:
  <model>.pth        `torch.save({"params_ema": state_dict})`, as the releases are saved, of
                     small random networks: SRVGGNetCompact (num_feat 16, num_conv 4, x4),
                     RRDBNet x4 (2 blocks, num_feat 16, num_grow_ch 8) and x2 (1 block)
  broken_missing.pth, broken_shape.pth
                     the SRVGG one less a tensor, and with a tensor of the wrong shape
  vectors.npz        per model: the pictures through the network alone (`<model>/net/<i>`), one
                     picture through RealESRGANer whole (`<model>/whole`) and in tiles
                     (`<model>/tiled`), pre-padded, unclipped
  inputs.json        picture sizes, tiling, the published shapes, versions

Weights are drawn at random at a scale that keeps activations near 1 (PReLU slopes too; the
modules' own initialisation would zero the biases and hide a bias used wrongly).
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import types
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data"
OUT = DATA / "reference_upscaler"
SEED = 5
SOURCES = {
    "basicsr": ("https://files.pythonhosted.org/packages/86/41/00a6b000f222f0fa4c6d9e1d6dcc9811a374cabb8abb9d408b77de39648c/"
                "basicsr-1.4.2.tar.gz", "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"),
    "realesrgan": ("https://files.pythonhosted.org/packages/b2/3e/e2f79917a04991b9237df264f7abab2b58cf94748e7acfb6677b55232ca1/"
                   "realesrgan-0.3.0-py3-none-any.whl", "59336c16c30dd5130eff350dd27424acb9b7281d18a6810130e265606c9a6088"),
}
PICTURES = [(16, 16), (12, 20), (10, 14)]  # (height, width): square, wide, tall-ish; even for x2
TILED_PICTURE = (21, 30)  # odd height: the x2 model's extra reflection; several tiles
TILE, TILE_PAD, PRE_PAD = 12, 10, 10
MODELS = {  # name: (module, constructor arguments)
    "srvgg_x4": ("SRVGGNetCompact", dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4, act_type="prelu")),
    "rrdb_x4": ("RRDBNet", dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=16, num_block=2, num_grow_ch=8)),
    "rrdb_x2": ("RRDBNet", dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=16, num_block=1, num_grow_ch=8)),
}
PUBLISHED = {
    "realesr-general-x4v3": ("SRVGGNetCompact", dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu")),
    "RealESRGAN_x4plus": ("RRDBNet", dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)),
    "RealESRGAN_x2plus": ("RRDBNet", dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=64, num_block=23, num_grow_ch=32)),
}


def _download(name: str) -> bytes:
    url, sha256 = SOURCES[name]
    data = urllib.request.urlopen(url, timeout=120).read()
    if hashlib.sha256(data).hexdigest() != sha256:
        sys.exit(f"{url}: sha256 mismatch")
    return data


def _module(name: str, source: str | None = None, **names) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(names)
    sys.modules[name] = module
    if source is not None:
        exec(compile(source, name, "exec"), module.__dict__)
    return module


class _Registry:
    def register(self):
        return lambda cls: cls


def load_official_code() -> types.SimpleNamespace:
    basicsr = tarfile.open(fileobj=io.BytesIO(_download("basicsr")))
    wheel = zipfile.ZipFile(io.BytesIO(_download("realesrgan")))

    def from_basicsr(path):
        return basicsr.extractfile(f"basicsr-1.4.2/{path}").read().decode()

    # Stand-ins for what the four files import but do not use here.
    _module("torchvision", __version__="0.0")
    _module("cv2")
    _module("basicsr", __path__=[])
    _module("basicsr.archs", __path__=[])
    _module("basicsr.ops", __path__=[])
    _module("basicsr.ops.dcn", ModulatedDeformConvPack=torch.nn.Module, modulated_deform_conv=None)
    _module("basicsr.utils", __path__=[], get_root_logger=None)
    _module("basicsr.utils.registry", ARCH_REGISTRY=_Registry())
    _module("basicsr.utils.download_util", load_file_from_url=None)
    _module("basicsr.archs.arch_util", from_basicsr("basicsr/archs/arch_util.py"))
    rrdb = _module("basicsr.archs.rrdbnet_arch", from_basicsr("basicsr/archs/rrdbnet_arch.py"), __package__="basicsr.archs")
    srvgg = _module("realesrgan_srvgg_arch", wheel.read("realesrgan/archs/srvgg_arch.py").decode())
    utils = _module("realesrgan_utils", wheel.read("realesrgan/utils.py").decode(), __file__="realesrgan/utils.py")
    return types.SimpleNamespace(RRDBNet=rrdb.RRDBNet, SRVGGNetCompact=srvgg.SRVGGNetCompact,
                                 RealESRGANer=utils.RealESRGANer)


def randomise(net: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.ndim == 4:  # conv: keep each layer's output near the scale of its input
                fan_in = tensor.shape[1] * tensor.shape[2] * tensor.shape[3]
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5)
            elif name.endswith(".bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            else:  # PReLU slopes
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5)
    return net.state_dict()


def run_pipeline(official, net, path: Path, scale: int, picture: np.ndarray, tile: int) -> np.ndarray:
    """RealESRGANer's own steps, from the release file, short of clipping and rounding."""
    upsampler = official.RealESRGANer(scale=scale, model_path=str(path), model=net, tile=tile,
                                      tile_pad=TILE_PAD, pre_pad=PRE_PAD, half=False, device=torch.device("cpu"))
    with torch.no_grad():
        upsampler.pre_process(picture)
        if tile:
            upsampler.tile_process()
        else:
            upsampler.process()
        out = upsampler.post_process()
    return out[0].permute(1, 2, 0).numpy()


def main() -> None:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    official = load_official_code()
    vectors: dict[str, np.ndarray] = {}
    for i, (height, width) in enumerate(PICTURES):
        vectors[f"picture/{i}"] = rng.random((height, width, 3), dtype=np.float32)
    vectors["picture/tiled"] = rng.random((*TILED_PICTURE, 3), dtype=np.float32)

    for name, (module, arguments) in MODELS.items():
        net = getattr(official, module)(**arguments).eval()
        state = randomise(net, generator)
        path = OUT / f"{name}.pth"
        torch.save({"params_ema": state}, path)
        scale = arguments.get("upscale", arguments.get("scale"))
        with torch.no_grad():
            for i in range(len(PICTURES)):
                x = torch.from_numpy(vectors[f"picture/{i}"]).permute(2, 0, 1)[None]
                vectors[f"{name}/net/{i}"] = net(x)[0].permute(1, 2, 0).numpy()
        for tile, key in ((0, "whole"), (TILE, "tiled")):
            vectors[f"{name}/{key}"] = run_pipeline(official, net, path, scale, vectors["picture/tiled"], tile)
        if name == "srvgg_x4":
            missing = dict(state)
            del missing["body.4.bias"]
            torch.save({"params_ema": missing}, OUT / "broken_missing.pth")
            wrong = dict(state)
            wrong["body.3.weight"] = wrong["body.3.weight"][:-1]
            torch.save({"params": wrong}, OUT / "broken_shape.pth")

    published = {name: {key: list(t.shape) for key, t in getattr(official, module)(**arguments).state_dict().items()}
                 for name, (module, arguments) in PUBLISHED.items()}
    np.savez_compressed(OUT / "vectors.npz", **vectors)
    versions = {"torch": torch.__version__, "numpy": np.__version__, "basicsr": "1.4.2", "realesrgan": "0.3.0"}
    (OUT / "inputs.json").write_text(json.dumps(
        {"pictures": PICTURES, "tiled_picture": TILED_PICTURE, "tile": TILE, "tile_pad": TILE_PAD,
         "pre_pad": PRE_PAD, "models": {name: arguments for name, (_, arguments) in MODELS.items()},
         "published_shapes": published, "seed": SEED, "versions": versions}) + "\n", encoding="utf-8")
    print("wrote", OUT, versions)


if __name__ == "__main__":
    main()
