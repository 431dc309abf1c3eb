"""The images' entrypoint: make the service's data folders writable, drop root, run the service.

    python -m playground.container_entrypoint --data-dir-from MODEL_CACHE_DIR -- python -m backend

A host folder bound as the library or the model cache belongs to whoever made it: root when
Docker created it, the user (uid 1000) when they did. The services run as APP_UID:APP_GID
(10001 by default), so the container starts as root, gives each data folder named by a
`--data-dir-from` variable to that user when the user cannot write it, and then becomes that
user for good (setgroups, setgid, setuid) before exec'ing the service. Only what needs it is
changed: nothing when the user can already write the folder; the folder itself when only its
mode is wrong; its whole tree only when the folder belongs to someone else.

Started as any other user (`user:` in compose, rootless setups), it changes nothing and just
runs the service, whose own start-up check (playground.writable) then explains a folder it
cannot write.
"""
from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

PREFIX = "container-entrypoint"


def say(message: str) -> None:
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)


def writable_by(info: os.stat_result, uid: int, gid: int) -> bool:
    """Would uid:gid (no supplementary groups) be allowed to create files in this folder?"""
    if info.st_uid == uid:
        needed = stat.S_IWUSR | stat.S_IXUSR
    elif info.st_gid == gid:
        needed = stat.S_IWGRP | stat.S_IXGRP
    else:
        needed = stat.S_IWOTH | stat.S_IXOTH
    return info.st_mode & needed == needed


def _chown_tree(folder: Path, uid: int, gid: int) -> int:
    """chown what is not uid:gid yet, the folder first; the number of entries changed."""
    changed = 0
    for root, dirs, files in os.walk(folder):
        for path in [root, *(os.path.join(root, name) for name in dirs + files)]:
            info = os.lstat(path)
            if (info.st_uid, info.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
                changed += 1
    return changed


def fix_folder(folder: Path, uid: int, gid: int) -> None:
    """Make `folder` writable for uid:gid, changing as little as possible."""
    if not folder.exists():
        folder.mkdir(parents=True)
        os.chown(folder, uid, gid)
        say(f"created {folder} for {uid}:{gid}")
        return
    info = folder.stat()
    if writable_by(info, uid, gid):
        return
    try:
        if info.st_uid != uid:
            # Someone else's folder (root's, the host user's): its files are theirs too.
            changed = _chown_tree(folder, uid, gid)
            say(f"{folder} belonged to {info.st_uid}:{info.st_gid}: gave {changed} entries to {uid}:{gid}")
        else:
            os.chmod(folder, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
            say(f"{folder}: added the owner's write permission")
    except OSError as error:
        # E.g. a Windows drive through Docker Desktop, or a read-only bind: the service's own
        # check names the folder and the fix.
        say(f"could not make {folder} writable for {uid}:{gid}: {error.strerror or error}")


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:  # setuid must not be undoable
        raise SystemExit(f"{PREFIX}: failed to become {uid}:{gid}")


def _id(env_name: str) -> int:
    raw = os.environ.get(env_name, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{PREFIX}: {env_name} must be a numeric id, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{PREFIX}: {env_name} must not be 0 (root) or negative, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m playground.container_entrypoint")
    parser.add_argument("--data-dir-from", action="append", default=[], metavar="VARIABLE",
                        help="an environment variable naming a folder the service writes")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the service's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run (put it after --)")

    if os.geteuid() == 0:
        uid, gid = _id("APP_UID"), _id("APP_GID")
        for variable in args.data_dir_from:
            value = os.environ.get(variable, "").strip()
            if value:
                fix_folder(Path(value), uid, gid)
        drop_privileges(uid, gid)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
