"""One image, decoded safely: header checked first, bounded memory, regular files only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from swipr_core.data.images import MAX_PIXELS, BadDimensions, NotRegularFile, load_square, open_regular, read_regular
from tests.studykit import ROOT

MiB = 1 << 20

# Peak RSS in a fresh process, above what importing the decoder already took.
_PEAK = """
import json, resource, sys
from swipr_core.data.images import load_square
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
base = peak()
try:
    shape, error = list(load_square(sys.argv[1], int(sys.argv[2])).shape), None
except Exception as exc:
    shape, error = None, type(exc).__name__
print(json.dumps({"shape": shape, "error": error, "grew": peak() - base}))
"""


def decode_in_subprocess(file, px) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_PEAK), str(file), str(px)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("px", [96, 256])
def test_a_tiny_thin_png_is_refused_from_its_header(tmp_path, px):
    # An 862-byte 1x200000 PNG, decoded whole, takes 2.3 GB in predict and 8 GB at cache_px 96.
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 200_000)).save(strip)
    assert strip.stat().st_size < 2000
    result = decode_in_subprocess(strip, px)
    assert result["error"] == "BadDimensions"
    assert result["grew"] < 16 * MiB, result


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    # 6000x3000 is more pixels than MAX_PIXELS; draft mode decodes it at 1/8 (750x375).
    photo = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 3000), (90, 140, 200)).save(photo, quality=80)
    assert 6000 * 3000 > MAX_PIXELS
    result = decode_in_subprocess(photo, 96)
    assert result["shape"] == [96, 96, 3]
    assert result["grew"] < 24 * MiB, result   # a full decode alone is 72 MB


def test_an_image_at_the_pixel_limit_stays_under_the_stated_bound(tmp_path):
    # The README's bound: the worst allowed image (RGBA, MAX_PIXELS, needs converting) < 200 MiB.
    side = int(MAX_PIXELS ** 0.5)
    image = tmp_path / "limit.png"
    Image.new("RGBA", (side, side), (10, 20, 30, 255)).save(image, compress_level=1)
    result = decode_in_subprocess(image, 256)
    assert result["shape"] == [256, 256, 3]
    assert result["grew"] < 200 * MiB, result


@pytest.mark.parametrize("size", [(4200, 4200), (2100, 43)])
def test_too_many_pixels_or_too_thin_is_refused(tmp_path, size):
    file = tmp_path / "x.png"
    Image.new("L", size).save(file)
    with pytest.raises(BadDimensions, match=f"{size[0]}x{size[1]} pixels"):
        load_square(file, 32)


def test_ordinary_images_still_decode_to_the_square(tmp_path):
    file = tmp_path / "a.png"
    Image.fromarray(np.full((30, 50, 3), 7, np.uint8)).save(file)
    assert load_square(file, 16).shape == (16, 16, 3)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="not a regular file"):
        load_square(fifo, 16)   # would wait forever for a writer with a plain open()


def test_devices_and_oversized_files_are_refused_before_reading(tmp_path):
    with pytest.raises(NotRegularFile, match="not a regular file"):
        read_regular("/dev/zero", 100)   # endless: must not be read
    file = tmp_path / "f"
    file.write_bytes(b"x" * 101)
    with pytest.raises(NotRegularFile, match="larger than 100 bytes"):
        read_regular(file, 100)
    assert read_regular(file, 101) == b"x" * 101
    with pytest.raises(IsADirectoryError), open_regular(tmp_path):
        pass


def _grey_file(tmp_path, values: np.ndarray, suffix: str):
    file = tmp_path / f"grey-{values.dtype}{suffix}"
    Image.fromarray(values).save(file)
    return file


@pytest.mark.parametrize("values, suffix, mode, expected", [
    (np.full((12, 20), 32896, np.uint16), ".png", "I;16", 128),       # 16-bit PNG: 0..65535
    (np.full((12, 20), 16448, np.int32), ".tif", "I", 64),             # 32-bit integers in 0..65535
    (np.full((12, 20), 0.5, np.float32), ".tif", "F", 128),            # floats in 0..1
])
def test_high_bit_depth_greyscale_is_scaled_to_8_bits_not_clipped(tmp_path, values, suffix, mode, expected):
    # convert("RGB") alone clips: a mid-grey 16-bit PNG becomes white, a 0..1 float TIFF black.
    values[:, :10] = 0   # a black half: the scale must keep black black
    file = _grey_file(tmp_path, values, suffix)
    with Image.open(file) as opened:
        assert opened.mode == mode
    square = load_square(file, 12)
    assert square.shape == (12, 12, 3)
    assert abs(int(square[:, -1].mean()) - expected) <= 1, square[:, -1, 0]   # the grey side
    assert square[:, 0].max() == 0                                             # the black side


def test_float_values_beyond_0_to_1_are_stretched_from_their_range(tmp_path):
    values = np.zeros((8, 16), np.float32)
    values[:, 8:] = 1000.0
    square = load_square(_grey_file(tmp_path, values, ".tif"), 8)
    assert square[:, 0].max() == 0 and square[:, -1].min() == 255


def _jpeg_with_exif(file, ifd_entries: dict, types: dict):
    """A 24x20 JPEG, left half blue, right half red, with an EXIF block built tag by tag, types included:
    Pillow's own writer refuses to write a mistyped tag, which cameras and editors do write."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"MM")
    for tag, value in ifd_entries.items():
        ifd[tag] = value
    ifd.tagtype.update(types)
    exif = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd.tobytes(8)
    image = Image.new("RGB", (24, 20), (220, 0, 0))
    image.paste((0, 0, 220), (0, 0, 12, 20))
    image.save(file, exif=exif, quality=95)
    return file


def test_a_mistyped_exif_tag_beside_orientation_keeps_the_orientation(tmp_path):
    # XResolution written as text: ImageOps.exif_transpose raised "bad operand type for
    # abs(): 'str'" when rewriting the EXIF, so the cache and predict refused the photo.
    file = _jpeg_with_exif(tmp_path / "x.jpg", {0x0112: 6, 0x011A: "abc"}, {0x011A: 2})
    square = load_square(file, 20)
    # Orientation 6: turned a quarter clockwise, so the blue left side is now the top.
    assert square[0, 10, 2] > 150 and square[0, 10, 0] < 80
    assert square[-1, 10, 0] > 150 and square[-1, 10, 2] < 80


def test_unreadable_exif_leaves_the_pixels_as_stored(tmp_path):
    file = _jpeg_with_exif(tmp_path / "y.jpg", {0x0112: 6}, {})
    data = bytearray(file.read_bytes())
    at = data.index(b"Exif\x00\x00") + 6
    data[at:at + 4] = b"XX\x00\x2a"   # neither II nor MM: the TIFF header can't be read
    file.write_bytes(bytes(data))
    square = load_square(file, 20)
    assert square[10, 0, 2] > 150 and square[10, -1, 0] > 150   # blue on the left, red on the right


def test_a_panorama_too_large_at_the_natural_draft_scale_is_decoded_smaller(tmp_path):
    # A 23000x3000 photo at 1024 px: 1/2 scale would be 34 M pixels, over MAX_PIXELS, so the
    # decode asks JPEG draft for 1/4 (5750x750) and scales up to 1024, in bounded memory.
    photo = tmp_path / "pano.jpg"
    Image.new("L", (23000, 3000), 200).save(photo)
    result = decode_in_subprocess(photo, 1024)
    assert result["shape"] == [1024, 1024, 3], result
    assert result["grew"] < 200 * MiB, result
