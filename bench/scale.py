"""What each step costs at the real job's size, and how it grows.

Generates N Swipr-shaped photos (JPEGs of 320-640 px a side, 20-60 KB) and a pics database,
then runs each step in a fresh process and prints its wall and CPU seconds (its children's
included), peak RSS (and RSS once the step's modules are imported, which is not timed),
and bytes read from disk (/proc/self/io, plus its children's):

- labels: `swipr labels` (read the pics table, check every file, split, write the CSV);
- cache build: decode every photo once into the uint8 cache at --cache-px;
- loader epoch: one training epoch of CachedBatches at --size px on the CPU, cache evicted
  from the page cache first (posix_fadvise DONTNEED), so a machine with plenty of RAM
  still shows the cold-cache behaviour; then the same rows gathered again, evicted after
  every batch, as when the cache is far larger than RAM (nothing read ahead survives to a
  later batch). Each is run side by side "advised" (each batch's rows asked for with
  MADV_WILLNEED, as a trial does when the cache outgrows the memory available) and "plain"
  (no advice: as a cache that fits in RAM is read).
  `read_amplification` = bytes read ÷ bytes of the rows used; the line
  `read_amplification: X` is the advised one with the cache far larger than RAM;
- status / best / report / dashboard page at --trials synthetic trials (7 params and 10
  epochs of intermediate values each, as a real study's).

    .venv/bin/python bench/scale.py                        # 2,000 photos, 40/400/2000 trials: a few minutes
    .venv/bin/python bench/scale.py --images 20000 --trials 40,400 --dir /data/scale

Sizes by flag; bench/README.md holds measured figures and the growth laws.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

YES_DIR, NO_DIR = "insta/ok", "insta/no"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STUDY_TOML = """\
[study]
name = "scale"
storage = "sqlite:///{storage}"

[data]
database = "{database}"
cache_px = {cache_px}

[data.rules]
yes_dirs = ["{yes}"]
no_dirs = ["{no}"]

[model]
arch = "test_resnet"
pretrained = false

