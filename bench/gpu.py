"""How fast a trial trains on one GPU, against a raw PyTorch loop: one command, JSON out.

    python bench/gpu.py                      # ~4-5 minutes on one H200; JSON on stdout, progress on stderr
    python bench/gpu.py --parts packed       # only some parts: raw, project, packed, fused, compile
    python bench/gpu.py --cpu-smoke          # a tiny model on the CPU: checks this script, measures nothing

Needs no network and no data: resnext50_32x4d with pretrained=False weights, GPU-resident
random tensors for the raw loop, and a generated uint8 image cache (the same .npy memmap
format the project builds) for the project's trials. Parts, in order:

- raw: a plain loop (bf16 autocast, channels_last, fused AdamW) on random tensors already
  on the GPU: the most one training step can do. Batch 24 and 128, 224 and 229 px.
- project: a real trial, swipr_core.train.run.train (fastai Learner, CachedBatches from the
  shared memmap cache, augmentation on the GPU), same batch, size and precision; its
  images/s after a warm-up epoch, and the ratio to raw.
- packed: K such trials as K processes on the one GPU over the same cache, started
  together; their total images/s and the ratio to one trial (`--trials-per-gpu`).
- fused: what-if: the project trial with torch's fused AdamW in place of fastai's Adam
  (a Python loop over the parameters), to show whether the optimizer is what holds a
  small-batch trial back.
- compile: torch.compile on and off, for the raw loop and a project trial
  ([train] compile; "auto" stays off until these figures say otherwise).

Each part is skipped, and listed under "skipped", when the time budget (--budget) would
run out; errors are recorded per part, not fatal. Exit 2 with no CUDA device.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("raw", "project", "packed", "fused", "compile")
# Rough seconds each unit of work takes on an H200 (process start, cuDNN autotuning and
# compiling included), used only to skip what would overrun the budget.
COST = {"raw": 12, "project": 15, "packed": 35, "fused": 15, "compile_raw": 75, "compile_project": 110}


def log(message: str) -> None:
    print(f"[bench/gpu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Settings:
    """What one run measures: the real thing on CUDA, a tiny stand-in for --cpu-smoke."""

    def __init__(self, args):
        import torch

        self.smoke = args.cpu_smoke
        self.device = torch.device("cpu" if self.smoke else "cuda")
        self.arch = "test_resnet" if self.smoke else "resnext50_32x4d"
        self.batches = (4, 8) if self.smoke else (24, 128)
        self.sizes = (32, 36) if self.smoke else (224, 229)
        self.cache_px = 40 if self.smoke else 256
        self.steps = 3 if self.smoke else args.steps          # timed steps, raw loop
        self.warmup = 2 if self.smoke else args.warmup
        self.epoch_steps = 3 if self.smoke else args.epoch_steps   # steps per epoch, project trials
        self.epochs = 3   # epoch 0 warms up (cuDNN autotuning, allocator, compiling); 1 and 2 are timed
        self.precision = "fp32" if self.smoke else "bf16"
        self.packed = [(4, 2, None), (8, 2, 36)] if self.smoke else parse_packed(args.packed)


def parse_packed(text: str) -> list[tuple[int, int, int | None]]:
    """"24:4,128:2@229" -> [(24, 4, None), (128, 2, 229)]: batch, K trials, size (default the first)."""
    runs = []
    for item in text.split(","):
        item, _, size = item.partition("@")
        batch, k = item.split(":")
        runs.append((int(batch), int(k), int(size) if size else None))
    return runs


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


# --- raw loop ------------------------------------------------------------------------------

def raw_loop(s: Settings, batch: int, size: int, compile_mode: str | None = None) -> dict:
    """Images/s of a bare training step on tensors already on the device."""
    import timm
    import torch

    cuda = s.device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    reset_peak(s.device)
    model = timm.create_model(s.arch, pretrained=False, num_classes=2).to(s.device)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compile_mode:
        model.compile(mode=None if compile_mode == "default" else compile_mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01,
                            fused=cuda)
    x = torch.randn(batch, 3, size, size, device=s.device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,), device=s.device)
    step = _train_step(model, opt, x, y, s.device, graphs=compile_mode == "reduce-overhead")

    started = time.perf_counter()
    for _ in range(s.warmup):
        step()
    sync(s.device)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(s.steps):
        step()
    sync(s.device)
    seconds = time.perf_counter() - started
    result = {"batch": batch, "size": size, "images_per_s": round(batch * s.steps / seconds, 1),
              "warmup_seconds": round(warm, 1), "peak_gpu_gb": peak_gb(s.device)}
    del step, model, opt, x, y   # the step's closure holds them too: free all before the next measure
    reset_peak(s.device)
    return result


def _train_step(model, opt, x, y, device, graphs: bool):
    """One bare training step on fixed tensors, as a closure over them."""
    import torch
    import torch.nn.functional as F

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# --- project trial -------------------------------------------------------------------------

def make_cache(folder: Path, n: int, px: int) -> Path:
    """A generated image cache in the project's format (uint8 N×px×px×3 .npy memmap)."""
    file = folder / f"bench-{n}x{px}.npy"
    if not file.exists():
        array = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(n, px, px, 3))
        rng = np.random.default_rng(0)
        for start in range(0, n, 256):
            stop = min(n, start + 256)
            array[start:stop] = rng.integers(0, 256, (stop - start, px, px, 3), dtype=np.uint8)
        array.flush()
        del array
    return file


