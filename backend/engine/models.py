"""Which model files to load: the published models, a local folder, or the generated tiny one.

Every choice ends as a `ModelFiles`: a DalleBart folder (config.json, flax_model.msgpack,
tokenizer files, optionally enwiki-words-frequency.txt) and a VQGAN folder (config.json,
flax_model.msgpack), so all of them are loaded by the same code.

Published models come from the Hugging Face hub into `<cache_dir>/huggingface`, in the hub
client's cache layout (`download.py`: progress reported, interrupted downloads resume).
`tiny` is a small random model generated deterministically on first use into
`<cache_dir>/tiny/`, in the official file formats, for tests and offline runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from . import checkpoint
from .dallebart import DalleBartConfig, random_params
from .progress import LoadProgress

DALLE_FILES = ("config.json", "flax_model.msgpack", "tokenizer.json", "vocab.json", "merges.txt",
               "tokenizer_config.json", "special_tokens_map.json")
WORD_FREQUENCIES_FILE = "enwiki-words-frequency.txt"  # optional: hashtag splitting
VQGAN_FILES = ("config.json", "flax_model.msgpack")
VQGAN_SUBFOLDER = "vqgan"  # a local model folder may carry its VQGAN here

VQGAN_REPO = "dalle-mini/vqgan_imagenet_f16_16384"
VQGAN_REVISION = "e93a26e7707683d349bf5d5c41c5b0ef69b677a9"


@dataclasses.dataclass(frozen=True)
class PublishedModel:
    repo: str
    revision: str | None  # None: the repository's main branch
    dtype: str  # the dtype the weights are used in, whatever the file stores


# mega is the fp16 W&B artifact mega-1-fp16, which is not on the hub: the hub's dalle-mega
# (mega-1, float32 file) cast to float16 while loading is the same network. A folder holding
# the W&B artifact can be used as a local model.
PUBLISHED_MODELS = {
    "mini": PublishedModel("dalle-mini/dalle-mini", None, "float32"),
    "mega": PublishedModel("dalle-mini/dalle-mega", None, "float16"),
    "mega_full": PublishedModel("dalle-mini/dalle-mega", None, "float16"),
}
TINY = "tiny"
# A small model trained on flat shapes (`python -m training`), shipped in the package.
DEMO = "demo"
DEMO_FOLDER = Path(__file__).resolve().parent / "demo_model"
MODEL_CHOICES = (DEMO, TINY, *PUBLISHED_MODELS)
# The demo upscaler (an SRVGGNetCompact trained on the same shapes, 128 -> 512), in
# Real-ESRGAN's release format.
DEMO_UPSCALER = DEMO_FOLDER / "upscaler" / "demo-x4.pth"


# CLIP, which ranks a job's candidates (clip.py): CLIP_MODEL names one of these, a hub
# repository ("openai/clip-vit-base-patch32"), a folder, or none.
CLIP_FILES = ("config.json", "flax_model.msgpack", "tokenizer.json")
CLIP_NONE = "none"
CLIP_DEMO_SUBFOLDER = "clip"  # the demo model's small CLIP, trained on the same shapes
# Without CLIP_MODEL: the demo's CLIP with the demo (and tiny) model; no ranking with the
# published models unless asked for (their CLIP is a 600 MB download).
CLIP_DEFAULTS = {DEMO: DEMO, TINY: DEMO}


class ModelUnavailableError(RuntimeError):
    """The model's files are neither present nor downloadable; the message says how to provide them."""


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    name: str
    dalle_dir: Path
    vqgan_dir: Path
    dtype: str | None  # None: keep the dtype stored in the file

    @property
    def word_frequencies(self) -> Path | None:
        path = self.dalle_dir / WORD_FREQUENCIES_FILE
        return path if path.is_file() else None