[space]
lr = {{ low = 1e-4, high = 0.05, log = true }}
batch_size = [16, 32]
image_size = [224]
freeze = ["unfrozen", "frozen_then_unfrozen"]
n_cycles = [2, 3]
cycle_len = 1
cycle_mult = [1, 2]
"""


# --- the photos -----------------------------------------------------------------------------

def _photo(args) -> int:
    """One photo-like JPEG (smooth colour fields plus grain), 320-640 px a side, of a size
    drawn from 20-60 KB, as the Swipr photos are: the quality is tuned until it lands there.
    Returns its size in bytes."""
    from io import BytesIO

    from PIL import Image

    file, seed = args
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(320, 641, 2))
    coarse = rng.integers(0, 256, (max(1, height // 24), max(1, width // 24), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.normal(0, 4, (height, width, 1)).astype(np.int16)
    image = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))
    target, quality, low, high = rng.uniform(20e3, 60e3), 75, 5, 98
    for _ in range(7):   # bisect the quality: JPEG size grows with it
        encoded = BytesIO()
        image.save(encoded, format="JPEG", quality=quality)
        if abs(encoded.tell() - target) < 0.15 * target and 20e3 <= encoded.tell() <= 60e3:
            break
        low, high = (quality, high) if encoded.tell() < target else (low, quality)
        quality = (low + high) // 2
    file.write_bytes(encoded.getvalue())
    return encoded.tell()


def write_photos(root: Path, n: int) -> tuple[Path, list[int]]:
    """n photos under root (a fifth YES, as the real data), and pics.db listing them."""
    from swipr_core.data.demo import write_pics_table

    rows = [(f"{YES_DIR if i % 5 == 0 else NO_DIR}/img_{i:07d}.jpg", 0, 0, "25", 1, 0) for i in range(n)]
    for folder in (YES_DIR, NO_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    missing = [(root / row[0], i) for i, row in enumerate(rows) if not (root / row[0]).exists()]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_photo, missing, chunksize=32))
    database = write_pics_table(root / "pics.db", rows)
    return database, [(root / row[0]).stat().st_size for row in rows]


# --- measuring one step in a fresh process ------------------------------------------------------

def read_bytes() -> int:
    """Bytes this process caused to be read from the storage layer (page cache misses)."""
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("read_bytes"))


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM, which, unlike ru_maxrss,
    does not carry over the parent's peak from before the spawn's exec), in MB."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(f"{field}:")) / 1024


def _measured(step, args, preload) -> dict:
    warnings.simplefilter("ignore", FutureWarning)   # torch.jit's, on importing timm: not this bench's business
    for module in preload:   # imported before the counters start: a step's figures are its work
        __import__(module)
    start_rss = rss_mb()
    started, cpu, reads = time.perf_counter(), time.process_time(), read_bytes()
    extra = step(*args) or {}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu + children.ru_utime + children.ru_stime,
            "peak_rss_mb": max(rss_mb("VmHWM"), children.ru_maxrss / 1024),
            "rss_after_imports_mb": start_rss,
            "read_mb": (read_bytes() - reads + children.ru_inblock * 512) / 1e6, **extra}


def measure(step, *args, preload: tuple[str, ...] = ()) -> dict:
    """Run step(*args) in a fresh process (its own peak RSS and counters), with one torch
    thread, as a trial process on a loaded 2-core machine would be. `preload`: the modules
    the step imports, imported before it is measured (peak RSS still includes them)."""
    os.environ["OMP_NUM_THREADS"] = "1"   # inherited by the spawned process
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measured, step, args, preload).result()


def show(name: str, figures: dict) -> None:
    text = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
                     if k != "file")
    print(f"{name:32s} {text}", flush=True)


# --- the steps ------------------------------------------------------------------------------

def step_labels(root: Path, database: Path, labels_file: Path) -> dict:
    from swipr_core.data.labels import LabelRules
    from swipr_core.data.split import prepare_labels

    rules = LabelRules(yes_dirs=(YES_DIR,), no_dirs=(NO_DIR,))
    split = prepare_labels(database, root, rules, 0.2, 42, labels_file, rebuild=True, force=True)
    return {"rows": len(split)}


def step_cache(root: Path, labels_file: Path, cache_dir: Path, px: int) -> dict:
    from swipr_core.data.cache import build_cache
    from swipr_core.data.split import read_split

    cache = build_cache(root, read_split(labels_file).paths, cache_dir, px)
    return {"images": len(cache.paths), "cache_mb": cache.file.stat().st_size / 1e6, "file": str(cache.file)}


LOADER = ("torch", "swipr_core.data.loaders", "swipr_core.data.cache")


def evict_photos(root: Path) -> None:
    """Every photo out of the page cache: the labels and the cache build read a cold disk, as
    they do on the real job's 255k photos, which the page cache does not hold."""
    for file in root.rglob("*.jpg"):
        evict(file)


def evict(file: Path) -> None:
    """Drop the file's pages from the page cache (those no process has mapped)."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)   # a page not yet written back (a photo just made) would stay
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _cached_array(cache_file: str, n: int, px: int):
    from swipr_core.data.cache import ImageCache

    return ImageCache(Path(cache_file), tuple(f"x{i}" for i in range(n)), px).open()


def step_epoch(cache_file: str, n: int, px: int, rows: list[int], size: int, bs: int, advised: bool) -> dict:
    """One training epoch over `rows`, cold: the cache evicted first."""
    import torch

    from swipr_core.data.loaders import Augment, CachedBatches

    torch.set_num_threads(1)
    evict(Path(cache_file))
    reads, started = read_bytes(), time.perf_counter()
    loader = CachedBatches(_cached_array(cache_file, n, px), rows, [i % 2 for i in rows], bs,
                           Augment(size, IMAGENET_MEAN, IMAGENET_STD), train=True, advise=advised)
    images = sum(len(x) for x, _ in loader)
    seconds = time.perf_counter() - started
    return {"images_per_s": images / seconds, "read_amplification": (read_bytes() - reads) / (images * px * px * 3)}


def step_thrash(cache_file: str, n: int, px: int, rows: list[int], bs: int, advised: bool) -> dict:
    """The epoch's batches gathered, the cache evicted before each: a cache far larger than RAM."""
    from swipr_core.data.loaders import gather_rows

    array = _cached_array(cache_file, n, px)
    order = np.random.default_rng(0).permutation(np.asarray(rows))
    reads, used, started = read_bytes(), 0, time.perf_counter()
    for start in range(0, len(order), bs):
        evict(Path(cache_file))
        used += gather_rows(array, np.sort(order[start:start + bs]), advise=advised).numel()
    return {"images_per_s": len(order) / (time.perf_counter() - started),
            "read_amplification": (read_bytes() - reads) / used}