def _dataset(cache_file: Path, n_train: int, n_valid: int, px: int):
    from swipr_core.data.dataset import Dataset
    from swipr_core.data.split import LabeledSplit

    n = n_train + n_valid
    paths = tuple(f"bench/{i}.jpg" for i in range(n))
    labels = tuple(("NO", "YES")[i % 2] for i in range(n))
    is_valid = tuple(i >= n_train for i in range(n))
    split = LabeledSplit(paths, labels, is_valid, fingerprint="bench", meta={})
    # The file holds more rows than this run uses; a view of the first n keeps ImageCache's shape check happy.
    return Dataset(split=split, cache=_RowsCache(cache_file, paths, px))


class _RowsCache:
    """ImageCache over the first len(paths) rows of a bigger generated cache file."""

    def __init__(self, file: Path, paths: tuple, px: int):
        self.file, self.paths, self.px = file, paths, px

    def open(self):
        return np.load(self.file, mmap_mode="r")[: len(self.paths)]


def project_trial(spec: dict) -> dict:
    """One real trial (swipr_core.train.run.train) for `epochs` epochs; images/s after epoch 0.

    With spec["barrier"], waits after epoch 0 until spec["k"] trials are ready, so packed
    trials are timed while all of them run."""
    import torch

    from swipr_core.train.model import ModelSpec
    from swipr_core.train.run import train
    from swipr_core.train.schedule import TrainConfig

    device = torch.device(spec["device"])
    batch, epochs = spec["batch"], spec["epochs"]
    n_train = batch * spec["epoch_steps"]
    dataset = _dataset(Path(spec["cache"]), n_train, batch, spec["px"])
    config = TrainConfig(lr=1e-4, batch_size=batch, image_size=spec["size"], freeze="unfrozen", n_cycles=1,
                         cycle_len=epochs, cycle_mult=1, seed=spec.get("seed", 0))
    stamps: list[float] = []

    def on_epoch(record) -> None:
        sync(device)
        if not stamps and spec.get("barrier"):
            barrier = Path(spec["barrier"])
            (barrier / f"ready-{os.getpid()}").touch()
            deadline = time.time() + 120   # a sibling that died must not hang the benchmark
            while len(list(barrier.glob("ready-*"))) < spec["k"] and time.time() < deadline:
                time.sleep(0.02)
        stamps.append(time.time())

    reset_peak(device)
    started = time.time()
    with _fused_adamw(spec.get("fused", False), device):
        train(dataset, config, ModelSpec(arch=spec["arch"], pretrained=False), device=str(device),
              precision=spec["precision"], on_epoch=on_epoch, compile=spec.get("compile", "off"))
    images = n_train * (epochs - 1)
    seconds = stamps[-1] - stamps[0]
    return {"batch": batch, "size": spec["size"], "images_per_s": round(images / seconds, 1),
            "start": stamps[0], "end": stamps[-1], "images": images,
            "first_epoch_seconds": round(stamps[0] - started, 1), "peak_gpu_gb": peak_gb(device)}