def resolve_model(model: str, cache_dir: Path, progress: LoadProgress | None = None,
                  endpoint: str | None = None) -> ModelFiles:
    """Find (download, or generate) the files of `model`: a name in MODEL_CHOICES or a folder.

    Downloads report to `progress`; `endpoint` is the hub's address (default: HF_ENDPOINT as
    huggingface_hub read it, else huggingface.co).
    """
    cache_dir = Path(cache_dir)
    hub = {"progress": progress, "endpoint": endpoint}
    if model == DEMO:
        return ModelFiles(DEMO, DEMO_FOLDER / "dalle", DEMO_FOLDER / VQGAN_SUBFOLDER, None)
    if model == TINY:
        folder = ensure_tiny_model(cache_dir)
        return ModelFiles(TINY, folder, folder / VQGAN_SUBFOLDER, None)
    if model in PUBLISHED_MODELS:
        published = PUBLISHED_MODELS[model]
        dalle_dir = download(published.repo, published.revision, DALLE_FILES, cache_dir, model,
                             optional=(WORD_FREQUENCIES_FILE,), **hub)
        vqgan_dir = download(VQGAN_REPO, VQGAN_REVISION, VQGAN_FILES, cache_dir, model, **hub)
        return ModelFiles(model, dalle_dir, vqgan_dir, published.dtype)
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ModelUnavailableError(
            f"unknown model {model!r}: use one of {', '.join(MODEL_CHOICES)} or the path of a folder "
            f"holding {', '.join(DALLE_FILES[:2])} and the tokenizer files")
    _require_files(folder, DALLE_FILES[:2], f"model folder {folder}")
    vqgan_dir = folder / VQGAN_SUBFOLDER
    if not vqgan_dir.is_dir():
        vqgan_dir = download(VQGAN_REPO, VQGAN_REVISION, VQGAN_FILES, cache_dir, str(folder), **hub)
    _require_files(vqgan_dir, VQGAN_FILES, f"VQGAN folder {vqgan_dir}")
    return ModelFiles(folder.name, folder, vqgan_dir, None)


def default_clip(model: str) -> str:
    """The CLIP_MODEL used when none is set, for the DalleBart model `model`."""
    return CLIP_DEFAULTS.get(model, CLIP_NONE)


def resolve_clip(choice: str, cache_dir: Path, progress: LoadProgress | None = None,
                 endpoint: str | None = None) -> tuple[str, Path] | None:
    """(name, folder) of the CLIP model `choice`: "demo", "none" (None), a folder, or a hub
    repository "<org>/<name>[@revision]" (downloaded like the DalleBart models)."""
    choice = choice.strip()
    if choice.lower() in (CLIP_NONE, ""):
        return None
    if choice == DEMO:
        return DEMO, DEMO_FOLDER / CLIP_DEMO_SUBFOLDER
    folder = Path(choice).expanduser()
    if folder.is_dir():
        _require_files(folder, CLIP_FILES, f"CLIP folder {folder}")
        return folder.name, folder
    repo, _, revision = choice.partition("@")
    if repo.count("/") != 1 or choice.startswith((".", "/", "~")):
        raise ModelUnavailableError(
            f"unknown CLIP model {choice!r}: use demo, none, a Hugging Face repository such as "
            f"openai/clip-vit-base-patch32, or the path of a folder holding {', '.join(CLIP_FILES)}")
    folder = download(repo, revision or None, CLIP_FILES, cache_dir, choice, progress=progress, endpoint=endpoint,
                      setting="CLIP_MODEL")
    return choice, folder


