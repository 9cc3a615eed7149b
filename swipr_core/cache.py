"""Decode once: every image, resized to one square size, in one uint8 memory-mapped file.

This is the notebook's `data.resize(340, 'tmp')`, made shareable: the array is an .npy
file opened with mmap, so every trial and every worker process on the machine reads the
same pages from the OS page cache instead of decoding JPEGs again, and it need not fit in
RAM. The file's name carries a key of its inputs (paths, sizes, mtimes, pixel size), so a
change of any input builds a new cache and an unchanged one is reused.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swipr_core.errors import SwiprError

CHUNK = 256


@dataclass(frozen=True)
class ImageCache:
    file: Path
    paths: tuple[str, ...]
    px: int

    def open(self) -> np.memmap:
        """The (N, px, px, 3) uint8 array, memory-mapped read-only.

        Every process that opens it maps the same file: its pages sit once in the OS page
        cache (file-backed, shared), never as a private copy per trial or worker, and pages
        not read lately can be dropped, so the cache need not fit in RAM."""
        array = np.load(self.file, mmap_mode="r")
        if array.shape != (len(self.paths), self.px, self.px, 3) or array.dtype != np.uint8:
            raise SwiprError(f"{self.file}: image cache holds {array.dtype} {array.shape}, expected uint8 "
                             f"({len(self.paths)}, {self.px}, {self.px}, 3); delete it to rebuild")
        return array


def cache_key(image_root: Path, paths, px: int) -> str:
    digest = hashlib.sha256(f"{px}\n".encode())
    for rel in paths:
        try:
            stat = (image_root / rel).stat()
            digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{rel}\tmissing\n".encode())
    return digest.hexdigest()[:16]


def load_square(file: Path, px: int) -> np.ndarray:
    """Decode one image, resize its shorter side to px and centre-crop it to px×px RGB."""
    from PIL import Image, ImageOps

    with Image.open(file) as image:
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: most of the speed-up
        # for 640 px photos cached at 256 px.
        image.draft("RGB", (px, px))
        image = ImageOps.exif_transpose(image).convert("RGB")
        scale = px / min(image.size)
        size = (max(px, round(image.width * scale)), max(px, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (image.width - px) // 2, (image.height - px) // 2
        return np.asarray(image.crop((left, top, left + px, top + px)), dtype=np.uint8)


def _fill_chunk(args) -> None:
    # Each chunk is written straight into the memmap and flushed, so building holds one
    # chunk of decoded images in memory per worker, however many images there are.
    target, image_root, paths, start, px = args
    array = np.load(target, mmap_mode="r+")
    for offset, rel in enumerate(paths):
        try:
            array[start + offset] = load_square(Path(image_root) / rel, px)
        except Exception as error:  # PIL raises many types for one cause: a bad file
            raise SwiprError(f"{Path(image_root) / rel}: can't decode image for the cache: {error}") from None
    array.flush()


def build_cache(image_root: Path, paths, cache_dir: Path, px: int, workers: int | None = None,
                progress=None) -> ImageCache:
    """Return the cache for these images, building it first if its inputs changed."""
    paths = tuple(paths)
    key = cache_key(image_root, paths, px)
    file = cache_dir / f"images-{px}px-{key}.npy"
    cache = ImageCache(file=file, paths=paths, px=px)
    if file.is_file():
        return cache
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Workers that start together on one machine build it once: the first takes the lock
    # and decodes; the others wait, then find the file and reuse it.
    with open(cache_dir / f".{file.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not file.is_file():
            _build(file, image_root, paths, px, workers, progress)
    return cache


def _build(file: Path, image_root: Path, paths: tuple, px: int, workers: int | None, progress) -> None:
    cache_dir = file.parent
    tmp = cache_dir / f".{file.name}.{os.getpid()}.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), px, px, 3))
    del array
    jobs = [(str(tmp), str(image_root), paths[i:i + CHUNK], i, px) for i in range(0, len(paths), CHUNK)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    try:
        if workers <= 1:
            for job in jobs:
                _fill_chunk(job)
                if progress:
                    progress(len(job[2]))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for job, _ in zip(jobs, pool.map(_fill_chunk, jobs)):
                    if progress:
                        progress(len(job[2]))
        index = file.with_suffix(".json")
        index_tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
        index_tmp.write_text(json.dumps({"paths": paths}))
        os.replace(index_tmp, index)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
