"""Put a finished folder in place under a name in one atomic step: old or new, never neither.

Replacing a folder by renaming the old one aside and the new one in leaves a moment with
nothing under the name; a Ctrl-C (or a crash) there loses both. So the name is a symlink to
a versioned folder beside it, `.NAME.<id>.bundle`, and a new version goes in by renaming a
new symlink over the old one, which POSIX makes atomic. The link is relative, so the parent
folder can be moved or mounted elsewhere.

A name that is still a real folder (a bundle by an older swipr, or an empty folder) is
exchanged with the new symlink in one step by Linux's renameat2(RENAME_EXCHANGE). Where the
kernel or file system can't, it takes two renames with Ctrl-C and SIGTERM held off between
them and the old folder put back on any error; only SIGKILL or a power cut can land there,
and that happens once per --out, on its first swap.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VERSION_SUFFIX = ".bundle"
LINK_SUFFIX = ".link"
ASIDE_SUFFIX = ".aside"
STAGING_SUFFIX = ".tmp"   # a bundle being written (swipr_core.serve.bundle.staging_dir)
LEFTOVER_AGE_S = 3600   # an interrupted swap's pieces older than this are removed by the next one
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NOT_SUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def version_path(out: Path) -> Path:
    """A fresh name for a version folder beside `out`."""
    return out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}{VERSION_SUFFIX}"


def linked_version(out: Path) -> Path | None:
    """The version folder `out` points at, if `out` is a symlink this module made."""
    if not out.is_symlink():
        return None
    target = os.readlink(out)
    if "/" in target or not (target.startswith(f".{out.name}.") and target.endswith(VERSION_SUFFIX)):
        return None   # a link the user made: what it points at is theirs, and left alone
    return out.parent / target


def exchange(a: Path, b: Path) -> bool:
    """Swap the two names in one step (renameat2 RENAME_EXCHANGE). False where the system
    can't (not Linux, an old libc, a file system without it); other failures raise OSError."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NOT_SUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish(folder: Path, out: Path) -> None:
    """Make `out` the complete `folder` (beside it) in one atomic step; remove what it replaced.
    Interrupted anywhere, `out` is what it was or the new version, and nothing new is left."""
    previous = linked_version(out)
    version = version_path(out)
    stem = version.name[:-len(VERSION_SUFFIX)]
    link, aside = version.with_name(stem + LINK_SUFFIX), version.with_name(stem + ASIDE_SUFFIX)
    try:
        os.replace(folder, version)
        os.symlink(version.name, link)
        if out.is_symlink() or not out.exists():
            os.replace(link, out)   # the one step: readers see the old bundle or the new one
        else:
            _replace_folder(link, out, aside)
    except BaseException:
        if linked_version(out) == version:   # swapped in already: only the tidying is left
            _tidy(previous, link, aside)
        else:
            _remove(version if version.exists() else folder)
            if link.is_symlink():
                link.unlink()
        raise
    _tidy(previous, link, aside)
    remove_leftovers(out)


def _replace_folder(link: Path, out: Path, aside: Path) -> None:
    """`out` is a real folder: swap it for `link` (the old folder ends up at `link`, or at
    `aside` where the system can't exchange two names)."""
    if exchange(link, out):
        return
    with signals_held():
        try:
            os.replace(out, aside)
            os.replace(link, out)
        except BaseException:
            if not os.path.lexists(out) and aside.exists():
                os.replace(aside, out)   # the old bundle back under its name
            raise


def _tidy(previous: Path | None, link: Path, aside: Path) -> None:
    """After the swap: the version `out` pointed at, and the old real folder wherever it went."""
    for path in (previous, link, aside):
        if path is not None and os.path.lexists(path):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(out: Path) -> None:
    """Versions and links that an interrupted or killed swap left beside `out`, once they are
    old enough not to be another swap's work in progress; never the version `out` points at."""
    current = linked_version(out)
    now = time.time()
    for entry in out.parent.iterdir():
        if not entry.name.startswith(f".{out.name}.") or entry == current:
            continue
        ours = (entry.name.endswith(LINK_SUFFIX) and entry.is_symlink()) or (
            entry.name.endswith((VERSION_SUFFIX, STAGING_SUFFIX)) and entry.is_dir() and not entry.is_symlink())
        if not ours:   # only the kinds of thing a swap makes; .aside holds a bundle and stays
            continue
        try:
            old = now - entry.lstat().st_mtime > LEFTOVER_AGE_S
        except OSError:
            continue
        if old:
            _remove(entry)


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (then raise KeyboardInterrupt). Only
    the main thread can set handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items()
                if handler is not None and handler is not signal.SIG_IGN}   # ignored stays ignored
    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt
