"""Files written whole or not at all: a temporary file beside the target, fsynced, then renamed."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def fsync_path(path: Path) -> None:
    """Push a file's (or a folder's: a rename in it) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_new_file(target: Path, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse (UserError) a target that exists, lies in a missing folder or has the wrong suffix:
    nothing a user already has is ever replaced."""
    if suffixes and target.suffix not in suffixes:
        raise UserError(f"{target}: the file name must end in {' or '.join(suffixes)}")
    if target.exists():
        raise UserError(f"{target} exists; choose another name (nothing is overwritten)")
    if not target.parent.is_dir():
        raise UserError(f"output folder {target.parent} does not exist")
    return target


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """``write(temporary)`` then fsync and rename onto ``target``; the temporary keeps the suffix
    (numpy appends .npz to names without it)."""
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(temporary, target)  # unlike a rename, fails if the target appeared meanwhile
        except FileExistsError:
            raise UserError(f"{target} exists; choose another name (nothing is overwritten)") from None
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(target.parent)
    return target
