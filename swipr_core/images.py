"""Open and decode one image with bounded memory, from regular files only.

Labels, the image cache and predict all decode through here. A FIFO or a device must never
be opened for reading (a FIFO blocks forever, /dev/zero never ends), and an image's header
is checked before its pixels are decoded: an 862-byte 1×200000 PNG would otherwise be
upscaled to billions of pixels.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps

# At most this many pixels of one image are ever decoded (64 MiB at 4 bytes a pixel);
# JPEGs are decoded at 1/2..1/8 scale first, so only JPEGs above ~1 gigapixel hit it.
MAX_PIXELS = 1 << 24
# Longer side / shorter side: a photo beyond this is a strip, and scaling its shorter side
# up to cache_px would make the longer side huge.
MAX_ASPECT = 20


class NotRegularFile(OSError):
    """A path that exists but is a FIFO, socket or device, or a file over its size limit."""


class BadDimensions(ValueError):
    """An image whose header announces too many pixels or an extreme aspect ratio."""


@contextlib.contextmanager
def open_regular(path: str | Path, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """Open a regular file for reading, never blocking on a FIFO; refuse anything else.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the
    fstat then sees what was opened, so a path swapped in between can't slip through.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{path}: not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise NotRegularFile(f"{path}: larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The whole file, refusing non-regular files and files over max_bytes (read limit+1)."""
    with open_regular(path, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the fstat
        raise NotRegularFile(f"{path}: larger than {max_bytes} bytes")
    return data


def sha256_regular(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_size(image) -> None:
    """Raise BadDimensions unless the (possibly draft-reduced) size is safe to decode."""
    width, height = image.size
    if width < 1 or height < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise BadDimensions(f"{width}x{height} pixels: aspect ratio beyond {MAX_ASPECT}:1")
    if width * height > MAX_PIXELS:
        raise BadDimensions(f"{width}x{height} pixels: more than {MAX_PIXELS} to decode")


def decode_check(handle: BinaryIO, px: int = 64) -> None:
    """Decode an image just far enough to find damage (JPEGs at reduced scale)."""
    with Image.open(handle) as image:
        image.draft("RGB", (px, px))
        check_size(image)
        image.load()


def load_square(file: str | Path, px: int) -> np.ndarray:
    """Decode one image, resize its shorter side to px and centre-crop it to px×px RGB."""
    with open_regular(file) as handle, Image.open(handle) as image:
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: most of the speed-up
        # for 640 px photos cached at 256 px, and what keeps large JPEGs small.
        image.draft("RGB", (px, px))
        check_size(image)
        # In place and only when needed: each copy of a decoded image is up to 64 MiB.
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode != "RGB":
            image = image.convert("RGB")
        scale = px / min(image.size)
        size = (max(px, round(image.width * scale)), max(px, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (image.width - px) // 2, (image.height - px) // 2
        return np.asarray(image.crop((left, top, left + px, top + px)), dtype=np.uint8)
