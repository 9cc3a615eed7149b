"""Swipr search side by side with the script a user would write instead (issue 21, part 3).

The contender is a plain Optuna + fastai script written as optuna-integration documents it:
`FastAIPruningCallback` (fastai v2) reporting `valid_loss` every epoch to a `MedianPruner`
(`n_startup_trials=2`, as optuna-examples' fastai example), TPE with the same seed, fastai's own
`ImageDataLoaders` reading the photos from disk with the same fixed split, a timm network
through `vision_learner`, and `fit_sgdr` for the schedule (`frozen_then_unfrozen` as
`freeze()` + one head cycle, then `unfreeze()` + the SGDR cycles; fastai's `fit_sgdr` divides
by `cycle_mult - 1`, so equal cycles are one `fit_sgdr` each. Each fit restarts the callback's
step at 0, as it does for any user of it).

Both run the same number of trials on the same demo data, one after the other, with the same
torch thread count. For each contender the script prints its best-so-far validation loss at
fixed budgets of epochs trained (25%, 50% and 100% of the plain script's total epochs), and
the last line is

    anytime: X

the worst (largest), over those budgets, of swipr's best-so-far divided by the plain
script's — the median over the seeds run. A budget at which neither has finished a trial is
left out; one at which only swipr has counts 0, only the plain script inf. X <= 1.0 means swipr was at least as good at every
budget. A trial counts once it has finished a schedule: a COMPLETE trial's value, or a
pruned trial's best finished SGDR schedule where swipr records one (`best_cycle_end_loss`);
the plain script's pruned trials finished nothing.

    .venv/bin/python bench/peers.py [--seeds 0,1,2] [--trials 12] [--images 600] [--threads 2]

Several minutes per seed and contender on 2 cores: the figures are only comparable within one
run of this script (the machines are shared and noisy).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_SHARES = (0.25, 0.5, 1.0)

# The demo study's space (studies/demo.toml), written once here for both contenders.
SPACE = """
[space]
lr = { low = 1e-4, high = 0.05, log = true }
batch_size = [16, 32]
image_size = [32, 40]
freeze = ["unfrozen", "frozen_then_unfrozen"]
n_cycles = [2, 3]
cycle_len = 1
cycle_mult = [1, 2]
"""


@dataclass
class Finished:
    """One trial as a budget sees it: epochs it trained, and the loss of what it finished (or None)."""

    epochs: int
    loss: float | None


def study_file(folder: Path, data: Path, seed: int, trials: int) -> Path:
    """The demo study over `data`, with the given TPE seed and trial count; the rest as shipped."""
    demo = (ROOT / "studies" / "demo.toml").read_text()
    head = demo.split("\n[space]\n")[0] + "\n"   # the section, not a comment that names it
    head = head.replace('name = "demo"', f'name = "peers-{seed}"')
    head = head.replace("seed = 0", f"seed = {seed}").replace("n_trials = 14", f"n_trials = {trials}")
    head = head.replace('database = "../demo-data/pics.db"', f'database = "{data / "pics.db"}"')
    head = head.replace('device = "auto"', 'device = "cpu"')
    file = folder / f"peers-{seed}.toml"
    file.write_text(head + SPACE)
    return file


def run_swipr(file: Path, trials: int) -> list[Finished]:
    import optuna

    from search.cli import main
    from search.studyfile import load_study_file

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["study", "run", str(file), "--n-trials", str(trials)])
    if code not in (0, None):
        raise SystemExit(f"swipr study run exited {code}")
    spec = load_study_file(file)
    study = optuna.load_study(study_name=spec.study.name, storage=f"sqlite:///{file.with_suffix('.db')}")
    return [_swipr_finished(t) for t in _in_finish_order(study.trials)]


def _swipr_finished(trial) -> Finished:
    epochs = int(trial.user_attrs.get("epochs", 0))
    if trial.state.name == "COMPLETE":
        return Finished(epochs, trial.value)
    return Finished(epochs, trial.user_attrs.get("best_cycle_end_loss"))


def _in_finish_order(trials) -> list:
    done = [t for t in trials if t.state.is_finished() and t.datetime_complete is not None]
    return sorted(done, key=lambda t: t.datetime_complete)


def run_plain(file: Path, seed: int, trials: int) -> list[Finished]:
    """The plain script: what a user writes with optuna-integration's fastai callback."""
    import optuna
    import pandas as pd
    from fastai.vision.all import (Callback, CrossEntropyLossFlat, ImageDataLoaders, Resize, accuracy,
                                   aug_transforms, set_seed, vision_learner)
    from optuna_integration import FastAIPruningCallback

    from search.studyfile import load_study_file

    data = load_study_file(file).data
    table = pd.read_csv(data.labels_file)   # the split swipr made and used: the same images on each side
    table["is_valid"] = table["is_valid"].astype(bool)
    epochs_run: dict[int, int] = {}

    class EpochCounter(Callback):
        """Counts the epochs trained, pruned or not (before the pruning callback cancels a fit)."""

        order = 0

        def __init__(self):
            self.count = 0

        def after_epoch(self):
            self.count += 1

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 0.05, log=True)
        bs = trial.suggest_categorical("batch_size", [16, 32])
        size = trial.suggest_categorical("image_size", [32, 40])
        freeze = trial.suggest_categorical("freeze", ["unfrozen", "frozen_then_unfrozen"])
        n_cycles = trial.suggest_categorical("n_cycles", [2, 3])
        cycle_mult = trial.suggest_categorical("cycle_mult", [1, 2])
        set_seed(trial.number)
        dls = ImageDataLoaders.from_df(table, path=data.image_root, fn_col="path", label_col="label",
                                       valid_col="is_valid", item_tfms=Resize(size), batch_tfms=aug_transforms(),
                                       bs=bs, num_workers=0)
        pruning = FastAIPruningCallback(trial, monitor="valid_loss")
        learn = vision_learner(dls, "test_resnet", pretrained=False, loss_func=CrossEntropyLossFlat(),
                               metrics=accuracy, cbs=[pruning])
        epochs = EpochCounter()
        learn.add_cb(epochs)
        try:
            with learn.no_bar(), learn.no_logging():
                if freeze == "frozen_then_unfrozen":
                    learn.freeze()
                    learn.fit_sgdr(1, 1, lr_max=lr)
                    learn.unfreeze()
                if cycle_mult == 1:   # fastai's fit_sgdr divides by cycle_mult - 1: one fit a cycle
                    for _ in range(n_cycles):
                        learn.fit_sgdr(1, 1, lr_max=lr)
                else:
                    learn.fit_sgdr(n_cycles, 1, lr_max=lr, cycle_mult=cycle_mult)
                return float(learn.validate()[0])
        finally:
            epochs_run[trial.number] = epochs.count

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # The callback reports step 0 again in every fit after the first: Optuna says so each time.
        warnings.filterwarnings("ignore", message="The reported value is ignored")
        study.optimize(objective, n_trials=trials)
    return [Finished(epochs_run.get(t.number, 0), t.value if t.state.name == "COMPLETE" else None)
            for t in _in_finish_order(study.trials)]


