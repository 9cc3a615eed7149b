"""Decode once: every image, resized to one square size, in one uint8 memory-mapped file.

This is the notebook's `data.resize(340, 'tmp')`, made shareable: the array is an .npy
file opened with mmap, so every trial and every worker process on the machine reads the
same pages from the OS page cache instead of decoding JPEGs again, and it need not fit in
RAM. The file's name carries a key of its inputs (paths, sizes, mtimes, ctimes, pixel size),
so a change of any input builds a new cache and an unchanged one is reused. A file whose
header or size is wrong (truncated, overwritten) is rebuilt, never mapped; a build stopped by
SIGTERM or SIGKILL leaves no decoding child, held lock or temp file behind. The whole file is
allocated before decoding, so a full disk is a one-line error, never a SIGBUS in the middle;
a decoding child that dies (the OOM killer) stops the build with one line, never a hang.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swipr_core.data.images import (
    decode_problem,
    load_square,
    open_regular,
)
from swipr_core.errors import RunStopped, SwiprError

CHUNK = 256


@dataclass(frozen=True)
class ImageCache:
    file: Path
    paths: tuple[str, ...]
    px: int
    image_root: Path | None = None  # known when built here: a damaged file is then rebuilt

    def open(self) -> np.memmap:
        """The (N, px, px, 3) uint8 array, memory-mapped read-only.

        Every process that opens it maps the same file: its pages sit once in the OS page
        cache (file-backed, shared), never as a private copy per trial or worker, and pages
        not read lately can be dropped, so the cache need not fit in RAM. A file whose header
        or size is wrong (truncated, overwritten) is rebuilt when the images are known."""
        problem = cache_problem(self.file, len(self.paths), self.px)
        if problem and self.image_root is not None:
            build_cache(self.image_root, self.paths, self.file.parent, self.px)
            problem = cache_problem(self.file, len(self.paths), self.px)
        if problem:
            raise SwiprError(f"{self.file}: damaged image cache ({problem}); delete it to rebuild")
        return np.load(self.file, mmap_mode="r")


def cache_problem(file: Path, n: int, px: int) -> str | None:
    """Why this .npy can't be the cache of n images at px (header, dtype, shape, size), or None."""
    fmt = np.lib.format
    try:
        with open_regular(file) as handle:
            version = fmt.read_magic(handle)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            offset, size = handle.tell(), os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as error:
        return f"unreadable header: {error}"
    if shape != (n, px, px, 3) or dtype != np.uint8 or fortran:
        return f"holds {dtype} {shape}, expected uint8 ({n}, {px}, {px}, 3)"
    if size != offset + n * px * px * 3:
        return f"{size} bytes, expected {offset + n * px * px * 3}"
    return None


def _say_rebuilding(file: Path, problem: str) -> None:
    print(f"swipr: image cache {file.name} is damaged ({problem}); rebuilding it", file=sys.stderr, flush=True)


def cache_key(image_root: Path, paths, px: int) -> str:
    """A key of the images' identities: path, size, mtime and ctime of each, and the size.

    The ctime is what a photo replaced in place can't keep: restoring its old size and mtime
    (os.utime, `touch -r`, rsync -t) sets the ctime to now. Anything else that touches the
    file's inode (chmod, a copied folder) also rebuilds, which is safe, only slower."""
    digest = hashlib.sha256(f"{px}\n".encode())
    for rel in paths:
        try:
            stat = (image_root / rel).stat()
            digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\t{stat.st_ctime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{rel}\tmissing\n".encode())
    return digest.hexdigest()[:16]


def _fill_chunk(args) -> None:
    # Each chunk is written straight into the memmap and flushed, so building holds one
    # chunk of decoded images in memory per worker, however many images there are.
    target, image_root, paths, start, px = args
    array = np.load(target, mmap_mode="r+")
    for offset, rel in enumerate(paths):
        try:
            array[start + offset] = load_square(Path(image_root) / rel, px)
        except Exception as error:  # PIL raises many types for one cause: a bad file
            raise SwiprError(f"{Path(image_root) / rel}: can't decode image for the cache: "
                             f"{decode_problem(error)}") from None
    array.flush()


def build_cache(image_root: Path, paths, cache_dir: Path, px: int, workers: int | None = None,
                progress=None) -> ImageCache:
    """Return the cache for these images, building it first if its inputs changed or it is damaged."""
    paths = tuple(paths)
    key = cache_key(image_root, paths, px)
    file = cache_dir / f"images-{px}px-{key}.npy"
    cache = ImageCache(file=file, paths=paths, px=px, image_root=Path(image_root))
    if cache_problem(file, len(paths), px) is None:
        return cache
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir / f".{file.name}.lock", "w")
    except OSError as error:
        raise SwiprError(f"{cache_dir}: can't write the image cache there: {error.strerror or error}") from None
    # Workers that start together on one machine build it once: the first takes the lock
    # and decodes; the others wait, then find the file and reuse it.
    with lock:
        _lock(lock, file)
        problem = cache_problem(file, len(paths), px)
        if problem:
            if problem != "missing":
                _say_rebuilding(file, problem)
            _remove_stale_temps(file)
            _build(file, image_root, paths, px, workers, progress)
    return cache