class _fused_adamw:
    """Within: fastai Learners get torch's AdamW (fused on CUDA) through fastai's
    OptimWrapper, with fastai Adam's defaults, instead of fastai's own Adam."""

    def __init__(self, on: bool, device):
        self.on, self.device = on, device

    def __enter__(self):
        if not self.on:
            return
        import fastai.learner
        import torch
        from fastai.optimizer import OptimWrapper

        self.original = original = fastai.learner.Learner
        opt = partial(torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01,
                      fused=self.device.type == "cuda")

        class FusedLearner(original):
            def __init__(self, *args, **kwargs):
                kwargs.setdefault("opt_func", partial(OptimWrapper, opt=opt))
                super().__init__(*args, **kwargs)

        fastai.learner.Learner = FusedLearner

    def __exit__(self, *exc):
        if self.on:
            import fastai.learner

            fastai.learner.Learner = self.original


def trial_spec(s: Settings, cache: Path, batch: int, size: int, **extra) -> dict:
    return {"device": str(s.device), "arch": s.arch, "batch": batch, "size": size, "px": s.cache_px,
            "cache": str(cache), "epochs": s.epochs, "epoch_steps": s.epoch_steps, "precision": s.precision,
            **extra}


def packed_trials(s: Settings, cache: Path, batch: int, size: int, k: int, work: Path) -> dict:
    """K trial processes on one device over one cache; their total images/s."""
    barrier = Path(tempfile.mkdtemp(dir=work, prefix=f"barrier-{batch}-{k}-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // k))}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker",
                               json.dumps(trial_spec(s, cache, batch, size, barrier=str(barrier), k=k, seed=i))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for i in range(k)]
    results, errors = [], []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode == 0:
            results.append(json.loads(out.strip().splitlines()[-1]))
        else:
            errors.append(err.strip().splitlines()[-3:])
    if errors:
        return {"batch": batch, "size": size, "k": k, "error": errors}
    window = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["images"] for r in results) / window
    return {"batch": batch, "size": size, "k": k, "total_images_per_s": round(total, 1),
            "per_trial_images_per_s": [r["images_per_s"] for r in results],
            "peak_gpu_gb_per_trial": max((r["peak_gpu_gb"] or 0) for r in results) or None}


# --- driver --------------------------------------------------------------------------------

class Budget:
    def __init__(self, seconds: float):
        self.started, self.seconds = time.perf_counter(), seconds
        self.skipped: list[str] = []

    def allows(self, what: str, cost: float) -> bool:
        left = self.seconds - (time.perf_counter() - self.started)
        if cost > left:
            self.skipped.append(f"{what}: needs ~{cost:.0f} s, {max(0, left):.0f} s of the budget left")
            log(f"skip {what} (time budget)")
            return False
        return True


def attempt(what: str, run) -> dict:
    log(f"{what} ...")
    try:
        result = run()
    except Exception as error:   # one broken part must not lose the other figures
        log(f"{what} failed: {error}")
        return {"what": what, "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc().splitlines()[-6:]}
    log(f"{what}: {result.get('images_per_s', result.get('total_images_per_s'))} images/s")
    return result


def device_info(s: Settings) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": str(s.device), "precision": s.precision, "arch": s.arch}
    if s.device.type == "cuda":
        props = torch.cuda.get_device_properties(s.device)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cpus=os.cpu_count())
    return info


