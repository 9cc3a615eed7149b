"""Images per second of the project's loader against a plain fastai loader, on the CPU.

Both read the same generated JPEG photos (640×480 by default, ~60-100 KB each, like the
Swipr pictures), produce normalised float batches of the same size and batch size, with
the same augmentations (flip, zoom up to 1.1, no rotation, lighting or warp), on the same
number of CPU workers. The project's loader runs three ways, epochs alternating: without
MADV_WILLNEED advice ("plain"), by default (advice only for a cache larger than
the memory available) and always advised (as such a cache is). It reads the decode-once cache, built first
(timed separately: a one-off cost per dataset, shared by every trial); fastai decodes
every JPEG every epoch.

    .venv/bin/python bench/loader.py                  # ~2-3 minutes on 2 cores
    .venv/bin/python bench/loader.py --images 8000 --epochs 3 --workers 8

The last line is `ratio: X` (project images/s ÷ fastai images/s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swipr_core.data.cache import build_cache  # noqa: E402
from swipr_core.data.loaders import Augment, CachedBatches  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photo(args) -> None:
    """A photo-like JPEG: smooth colour fields plus fine grain, so it compresses like a photo."""
    from PIL import Image

    file, width, height, seed = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = np.roll(_grain(height, width), rng.integers(0, height * width), axis=None)
    Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(file, quality=85)


_GRAIN: dict = {}


def _grain(height: int, width: int) -> np.ndarray:
    """Film-grain-like noise, made once per process and shifted per photo: cheap to reuse."""
    if (height, width) not in _GRAIN:
        _GRAIN[height, width] = np.random.default_rng(0).normal(0, 10, (height, width, 3)).astype(np.int16)
    return _GRAIN[height, width]


def write_photos(folder: Path, n: int, width: int, height: int, workers: int) -> list[str]:
    names = [f"photo{i:06d}.jpg" for i in range(n)]
    missing = [(folder / name, width, height, i) for i, name in enumerate(names) if not (folder / name).exists()]
    if missing:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_photo, missing, chunksize=16))
    return names


def time_epochs(batches_of_epoch, epochs: int) -> tuple[float, int]:
    """(seconds, images) over `epochs` full passes; each batch is consumed as training would."""
    images, started = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _labels in batches_of_epoch():
            assert x.dtype.is_floating_point and x.shape[1] == 3
            images += len(x)
    return time.perf_counter() - started, images


def project_rate(folder: Path, names, is_valid, args) -> tuple[dict, float]:
    """({"plain" | "default" | "advised" [+ " gather"]: images/s}, cache build seconds) on a
    cache in RAM, epochs alternating between the three so load on the machine hits all alike.

    "plain": no MADV_WILLNEED advice; "default": as a trial runs it (advice
    only when the cache outgrows the memory available); "advised": always advised, as a cache
    larger than RAM is."""
    started = time.perf_counter()
    cache = build_cache(folder, names, folder / "cache", args.cache_px, workers=args.workers)
    build_seconds = time.perf_counter() - started
    train_rows = [i for i, valid in enumerate(is_valid) if not valid]
    array = cache.open()
    loaders = {name: CachedBatches(array, train_rows, [i % 2 for i in train_rows], args.bs,
                                   Augment(args.size, IMAGENET_MEAN, IMAGENET_STD), train=True, device="cpu",
                                   advise=advise)
               for name, advise in (("plain", False), ("default", None), ("advised", True))}
    time_epochs(lambda: loaders["plain"], 1)   # the first epoch pages the cache in: not timed
    totals = {name: [0.0, 0] for name in [*loaders, *(f"{name} gather" for name in loaders)]}
    for _ in range(args.epochs):
        for name, loader in loaders.items():
            for key, timed in ((name, time_epochs), (f"{name} gather", gather_epochs)):
                seconds, images = timed(lambda loader=loader: loader, 1)
                totals[key][0] += seconds
                totals[key][1] += images
    return {name: images / seconds for name, (seconds, images) in totals.items()}, build_seconds


def gather_epochs(batches_of_epoch, epochs: int) -> tuple[float, int]:
    """(seconds, images) of the loader's host batches alone: rows gathered, no augmentation,
    the part that the advice could slow down."""
    images, started = 0, time.perf_counter()
    for _ in range(epochs):
        loader = batches_of_epoch()
        for batch, _, _ in loader.host_batches(loader.order(), torch.Generator().manual_seed(0)):
            images += len(batch)
    return time.perf_counter() - started, images


def fastai_rate(folder: Path, names, is_valid, args) -> float:
    import pandas as pd
    from fastai.vision.all import ImageDataLoaders, Normalize, Resize, aug_transforms, imagenet_stats

    df = pd.DataFrame({"path": names, "label": [("NO", "YES")[i % 2] for i in range(len(names))],
                       "is_valid": is_valid})
    dls = ImageDataLoaders.from_df(
        df, folder, fn_col="path", label_col="label", valid_col="is_valid", item_tfms=Resize(args.cache_px),
        batch_tfms=[*aug_transforms(do_flip=True, max_zoom=1.1, max_rotate=0, max_lighting=0, max_warp=0,
                                    size=args.size), Normalize.from_stats(*imagenet_stats)],
        bs=args.bs, num_workers=args.workers, device="cpu")
    seconds, images = time_epochs(lambda: dls.train, args.epochs)
    return images / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="photos to generate (default 2000)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--size", type=int, default=224, help="training image size (default 224)")
    parser.add_argument("--cache-px", type=int, default=256, help="cache / Resize size (default 256)")
    parser.add_argument("--bs", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (default 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="fastai num_workers and cache-building processes (default: all CPUs)")
    parser.add_argument("--skip-fastai", action="store_true", help="time the project's loader only")
    parser.add_argument("--dir", type=Path, default=None, help="keep the photos here (default: a temp folder)")
    args = parser.parse_args()

    folder = args.dir or Path(tempfile.mkdtemp(prefix="swipr-bench-loader-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        names = write_photos(folder, args.images, args.width, args.height, args.workers)
        mean_kb = np.mean([(folder / n).stat().st_size for n in names]) / 1024
        print(f"photos: {len(names)} at {args.width}x{args.height}, {mean_kb:.0f} KB on average "
              f"({time.perf_counter() - started:.1f} s to write)")
        is_valid = [i % 5 == 0 for i in range(len(names))]   # 20% validation, as a study splits
        print(f"same for both: {args.size} px, batch {args.bs}, flip + zoom <= 1.1, ImageNet normalisation, "
              f"{args.workers} workers, {args.epochs} training epochs of {len(names) - sum(is_valid)} images, CPU")
        ours, build_seconds = project_rate(folder, names, is_valid, args)
        print(f"project cache build (one-off): {build_seconds:.1f} s "
              f"({len(names) / build_seconds:.0f} images/s decoded)")
        for part, key in (("project loader", ""), ("gathering rows alone", " gather")):
            plain = ours[f"plain{key}"]
            print(f"{part}: plain (no advice) {plain:.0f}, default {ours[f'default{key}']:.0f} "
                  f"({ours[f'default{key}'] / plain:.2f}x), always advised {ours[f'advised{key}']:.0f} "
                  f"({ours[f'advised{key}'] / plain:.2f}x) images/s")
        if args.skip_fastai:
            return 0
        theirs = fastai_rate(folder, names, is_valid, args)
        print(f"fastai ImageDataLoaders.from_df: {theirs:.0f} images/s")
        print(f"ratio: {ours['default'] / theirs:.2f}")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