def _require_files(folder: Path, names, what: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise ModelUnavailableError(f"{what} lacks {', '.join(missing)}")


# How a setting takes files copied by hand, as a download's error says it (a folder, but for these).
_FOLDER_COPY = (f"put them in a folder (the VQGAN's in its '{VQGAN_SUBFOLDER}/' subfolder) and set {{setting}} "
                f"to that folder")
_LOCAL_COPY = {"UPSCALE_MODEL": "set {setting} to the path of the file"}


def download(repo: str, revision: str | None, files, cache_dir: Path, model: str, optional=(),
             progress: LoadProgress | None = None, endpoint: str | None = None,
             setting: str = "DALLE_MODEL") -> Path:
    """The folder of `repo` at `revision` in the cache with `files`, downloading what is missing."""
    from .download import DownloadError, download_repo

    hub_cache = Path(cache_dir) / "huggingface"
    at = f"{repo}@{revision or 'main'}"
    try:
        folder = download_repo(repo, revision, files, hub_cache, optional=optional, progress=progress,
                               endpoint=endpoint)
    except Exception as error:  # offline, unknown repo, HTTP or disk errors: all say the same to a user
        reason = str(error) if isinstance(error, DownloadError) else f"{type(error).__name__}: {error}"
        raise ModelUnavailableError(
            f"model {model!r} needs {', '.join(files)} from the Hugging Face repository {at}, which are "
            f"not in {hub_cache} and could not be downloaded: {reason}. "
            f"Connect this machine to the internet once (the files stay in MODEL_CACHE_DIR; an "
            f"interrupted download resumes), put the files in the cache with `hf download` (see "
            f"docs/engine.md), or {_LOCAL_COPY.get(setting, _FOLDER_COPY).format(setting=setting)}."
        ) from error
    _require_files(folder, files, f"the download of {at}")
    return folder


# ---------------------------------------------------------------- the tiny model

TINY_SEED = 20240601
TINY_TEXT_VOCAB = 1024
TINY_WEIGHT_STD = 0.25  # large enough that logits are spread, so greedy choices are clear


def tiny_dalle_config(encoder_vocab_size: int) -> DalleBartConfig:
    return DalleBartConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        encoder_vocab_size=encoder_vocab_size, image_vocab_size=1024,
        decoder_start_token_id=1024, pad_token_id=1025)


def tiny_vqgan_config():
    from .vqgan import VQGANConfig

    # Same resolutions as the real one (256 px from 16×16 codes), far fewer channels.
    return VQGANConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(16,),
                       z_channels=32, embed_dim=32, n_embed=1024, resolution=256)


def ensure_tiny_model(cache_dir: Path) -> Path:
    """`<cache_dir>/tiny/`, generated on first use (atomically: concurrent callers are safe)."""
    folder = Path(cache_dir) / TINY
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = folder.parent / f".{TINY}-{uuid.uuid4().hex}"
    try:
        write_tiny_model(building)
        try:
            os.rename(building, folder)
        except OSError:  # another process finished first; its files are identical
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def write_tiny_model(folder: Path) -> None:
    """Write the tiny model's files, byte for byte the same on every run."""
    import jax

    from .tiny_captions import write_small_tokenizer
    from .tokenizer import TextTokenizer
    from .vqgan import init_vqgan_params

    folder.mkdir(parents=True)
    write_small_tokenizer(folder, vocab_size=TINY_TEXT_VOCAB)
    vocab_size = TextTokenizer.from_folder(folder).vocab_size
    config = tiny_dalle_config(vocab_size)
    _write_json(folder / "config.json", config.to_dict())
    params = random_params(config, TINY_SEED, std=TINY_WEIGHT_STD)
    checkpoint.write_checkpoint(folder / "flax_model.msgpack", params)

    vqgan_dir = folder / VQGAN_SUBFOLDER
    vqgan_dir.mkdir()
    vqgan_config = tiny_vqgan_config()
    _write_json(vqgan_dir / "config.json", vqgan_config.to_dict())
    with jax.default_device(jax.devices("cpu")[0]):
        vqgan_params = init_vqgan_params(vqgan_config, jax.random.PRNGKey(TINY_SEED))
    checkpoint.write_checkpoint(vqgan_dir / "flax_model.msgpack",
                                jax.tree_util.tree_map(np.asarray, vqgan_params))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
