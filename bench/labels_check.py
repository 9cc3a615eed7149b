"""Seconds `swipr labels` spends checking photos, decoding each one as the image
cache does (at cache_px), next to the cache build over the same photos.

Generated 640×480 JPEGs (like the Swipr pictures) in a temp folder; best of 3 runs each.

    .venv/bin/python bench/labels_check.py                 # ~1 minute on 2 cores
    .venv/bin/python bench/labels_check.py --images 2000 --cache-px 384
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swipr_core.data.cache import build_cache  # noqa: E402
from swipr_core.data.labels import LabelRules, build_labels  # noqa: E402


def write_photos(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    with sqlite3.connect(root / "pics.db") as connection:
        connection.execute("CREATE TABLE pics (path, label, invalid, ages, num_people, male_present)")
        for i in range(n):
            rel = f"{'ok' if i % 2 else 'no'}/img{i}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((640, 480)).save(root / rel, quality=90)
            connection.execute("INSERT INTO pics VALUES (?, 0, 0, '25', 1, 0)", (rel,))
    connection.close()
    return root / "pics.db"


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--cache-px", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        database = write_photos(root, args.images)
        rules = LabelRules(yes_dirs=("ok",), no_dirs=("no",))
        labels_s = best_of(3, lambda: build_labels(database, root, rules, px=args.cache_px))
        paths = build_labels(database, root, rules, px=args.cache_px).paths
        cache_s = best_of(3, lambda: build_cache(root, paths, root / f"cache-{time.perf_counter_ns()}",
                                                 px=args.cache_px))
    print(f"{args.images} 640x480 JPEGs at cache_px {args.cache_px}: labels check {labels_s:.2f} s "
          f"({args.images / labels_s:.0f} images/s), cache build {cache_s:.2f} s ({args.images / cache_s:.0f} images/s)")


if __name__ == "__main__":
    main()
