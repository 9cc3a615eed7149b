"""A folder nothing can write in, not even root: root ignores permission bits, so as root it
is a tmpfs mounted read-only (or, where mounting is not allowed, an immutable folder)."""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest


def _run(*command: str) -> bool:
    return shutil.which(command[0]) is not None and subprocess.run(command, capture_output=True).returncode == 0


@contextmanager
def read_only_folder(folder: Path, fill: Callable[[Path], None] = lambda folder: None) -> Iterator[Path]:
    """`folder`, made, filled by `fill`, then read-only for the block; skips the test with the
    reason where this machine offers no way to make it so."""
    folder.mkdir(parents=True)
    if os.geteuid() != 0:
        fill(folder)
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
        for path in modes:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    if _run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)):
        try:
            fill(folder)
            if not _run("mount", "-o", "remount,ro", str(folder)):
                pytest.skip("root, and a tmpfs mounts here but can't be remounted read-only")
            yield folder
        finally:
            _run("umount", str(folder))
        return
    fill(folder)
    if not _run("chattr", "+i", str(folder)):
        pytest.skip("running as root (which ignores permission bits), and neither a read-only tmpfs "
                    "mount nor chattr +i is allowed here")
    try:
        yield folder
    finally:
        _run("chattr", "-i", str(folder))
