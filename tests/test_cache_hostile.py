"""The cache build on a disk without room and with a decoding child that dies: one line, never a
hang or a signal; and a photo replaced in place is decoded again."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from swipr_core.data.cache import build_cache
from swipr_core.errors import SwiprError
from tests.prockit import children_of, is_alive
from tests.studykit import ROOT
from tests.test_cache import write_images

# What `swipr` does with a SwiprError (search/cli.py): one line on stderr, its exit code.
_BUILD = """
import sys, time
from pathlib import Path
from swipr_core.data import cache as cache_module
from swipr_core.errors import SwiprError
real = cache_module.load_square
def slow(file, px):
    time.sleep(float(sys.argv[5]))   # slow enough to act mid-build; forked workers inherit it
    return real(file, px)
cache_module.load_square = slow
cache_module.CHUNK = 4
root, cache_dir = Path(sys.argv[1]), Path(sys.argv[2])
try:
    cache_module.build_cache(root, sys.argv[3].split(","), cache_dir, px=64, workers=int(sys.argv[4]),
                             progress=lambda n: print("chunk", flush=True))
except SwiprError as error:
    print(f"swipr: error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
print("done", flush=True)
"""


def _build_command(root, cache_dir, paths, workers, delay=0.0) -> list[str]:
    return [sys.executable, "-c", _BUILD, str(root), str(cache_dir), ",".join(paths), str(workers), str(delay)]


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads Linux /proc")
def test_a_decoding_child_killed_mid_build_stops_it_in_one_line(tmp_path):
    # The OOM killer or a SIGBUS: multiprocessing.Pool replaced the child, lost its chunk and
    # waited for it forever at 0% CPU. Now: exit 1, one line, no child, lock or temp file left.
    paths = write_images(tmp_path, 80, size=(20, 16))
    proc = subprocess.Popen(_build_command(tmp_path, tmp_path / "c", paths, 2, 0.05), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "chunk"
        children = children_of(proc.pid)
        assert children, "the build should run in child processes"
        os.kill(children[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "done" not in out
    assert "a process decoding images for the cache died" in _one_line(err)
    deadline = time.monotonic() + 10
    while any(is_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_alive(pid) for pid in children), "a decoding child outlived the build"
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")] == []
    assert build_cache(tmp_path, paths, tmp_path / "c", px=16, workers=1).open().shape == (80, 16, 16, 3)


def test_a_cache_larger_than_the_free_space_is_refused_before_decoding(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    n = free // (4096 * 4096 * 3) + 1   # names only: the check comes before any image is read
    with pytest.raises(SwiprError, match=r"needs .*, only .* free there; free some space or set \[data\] cache_dir"):
        build_cache(tmp_path, [f"x{i}.jpg" for i in range(n)], tmp_path / "c", px=4096, workers=1)
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_no_room_to_allocate_the_cache_is_one_line(tmp_path, workers):
    # A file-size limit refuses the allocation as a full disk would (without root to mount
    # one): the cache is allocated whole before decoding, so this is one line, exit 2.
    paths = write_images(tmp_path, 20, size=(20, 16))
    limit = 64 * 64 * 3 * 10   # half the cache

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # an error from write(), not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = subprocess.run(_build_command(tmp_path, tmp_path / "c", paths, workers), cwd=ROOT,
                         capture_output=True, text=True, timeout=60, preexec_fn=limit_file_size)
    assert out.returncode == 2, out.stderr
    assert "can't allocate the image cache of 20 images at 64 px" in _one_line(out.stderr)
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")] == []


def _why_no_tmpfs() -> str | None:
    if shutil.which("unshare") is None:
        return "needs unshare(1) to mount a small tmpfs"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"can't mount a tmpfs here: {probe.stderr.strip()}"


@pytest.mark.skipif(_why_no_tmpfs() is not None, reason=str(_why_no_tmpfs()))
@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_tmpfs_is_one_line_not_a_sigbus_or_a_hang(tmp_path, workers):
    # A real small disk, in a mount namespace of its own (gone with the process): a sparse
    # cache takes SIGBUS as pages are written, which kills swipr with no message (in-process,
    # exit 135) or hangs the pool.
    paths = write_images(tmp_path, 20, size=(20, 16))
    disk = tmp_path / "disk"
    disk.mkdir()
    command = " ".join(f"'{arg}'" for arg in _build_command(tmp_path, disk / "c", paths, workers))
    out = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=128k tmpfs '{disk}' && exec {command}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "only 0.1 MB free there" in _one_line(out.stderr)


def test_a_photo_replaced_with_its_size_and_mtime_restored_is_decoded_again(tmp_path):
    # Keyed by size and mtime alone, the old pixels would stay cached while predict sees the new photo.
    photo = tmp_path / "a.bmp"   # a BMP: same size in bytes for any colour
    Image.new("RGB", (16, 16), (255, 0, 0)).save(photo)
    stat = photo.stat()
    first = build_cache(tmp_path, ["a.bmp"], tmp_path / "c", px=8, workers=1).open()
    time.sleep(0.02)   # file times tick with the kernel's clock, not every nanosecond
    Image.new("RGB", (16, 16), (0, 0, 255)).save(photo)
    assert photo.stat().st_size == stat.st_size
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = build_cache(tmp_path, ["a.bmp"], tmp_path / "c", px=8, workers=1).open()
    assert first[0, 0, 0].tolist() == [255, 0, 0]
    np.testing.assert_array_equal(again[0], np.full((8, 8, 3), (0, 0, 255), np.uint8))