def _lock(lock, file: Path) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # Say why nothing happens: another process is building this cache.
        print(f"swipr: waiting for another process to finish building {file.name}", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)


def _remove_stale_temps(file: Path) -> None:
    # Temp files are written only under the lock, which we hold: any left is from a killed build.
    for stale in file.parent.glob(f".{file.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _build(file: Path, image_root: Path, paths: tuple, px: int, workers: int | None, progress) -> None:
    tmp = file.parent / f".{file.name}.{os.getpid()}.tmp"
    jobs = [(str(tmp), str(image_root), paths[i:i + CHUNK], i, px) for i in range(0, len(paths), CHUNK)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with _sigterm_raises():
        try:
            _allocate(tmp, len(paths), px)
            for job in _run_jobs(file, jobs, workers):
                if progress:
                    progress(len(job[2]))
            index = file.with_suffix(".json")
            index_tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
            try:
                index_tmp.write_text(json.dumps({"paths": paths}))
                os.replace(index_tmp, index)
            except OSError as error:
                index_tmp.unlink(missing_ok=True)
                raise SwiprError(f"{index}: can't write the image cache's index: {error.strerror or error}") from None
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)


def _allocate(tmp: Path, n: int, px: int) -> None:
    """Create the .npy with every block of it on disk, or say in one line why it can't be.

    A sparse file would take its blocks only as decoded images are written into the mapping:
    on a disk that fills meanwhile, that write is a SIGBUS, which kills the process (no
    message, exit 135) or a decoding child."""
    needed = n * px * px * 3 + 4096   # the header is at most a few hundred bytes
    free = shutil.disk_usage(tmp.parent).free
    if free < needed:
        raise SwiprError(f"{tmp.parent}: the image cache of {n} images at {px} px needs {_size(needed)}, "
                         f"only {_size(free)} free there; free some space or set [data] cache_dir elsewhere")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, px, px, 3))
        del array  # the header and size are on disk; workers map the file themselves
        with open(tmp, "r+b") as handle:
            _preallocate(handle.fileno())
    except OSError as error:
        raise SwiprError(f"{tmp.parent}: can't allocate the image cache of {n} images at {px} px "
                         f"({_size(needed)}): {error.strerror or error}") from None


def _preallocate(fd: int) -> None:
    size = os.fstat(fd).st_size
    try:
        os.posix_fallocate(fd, 0, size)
    except AttributeError:
        pass  # not on this OS (macOS): the file stays sparse
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC, EDQUOT, EFBIG: no room for it
        # This file system can't preallocate: the file stays sparse, as it always was.


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def _run_jobs(file: Path, jobs: list, workers: int):
    """Fill the chunks, yielding each job when done; child processes never outlive this.

    A ProcessPoolExecutor, not a multiprocessing.Pool: a child killed outright (SIGBUS, the
    OOM killer) makes it raise BrokenProcessPool, where the Pool replaced the child, lost its
    task and waited for it forever."""
    if workers <= 1:
        for job in jobs:
            _fill_chunk(job)
            yield job
        return
    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(min(workers, len(jobs)), initializer=_die_with_parent,
                                   initargs=(os.getpid(),))
    children: list = []
    pending: dict = {}
    try:
        pending = {executor.submit(_fill_chunk, job): job for job in jobs}
        children = [child for child in multiprocessing.active_children() if child not in before]
        for future in as_completed(list(pending)):
            future.result()  # a chunk's SwiprError, or BrokenProcessPool
            yield pending.pop(future)
    except BrokenProcessPool:
        raise RunStopped(f"{file.name}: a process decoding images for the cache died (killed by a "
                         "signal: out of memory?); nothing was cached, the next run builds it again") from None
    finally:
        # On an error or a signal: no child goes on decoding or holds the lock (inherited).
        if pending:
            for child in children:
                child.terminate()
        executor.shutdown(wait=True, cancel_futures=True)


def _die_with_parent(parent: int) -> None:
    # The parent alone reacts to Ctrl-C and SIGTERM (by terminating the pool); a forked
    # child would otherwise inherit its handler and print a traceback when terminated.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # If the parent is killed outright (SIGKILL), the kernel sends the child SIGTERM.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's SIGTERM handler still terminates the pool
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextmanager
def _sigterm_raises():
    """SIGTERM raises KeyboardInterrupt while building, so the finally blocks clean up.

    Only when nobody else handles SIGTERM (the study runner installs its own) and in the
    main thread, the one place Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