def step_cli(*argv: str) -> dict:
    """A swipr command in this process (so its costs are this process's)."""
    from search.cli import main

    code = main(list(argv))
    if code not in (0, None):
        raise SystemExit(f"swipr {' '.join(argv)} exited with {code}")
    return {}


def step_dashboard(storage: str) -> dict:
    """The study's page data from optuna-dashboard's WSGI app, as a browser fetches it."""
    from io import BytesIO

    import optuna
    import optuna_dashboard

    from objectives.optuna_compat import study_id as id_of

    study_id = id_of(optuna.load_study(study_name="scale", storage=storage))
    app = optuna_dashboard.wsgi(storage)
    body, status = BytesIO(), []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/api/studies/{study_id}", "QUERY_STRING": "",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0", "wsgi.input": BytesIO(), "wsgi.errors": sys.stderr,
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    for chunk in app(environ, lambda code, headers, exc=None: status.append(code)):
        body.write(chunk)
    if not status or not status[0].startswith("200"):
        raise SystemExit(f"dashboard answered {status}")
    return {"response_mb": body.tell() / 1e6}


def synthetic_study(storage: str, n_trials: int) -> None:
    """Grow the study to n_trials finished trials shaped like real ones: 7 params, 10 epochs each."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="scale", storage=storage, direction="minimize", load_if_exists=True)
    space = {"lr": FloatDistribution(1e-4, 0.05, log=True), "batch_size": CategoricalDistribution([16, 32]),
             "image_size": CategoricalDistribution([224]), "n_cycles": IntDistribution(2, 3),
             "freeze": CategoricalDistribution(["unfrozen", "frozen_then_unfrozen"]),
             "cycle_len": CategoricalDistribution([1]), "cycle_mult": CategoricalDistribution([1, 2])}
    have = len(study.get_trials(deepcopy=False))
    rng = np.random.default_rng(n_trials)
    trials = []
    for _ in range(n_trials - have):
        params = {"lr": float(10 ** rng.uniform(-4, np.log10(0.05))), "batch_size": int(rng.choice([16, 32])),
                  "image_size": 224, "n_cycles": int(rng.integers(2, 4)), "freeze": str(rng.choice(
                      ["unfrozen", "frozen_then_unfrozen"])), "cycle_len": 1, "cycle_mult": int(rng.choice([1, 2]))}
        curve = 0.7 * np.exp(-np.arange(10) / rng.uniform(2, 8)) + rng.uniform(0.2, 0.4)
        trials.append(optuna.trial.create_trial(
            params=params, distributions=space, value=float(curve[-1]),
            intermediate_values={epoch: float(v) for epoch, v in enumerate(curve)},
            user_attrs={"epochs": 10, "cpu_threads": 1, "seconds": float(rng.uniform(60, 600))}))
    study.add_trials(trials)


def trial_steps(folder: Path, database: Path, cache_px: int, counts: list[int]) -> None:
    """status, best, report and the dashboard page at each study size; one study, grown."""
    storage_file = folder / "study.db"
    storage = f"sqlite:///{storage_file}"
    study_file = folder / "scale.toml"
    study_file.write_text(STUDY_TOML.format(storage=storage_file, database=database, cache_px=cache_px,
                                            yes=YES_DIR, no=NO_DIR))
    # Written in memory, where SQLite's commit a trial costs no fsync (minutes for 2,000 on a
    # shared disk), then copied to the disk the commands read it from.
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as scratch:
        for n_trials in sorted(counts):
            measure(synthetic_study, f"sqlite:///{scratch}/study.db", n_trials)
            shutil.copyfile(f"{scratch}/study.db", storage_file)
            study_commands(folder, study_file, storage, n_trials)


def study_commands(folder: Path, study_file: Path, storage: str, n_trials: int) -> None:
    for name, argv in (("status", ("study", "status", str(study_file))),
                       ("best", ("study", "best", str(study_file))),
                       ("report", ("study", "report", str(study_file), "--out", str(folder / "report")))):
        # search.cli imports what a command needs when it runs: preloaded too, so as not to time imports
        modules = ("search.cli", "search.commands.study", "search.views.report") if name == "report" \
            else ("search.cli", "search.commands.study")
        show(f"{name} @ {n_trials} trials", measure(_quiet, step_cli, *argv, preload=modules))
    show(f"dashboard page @ {n_trials} trials", measure(step_dashboard, storage, preload=("optuna_dashboard",)))


def _quiet(step, *args) -> dict:
    """step(*args) with its stdout (a table of every trial) thrown away."""
    with open(os.devnull, "w") as null:
        saved, sys.stdout = sys.stdout, null
        try:
            return step(*args)
        finally:
            sys.stdout = saved


def loader_steps(cache: dict, labels_file: Path, args) -> None:
    from swipr_core.data.loaders import outgrows_ram
    from swipr_core.data.split import read_split

    split = read_split(labels_file)
    rows = split.indices(valid=False)
    array = _cached_array(cache["file"], cache["images"], args.cache_px)
    print(f"loader: {len(rows)} training rows of {cache['images']}, {args.cache_px} px cache "
          f"({cache['cache_mb']:.0f} MB), {args.size} px, batch {args.bs}, CPU, 1 torch thread; by default a "
          f"trial here would {'advise' if outgrows_ram(array) else 'not advise (the cache fits in RAM)'}", flush=True)
    del array
    for advised in (False, True, False, True):   # alternated, so load on the machine hits both alike
        label = "advised" if advised else "plain"
        show(f"loader epoch, cold, {label}", measure(step_epoch, cache["file"], cache["images"], args.cache_px,
                                                       rows, args.size, args.bs, advised, preload=LOADER))
    for advised in (False, True):
        label = "advised" if advised else "plain"
        figures = measure(step_thrash, cache["file"], cache["images"], args.cache_px, rows, args.bs, advised,
                          preload=LOADER)
        show(f"gather, cache >> RAM, {label}", figures)
        if advised:
            print(f"read_amplification: {figures['read_amplification']:.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="photos to generate (default 2000)")
    parser.add_argument("--trials", default="40,400,2000", help="synthetic study sizes (default 40,400,2000)")
    parser.add_argument("--cache-px", type=int, default=256, help="cache size in px (default 256, the real job's)")
    parser.add_argument("--size", type=int, default=224, help="training image size (default 224)")
    parser.add_argument("--bs", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--dir", type=Path, default=None, help="keep photos and cache here (default: a temp folder)")
    parser.add_argument("--skip", default="", help="steps to leave out, e.g. trials or labels,cache,loader")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    counts = [int(part) for part in args.trials.split(",") if part.strip()]
    folder = args.dir or Path(tempfile.mkdtemp(prefix="swipr-bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        database, sizes = write_photos(folder / "photos", args.images)
        print(f"photos: {len(sizes)}, {np.mean(sizes) / 1024:.0f} KB on average ({min(sizes) / 1024:.0f}-"
              f"{max(sizes) / 1024:.0f} KB), {time.perf_counter() - started:.0f} s to write; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
        labels_file = folder / "labels.csv"
        if "labels" not in skip or not labels_file.exists():
            evict_photos(folder / "photos")
            show("labels", measure(step_labels, folder / "photos", database, labels_file,
                                   preload=("swipr_core.data.split",)))
        if "cache" not in skip or "loader" not in skip:
            evict_photos(folder / "photos")
            cache = measure(step_cache, folder / "photos", labels_file, folder / "cache", args.cache_px,
                            preload=("swipr_core.data.cache", "swipr_core.data.split"))
            show("cache build", cache)
        if "loader" not in skip:
            loader_steps(cache, labels_file, args)
        if "trials" not in skip:
            trial_steps(folder, database, args.cache_px, counts)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
