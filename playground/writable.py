"""Every service checks at start that it can really write where it must.

A host folder bound as the library or the model cache may belong to someone else (created by
Docker as root, or owned by the user's uid 1000 while the image runs as 10001). Finding that out
after a generation, when the PNGs cannot be saved, loses the work; so each service creates and
deletes a file there first and, when it cannot, stops with one line that names the folder, the
setting, the host side when known and the command that fixes it.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path


def host_side(variable: str, env: Mapping[str, str]) -> str:
    """What compose mounted at the folder (LIBRARY_VOLUME / MODEL_CACHE_VOLUME, passed in as
    *_HOST_PATH): a volume name or a host path; empty outside Docker."""
    if variable == "LIBRARY_DIR":
        return (env.get("LIBRARY_HOST_PATH") or "").strip()
    if variable == "MODEL_CACHE_DIR":
        return (env.get("MODEL_CACHE_HOST_PATH") or "").strip()
    return ""

# Which setting chooses that host side, for the message.
VOLUME_SETTINGS = {"LIBRARY_DIR": "LIBRARY_VOLUME", "MODEL_CACHE_DIR": "MODEL_CACHE_VOLUME"}
# A service of docker-compose.yml that mounts each folder (to fix a named volume from inside).
COMPOSE_SERVICES = {"LIBRARY_DIR": "frontend", "MODEL_CACHE_DIR": "backend"}


class StartupError(RuntimeError):
    """An error whose message says everything the user needs: logged as one line, no traceback."""


class FolderNotWritable(StartupError):
    pass


def _is_host_path(source: str) -> bool:
    # Compose's rule: a volume source that is not a path is the name of a volume.
    return "/" in source or "\\" in source or source.startswith((".", "~"))


def not_writable_message(folder: Path, variable: str, reason: str, env: Mapping[str, str],
                         uid: int | None = None, gid: int | None = None, read_only: bool = False) -> str:
    """The one line: what, where, why, and the command that fixes it."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    host = host_side(variable, env)
    where = f"{variable}={folder}"
    if host and _is_host_path(host):
        where += f" (host folder {host}, set by {VOLUME_SETTINGS[variable]})"
    elif host:
        where += f" (Docker volume {host})"
    if read_only:
        # No owner or mode can be changed on a read-only mount: only mounting it writable helps.
        fix = "mount it read-write (chown cannot change a read-only file system): "
        remount = "remount the disk that holds it (`findmnt -T {}` shows it; `sudo mount -o remount,rw` it)"
        if host and _is_host_path(host):
            fix += f"drop `:ro` from its volume in the compose file, or {remount.format(host)}"
        elif host:
            fix += "drop `:ro` from its volume in the compose file"
        else:
            fix += f"{remount.format(folder.resolve())}, or choose another {variable}"
    elif host and _is_host_path(host):
        fix = (f"sudo chown -R {uid}:{gid} {host}  (or set APP_UID/APP_GID in .env to the "
               f"folder's owner, `stat -c %u:%g {host}`, then docker compose up -d)")
    elif host:
        # --entrypoint: the image's own would drop root before chown could run.
        fix = (f"docker compose run --rm --no-deps --entrypoint chown {COMPOSE_SERVICES[variable]} "
               f"-R {uid}:{gid} {folder}")
    else:
        fix = f"sudo chown -R {uid}:{gid} {folder.resolve()}  (or choose another {variable})"
    return f"cannot write to {where} as uid {uid}: {reason}. Fix: {fix}"


def ensure_writable(folder: Path | str, variable: str, env: Mapping[str, str]) -> Path:
    """Create `folder` if needed, then create and delete a file in it; raise FolderNotWritable
    with the documented one-line message when any step fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A real file, not os.access(): that ignores read-only mounts, ACLs and root squashing.
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        read_only = error.errno == errno.EROFS
        raise FolderNotWritable(not_writable_message(folder, variable, reason, env, read_only=read_only)) from None
    return folder
