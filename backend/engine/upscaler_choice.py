"""Which upscaler file UPSCALE_MODEL names: the demo's, a published model's or any file of the
Hugging Face hub (downloaded into the model cache as the DalleBart models are: `download.py`,
progress, resume), or a file's path. Importing it is cheap (no JAX): the backend's settings check
a name with it before anything loads."""
from __future__ import annotations

import dataclasses
from pathlib import Path

DEMO = "demo"
NONE = "none"
FILE_SUFFIX = ".pth"


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face hub repository."""

    repo: str
    name: str
    revision: str | None = None  # None: the repository's main branch


# The published upscalers (esrgan.PUBLISHED, the shapes each must have) by name: the hub file
# holding the official release `.pth` of xinntao/Real-ESRGAN (BSD-3-Clause), unchanged.
PUBLISHED = {
    "realesr-general-x4v3": HubFile("ai-forever/Real-ESRGAN", "realesr-general-x4v3.pth"),
    "RealESRGAN_x4plus": HubFile("nateraw/real-esrgan", "RealESRGAN_x4plus.pth"),
    "RealESRGAN_x2plus": HubFile("nateraw/real-esrgan", "RealESRGAN_x2plus.pth"),
}


def choice_error(choice: str) -> str | None:
    """Why `choice` can name no upscaler (None when it can): a bare name must be demo, none or
    a published one; anything with a "/" or ending .pth is a file's path or a hub file."""
    if choice in (DEMO, NONE, *PUBLISHED) or "/" in choice or choice.endswith(FILE_SUFFIX):
        return None
    return (f"unknown upscaler {choice!r}: use {DEMO}, {NONE}, one of {', '.join(PUBLISHED)} (downloaded from "
            f"the Hugging Face hub), a hub file as <org>/<repo>/<file>{FILE_SUFFIX}, or the path of a release "
            f"{FILE_SUFFIX} file")


def hub_file(choice: str) -> HubFile | None:
    """The hub file `choice` names: a published name, or "<org>/<repo>/<file>.pth" that is not
    a file here (a path that is a file wins); None for a file's path (or demo)."""
    if choice in PUBLISHED:
        return PUBLISHED[choice]
    parts = choice.split("/")
    if len(parts) == 3 and all(parts) and choice.endswith(FILE_SUFFIX) and not choice.startswith((".", "~")) \
            and not Path(choice).is_file():
        return HubFile(f"{parts[0]}/{parts[1]}", parts[2])
    return None


def resolve_upscaler(choice: str, cache_dir: Path, progress=None, endpoint: str | None = None
                     ) -> tuple[Path | str, str | None]:
    """(the file, or "demo"; the published name whose shapes it must have, or None) of
    `choice`, downloading a hub file into `cache_dir` (progress into `progress`, a LoadProgress;
    `endpoint`: the hub's address). ModelUnavailableError when it is none of the choices, or its
    download fails."""
    from backend.engine.models import ModelUnavailableError, download

    error = choice_error(choice)
    if error is not None:
        raise ModelUnavailableError(error)
    if choice == DEMO:
        return DEMO, None
    found = hub_file(choice)
    if found is None:
        return Path(choice).expanduser(), None
    folder = download(found.repo, found.revision, (found.name,), cache_dir, choice, progress=progress,
                      endpoint=endpoint, setting="UPSCALE_MODEL")
    return folder / found.name, choice if choice in PUBLISHED else None
