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
import io
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

# At most this many pixels of one image are ever decoded (64 MiB at 4 bytes a pixel);
# JPEGs are decoded at 1/2..1/8 scale first, so only JPEGs above ~1 gigapixel hit it.
MAX_PIXELS = 1 << 24
# Longer side / shorter side: a photo beyond this is a strip, and scaling its shorter side
# up to cache_px would make the longer side huge.
MAX_ASPECT = 20
_DRAFT_SCALES = (1, 2, 4, 8)  # the reductions JPEG draft mode decodes at
# EXIF Orientation values 2..8 and the turn that makes each upright (1 is upright already).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


class NotRegularFile(OSError):
    """A path that exists but is a FIFO, socket or device, or a file over its size limit."""


class BadDimensions(ValueError):
    """An image whose header announces too many pixels or an extreme aspect ratio."""


@contextlib.contextmanager
def open_regular(path: str | Path, max_bytes: int | None = None) -> Iterator[io.BufferedReader]:
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


def load_square(file: str | Path, px: int) -> np.ndarray:
    """Decode one image file to the px×px RGB square that the cache stores and predict scores."""
    with open_regular(file) as handle:
        return decode_square(handle, px)


def decode_square(handle: BinaryIO, px: int) -> np.ndarray:
    """The one decode: labels' check, the cache and predict all call this, at the cache's px,
    so an image that labels keeps is one that the cache and predict can decode.

    Upright by its EXIF orientation, 8 bits a channel, shorter side resized to px,
    centre-cropped to px×px."""
    with Image.open(handle) as opened:
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: most of the speed-up
        # for 640 px photos cached at 256 px, and what keeps large JPEGs small.
        opened.draft("RGB", _draft_request(opened.size, px))
        check_size(opened)
        image = _to_rgb(_upright(opened))
        scale = px / min(image.size)
        size = (max(px, round(image.width * scale)), max(px, round(image.height * scale)))
        image = _replace(image, image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
        left, top = (image.width - px) // 2, (image.height - px) // 2
        return np.asarray(image.crop((left, top, left + px, top + px)), dtype=np.uint8)


def _draft_request(size: tuple[int, int], px: int) -> tuple[int, int]:
    """The size to ask JPEG draft mode for: (px, px), the least reduction that keeps the shorter
    side at px or more, unless that is still over MAX_PIXELS (a 23000x3000 panorama at px 1024
    is 1/2 scale, 34 M pixels): then the least reduction that fits, and the resize scales up."""
    width, height = size
    natural = max((s for s in _DRAFT_SCALES if min(width, height) // s >= px), default=1)
    for scale in (s for s in _DRAFT_SCALES if s >= natural):
        if (width // scale) * (height // scale) <= MAX_PIXELS:
            # Draft picks the largest scale whose result is at least the size asked for.
            return (px, px) if scale == natural else (-(-width // scale), -(-height // scale))
    return (px, px)   # too many pixels even at 1/8: check_size refuses it


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; as stored when that can't be read.

    Not ImageOps.exif_transpose: after turning the pixels it rewrites the EXIF block, and a
    mistyped tag beside Orientation makes that raise (TypeError, ValueError, struct.error...),
    sometimes after the in-place turn. Only the pixels are kept here, so the EXIF is only read."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # Pillow raises many types for one cause: EXIF it can't parse
        return image
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else _replace(image, image.transpose(method))


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    # Each copy of a decoded image is up to 64 MiB: free the old one as soon as it is copied.
    old.close()
    return new


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. Greyscale deeper than 8 bits is scaled, not clipped: convert("RGB") would
    turn a 16-bit PNG white (every value above 255) and a 0..1 float TIFF black."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _replace(image, Image.fromarray(_to_8_bits(np.asarray(image), image.mode), "L"))
    return image if image.mode == "RGB" else _replace(image, image.convert("RGB"))


def _to_8_bits(values: np.ndarray, mode: str) -> np.ndarray:
    """0..255 from one channel of 16-bit, 32-bit integer or float values.

    I;16 uses its type's full range. I and F say nothing about their range, so it is read from
    the values: 0..255 is kept, 0..65535 (I) or 0..1 (F) is scaled from that range, anything
    else is stretched from its minimum to its maximum."""
    pixels = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(pixels.min()), float(pixels.max())
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif low >= 0 and high <= (1.0 if mode == "F" else 255.0):
        low, high = 0.0, (1.0 if mode == "F" else 255.0)
    elif mode == "I" and low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0
    if high > low:
        pixels -= low
        pixels *= 255.0 / (high - low)
    np.clip(pixels, 0, 255, out=pixels)
    return np.rint(pixels, out=pixels).astype(np.uint8)


def decode_problem(error: BaseException) -> str:
    """Why an image can't be decoded, in words for a person: Pillow's messages name Python
    objects (`cannot identify image file <_io.BufferedReader name=6>`) or nothing at all."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image in a format Pillow reads"
    text = re.sub(r"\s*<[^<>]*>", "", (str(error).splitlines() or [""])[0]).strip()
    return text or "the image data is damaged"