def run(args) -> dict:
    s = Settings(args)
    budget = Budget(args.budget)
    parts = set(args.parts.split(",")) if args.parts else set(PARTS)
    unknown = parts - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    work = Path(tempfile.mkdtemp(prefix="swipr-bench-gpu-"))
    try:
        return _run_parts(s, budget, parts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_parts(s: Settings, budget: Budget, parts: set, work: Path) -> dict:
    out: dict = {"info": device_info(s), "settings": {"raw_steps": s.steps, "raw_warmup": s.warmup,
                                                     "trial_epochs": s.epochs, "trial_epoch_steps": s.epoch_steps}}
    largest = max(s.batches) * s.epoch_steps + max(s.batches)
    cache = make_cache(work, largest, s.cache_px)
    log(f"cache: {largest} generated images at {s.cache_px} px in {cache}")
    raw, project = {}, {}

    if "raw" in parts:
        out["raw"] = []
        for batch in s.batches:
            for size in s.sizes:
                if budget.allows(f"raw {batch}@{size}", COST["raw"]):
                    result = attempt(f"raw {batch}@{size}", partial(raw_loop, s, batch, size))
                    out["raw"].append(result)
                    raw[batch, size] = result.get("images_per_s")
    if "project" in parts:
        out["project"] = []
        for batch in s.batches:
            for size in s.sizes:
                if budget.allows(f"project {batch}@{size}", COST["project"]):
                    result = attempt(f"project {batch}@{size}",
                                     partial(project_trial, trial_spec(s, cache, batch, size)))
                    if raw.get((batch, size)) and "images_per_s" in result:
                        result["ratio_to_raw"] = round(result["images_per_s"] / raw[batch, size], 3)
                    out["project"].append(result)
                    project[batch, size] = result.get("images_per_s")
    if "packed" in parts:
        out["packed"] = []
        for batch, k, size in s.packed:
            size = size or s.sizes[0]
            if budget.allows(f"packed {k}×{batch}@{size}", COST["packed"]):
                result = attempt(f"packed {k}×{batch}@{size}", partial(packed_trials, s, cache, batch, size, k, work))
                if project.get((batch, size)) and "total_images_per_s" in result:
                    result["ratio_to_one_trial"] = round(result["total_images_per_s"] / project[batch, size], 3)
                out["packed"].append(result)
    if "fused" in parts:
        out["fused"] = []
        for batch in s.batches:
            size = s.sizes[0]
            if budget.allows(f"fused {batch}@{size}", COST["fused"]):
                result = attempt(f"fused AdamW {batch}@{size}",
                                 partial(project_trial, trial_spec(s, cache, batch, size, fused=True)))
                if raw.get((batch, size)) and "images_per_s" in result:
                    result["ratio_to_raw"] = round(result["images_per_s"] / raw[batch, size], 3)
                out["fused"].append(result)
    if "compile" in parts:
        out["compile"] = compile_part(s, cache, budget, raw, project)
    for row in [*out.get("project", []), *out.get("fused", []), *out.get("compile", [])]:
        for key in ("start", "end", "images"):   # timing internals, not figures
            row.pop(key, None)
    out["targets"] = targets(out, s)
    out["recommendation"] = recommendation(out, s)
    out["skipped"] = budget.skipped
    out["seconds"] = round(time.perf_counter() - budget.started, 1)
    return out


def compile_part(s: Settings, cache: Path, budget: Budget, raw: dict, project: dict) -> list:
    if s.smoke:
        return [{"skipped": "torch.compile is not measured in a CPU smoke run"}]
    results = []
    size = s.sizes[0]
    for batch in s.batches:   # eager baselines, where this run has none yet
        if not raw.get((batch, size)) and budget.allows(f"raw {batch}@{size}", COST["raw"]):
            raw[batch, size] = attempt(f"raw {batch}@{size}", partial(raw_loop, s, batch, size)).get("images_per_s")
    if not project.get((s.batches[0], size)) and budget.allows(f"project {s.batches[0]}@{size}", COST["project"]):
        project[s.batches[0], size] = attempt(f"project {s.batches[0]}@{size}", partial(
            project_trial, trial_spec(s, cache, s.batches[0], size))).get("images_per_s")
    for batch in s.batches:
        if budget.allows(f"compile raw {batch}@{size}", COST["compile_raw"]):
            result = attempt(f"raw compiled {batch}@{size}", partial(raw_loop, s, batch, size, "default"))
            results.append(_against_eager(result, "raw", "default", raw.get((batch, size))))
    batch = s.batches[0]
    if budget.allows(f"compile project {batch}@{size}", COST["compile_project"]):
        result = attempt(f"project compiled {batch}@{size}",
                         partial(project_trial, trial_spec(s, cache, batch, size, compile="on")))
        results.append(_against_eager(result, "project", "on", project.get((batch, size))))
    if budget.allows(f"cuda graphs raw {batch}@{size}", COST["compile_raw"]):
        result = attempt(f"raw reduce-overhead {batch}@{size}", partial(raw_loop, s, batch, size, "reduce-overhead"))
        results.append(_against_eager(result, "raw", "reduce-overhead (CUDA graphs)", raw.get((batch, size))))
    return results


def _against_eager(result: dict, what: str, compile_mode: str, eager: float | None) -> dict:
    """A compiled run's figures, labelled, with its speed-up over the eager run where both ran."""
    result.update(what=what, compile=compile_mode, eager_images_per_s=eager)
    if eager and "images_per_s" in result:
        result["speedup"] = round(result["images_per_s"] / eager, 3)
    return result


def _find(rows, **match):
    for row in rows or []:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def targets(out: dict, s: Settings) -> dict:
    """Each target a GPU run is held to, met or not, from what was measured (None where a figure
    is missing)."""
    small, big = s.batches
    size = s.sizes[0]
    found = {}
    for batch in s.batches:
        row = _find(out.get("project"), batch=batch, size=size)
        ratio = row.get("ratio_to_raw") if row else None
        found[f"project >= 0.9 x raw, batch {batch}, {size} px"] = \
            {"value": ratio, "met": None if ratio is None else ratio >= 0.9}
    row = _find(out.get("project"), batch=big, size=size)
    rate = row.get("images_per_s") if row else None
    found[f"project >= 5000 images/s, batch {big}, {size} px, {s.precision}"] = \
        {"value": rate, "met": None if rate is None else rate >= 5000}
    ratios = [r.get("ratio_to_one_trial") for r in out.get("packed", []) if r.get("batch") == small]
    ratios = [r for r in ratios if r is not None]
    best = max(ratios) if ratios else None
    found[f"packed >= 2.5 x one trial, batch {small}"] = {"value": best, "met": None if best is None else best >= 2.5}
    return found


def recommendation(out: dict, s: Settings) -> dict:
    """Defaults these figures argue for: trials per GPU at the small batch, and compile."""
    small = s.batches[0]
    packed = [r for r in out.get("packed", []) if r.get("batch") == small and r.get("ratio_to_one_trial")]
    best = max(packed, key=lambda r: r["total_images_per_s"], default=None)
    trials = best["k"] if best and best["ratio_to_one_trial"] > 1.1 else 1
    compiled = [r for r in out.get("compile", []) if r.get("what") == "project" and r.get("speedup")]
    compile_on = bool(compiled) and all(r["speedup"] > 1.05 for r in compiled)
    return {"trials_per_gpu": trials if packed else None,
            "compile_auto_on_cuda": compile_on if compiled else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="", help=f"comma-separated subset of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--budget", type=float, default=285, help="seconds; parts that would overrun are skipped")
    parser.add_argument("--steps", type=int, default=40, help="timed steps of the raw loop (default 40)")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up steps of the raw loop (default 8)")
    parser.add_argument("--epoch-steps", type=int, default=40, help="steps per epoch of a project trial (default 40)")
    parser.add_argument("--packed", default="24:2,24:4,128:2",
                        help="packed runs as batch:K[@size], comma-separated (default 24:2,24:4,128:2 at 224 px)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU: checks the script only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:   # one packed trial, started by packed_trials
        print(json.dumps(project_trial(json.loads(args.worker))))
        return 0
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: nothing measured", file=sys.stderr)
        print(json.dumps({"error": "no CUDA device: nothing measured"}))
        return 2
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
