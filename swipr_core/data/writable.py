"""Can we write there? Asked before the work, not found out after it.

Permission bits don't answer it: root ignores them, and neither a read-only mount nor an
immutable folder shows in them. So the question is put to the file system itself: create a
temporary file in the folder (and remove it), or open an existing file for writing without
changing a byte.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from swipr_core.errors import SwiprError


def nearest_existing(path: Path) -> Path:
    """`path`, or the closest folder above it that exists: where its creation would write."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder_writable(folder: Path, what: str) -> None:
    """Refuse, naming `what` (e.g. "--out model/"), unless a file can be created in `folder`
    or, if it doesn't exist yet, in the folder it would be created in."""
    where = nearest_existing(folder)
    if not where.is_dir():
        raise SwiprError(f"{what}: {where} is not a folder")
    try:
        with tempfile.TemporaryFile(prefix=".swipr-write-check-", dir=where):
            pass
    except OSError as error:
        raise SwiprError(f"{what}: can't write in {where} ({error.strerror or error}); "
                         f"nothing was done") from None


def check_file_writable(file: Path, what: str) -> None:
    """Refuse, naming `what`, unless the existing `file` opens for writing (nothing is written)."""
    try:
        with open(file, "r+b"):
            pass
    except OSError as error:
        raise SwiprError(f"{what}: can't write {file} ({error.strerror or error}); nothing was done") from None
