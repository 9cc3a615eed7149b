"""One image, decoded safely: header checked first, bounded memory, regular files only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from swipr_core.images import MAX_PIXELS, BadDimensions, NotRegularFile, load_square, open_regular, read_regular
from tests.studykit import ROOT

MiB = 1 << 20

# Peak RSS in a fresh process, above what importing the decoder already took.
_PEAK = """
import json, resource, sys
from swipr_core.images import load_square
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
    # The 862-byte 1x200000 PNG took 2.3 GB in predict and 8 GB at cache_px 96.
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