def best_at(finished: list[Finished], budget: float) -> float | None:
    """The best finished loss among the trials done within `budget` epochs (in finish order)."""
    spent, best = 0, None
    for trial in finished:
        spent += trial.epochs
        if spent > budget:
            break
        if trial.loss is not None and not math.isnan(trial.loss):
            best = trial.loss if best is None else min(best, trial.loss)
    return best


def compare(swipr: list[Finished], plain: list[Finished]) -> tuple[list[tuple], float]:
    total = sum(t.epochs for t in plain)
    rows, worst = [], 0.0
    for share in BUDGET_SHARES:
        budget = share * total
        ours, theirs = best_at(swipr, budget), best_at(plain, budget)
        if ours is None and theirs is None:
            ratio = math.nan   # neither has finished anything yet: nothing to compare
        elif ours is None or theirs is None:
            ratio = math.inf if ours is None else 0.0
        else:
            ratio = ours / theirs
        rows.append((share, budget, ours, theirs, ratio))
        if not math.isnan(ratio):
            worst = max(worst, ratio)
    return rows, worst


def _fmt(value: float | None) -> str:
    return "  none" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="TPE seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--trials", type=int, default=12, help="trials per contender and seed (default 12)")
    parser.add_argument("--images", type=int, default=600, help="demo photos (default 600, as make demo)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import torch

    from swipr_core.demo_data import write_demo_data

    torch.set_num_threads(args.threads)
    anytimes, final_wins = [], 0
    with tempfile.TemporaryDirectory(prefix="swipr-peers-") as tmp:
        folder = Path(tmp)
        write_demo_data(folder / "data", n_images=args.images, seed=0)
        for seed in seeds:
            file = study_file(folder, folder / "data", seed, args.trials)
            started = time.monotonic()
            ours = run_swipr(file, args.trials)
            swipr_s = time.monotonic() - started
            started = time.monotonic()
            theirs = run_plain(file, seed, args.trials)
            plain_s = time.monotonic() - started
            rows, worst = compare(ours, theirs)
            print(f"seed {seed}: swipr {sum(t.epochs for t in ours)} epochs in {swipr_s:.0f} s, "
                  f"plain script {sum(t.epochs for t in theirs)} epochs in {plain_s:.0f} s "
                  f"({sum(t.loss is None for t in theirs)} of {len(theirs)} pruned)")
            for share, budget, a, b, ratio in rows:
                print(f"  at {share:4.0%} of the plain script's epochs ({budget:5.1f}): "
                      f"swipr {_fmt(a)}  plain {_fmt(b)}  ratio {ratio:.3f}")
            anytimes.append(worst)
            final_wins += rows[-1][4] < 1.0
    print(f"swipr at least as good at every budget in {sum(a <= 1.0 for a in anytimes)} of {len(seeds)} seeds; "
          f"final best better in {final_wins} of {len(seeds)}")
    print(f"anytime: {statistics.median(anytimes):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
