"""Swipr search side by side with the script a user would write instead.

The contender is a plain Optuna + fastai script written as optuna-integration documents it:
`FastAIPruningCallback` (fastai v2) reporting `valid_loss` every epoch to a `MedianPruner`
(`n_startup_trials=2`, as optuna-examples' fastai example), TPE with the same seed (Optuna's
default 10 start-up trials; `--plain-startup 5` adds a row with swipr's 5), fastai's own
`ImageDataLoaders` reading the photos from disk with the same fixed split, a timm network
through `vision_learner`, and `fit_sgdr` for the schedule (`frozen_then_unfrozen` as
`freeze()` + one head cycle, then `unfreeze()` + the SGDR cycles; fastai's `fit_sgdr` divides
by `cycle_mult - 1`, so equal cycles are one `fit_sgdr` each. Each fit restarts the callback's
step at 0, as it does for any user of it). Both search studies/demo.toml's space as shipped,
[space.stage2] included (the plain script: new loaders at stage 2's size on the same learner);
stage 1's lr is the demo's range test times a factor for swipr, the plain range 1e-4..0.05 for
the plain script. `--one-stage` leaves [space.stage2] out on both sides; `--pretrained` starts
both from WEIGHTS.

Swipr runs `--trials` trials; the plain script then runs until it has spent as many epochs
(it stops after the trial that reaches them), one after the other, with the same torch
thread count (swipr's trials get it through SWIPR_CPU_THREADS). Epochs are counted the same
way on both sides: every epoch trained, the head epoch and a pruned trial's partial run
included; swipr's lr range tests as their epochs-equivalent, charged to the trial that ran
them. For each contender the script prints its best-so-far validation loss at 25%, 50%, 75%
and 100% of the larger of the two totals. Per seed it prints that seed's anytime: the worst
(largest), over those budgets, of swipr's best-so-far divided by the plain script's. The last
lines are

    anytime: X (min A, median X, max B) over N seeds [row]
    anytime_max: B

X is the median over the seeds, B the worst seed. A budget at which neither has finished a
trial is left out; one at which only swipr has counts 0, only the plain script inf. X <= 1.0
means swipr was at least as good at every budget. A trial counts once it has ended and
finished a schedule: a COMPLETE trial's value, or a pruned trial's best finished SGDR schedule
where swipr records one (`best_cycle_end_loss`); the plain script's pruned trials finished
nothing. Beside it, "on the way" also counts a schedule a nested swipr trial finished inside
its longer run as soon as its epochs are spent (`finished_schedules`: a 2-cycle run inside a
3-cycle budget, which `swipr fit` can replay); the plain script records nothing finished
before its trial ends, so its figures are the same either way.

    .venv/bin/python bench/peers.py [--seeds 0,1,2,3,4] [--trials 12] [--images 600] [--threads 2]
        [--plain-startup 10[,5]] [--pretrained] [--one-stage]
        [--variant "pruner_warmup_epochs = 1; warm_start = false" ...] [--cache DIR [--only swipr|plain|cached]]
        [--accept-unversioned]

`--variant` runs swipr with [study] lines other than the shipped ones (repeatable; "default"
is the study file as shipped; the last lines are the first variant's). `--cache` keeps each
contender's trials per seed as JSON with what made them (bench/provenance.py: commit, code,
versions, space, data, split, threads, settings), so another run (another variant, or `--only`
one contender in a second process) reuses them instead of training again; each reused file is
named with when and at which commit it was made, and one that this run would not make the same
way stops the run with one line saying what differs. A cached plain run that spent fewer epochs
than the comparison needs is made again; one that spent more is cut at the trial that reaches
swipr's total. `--only plain` needs swipr's trials in the cache first; `--only cached`
re-prints what the cache holds. Files recorded before provenance are read only with
--accept-unversioned.

The times are only comparable within one run of this script (the machines are shared and
noisy); the epochs and losses don't depend on the load.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import provenance  # noqa: E402
from objectives.trial_attrs import attrs_of  # noqa: E402

BUDGET_SHARES = (0.25, 0.5, 0.75, 1.0)   # of the larger of the two totals
DEFAULT_VARIANT = "default"   # the study file's [study] lines as shipped
DEMO = ROOT / "studies" / "demo.toml"
WEIGHTS = ROOT / "bench" / "results" / "demo_pretrained_test_resnet.safetensors"   # bench/make_pretrained.py
OPTUNA_STARTUP = 10           # TPESampler's default n_startup_trials
MAX_PLAIN_TRIALS = 500        # a bound only: the plain script stops once it has spent swipr's epochs

# The plain script's space: studies/demo.toml's, written as a user writes it with trial.suggest_*.
# Stage 1's lr is the plain range the demo's finder replaced (a plain script has no range test);
# tests/test_bench_peers.py checks the rest against the study file.
PLAIN_SPACE = {
    "lr": (1e-4, 0.05), "batch_size": [16, 32], "image_size": [32, 40],
    "freeze": ["unfrozen", "frozen_then_unfrozen"], "n_cycles": [2, 3], "cycle_mult": [1, 2],
}
PLAIN_STAGE2 = {"lr": (1e-4, 0.05), "image_size": 48, "freeze": ["frozen", "unfrozen"], "n_cycles": [0, 1, 2]}


@dataclass(frozen=True)
class Form:
    """What both contenders run besides the search: the demo's space with or without its stage 2,
    from random or WEIGHTS' pretrained weights."""

    one_stage: bool = False
    pretrained: bool = False

    @property
    def tag(self) -> str:
        return ("-1stage" if self.one_stage else "") + ("-pretrained" if self.pretrained else "")


@dataclass
class Finished:
    """One trial as a budget sees it: epochs it trained, the loss of what it finished (or None),
    and where on the way it finished each schedule: (epochs into the trial, loss)."""

    epochs: int
    loss: float | None
    on_the_way: list[tuple[int, float]] = field(default_factory=list)


def study_file(folder: Path, data: Path, seed: int, trials: int, variant: str = DEFAULT_VARIANT,
               form: Form | None = None) -> Path:
    """The demo study over `data`, with the given TPE seed and trial count, the [study] lines of
    `variant` ("key = value; key = value", or "default") in place of the shipped ones, its space
    as shipped (stage 2 included; `form.one_stage`: without [space.stage2]) and, with
    `form.pretrained`, starting from WEIGHTS."""
    form = form or Form()
    demo = DEMO.read_text()
    head = demo.split("\n[space]\n")[0] + "\n"   # the section, not a comment that names it
    overrides = variant_lines(variant)
    lines = []
    for line in head.splitlines():
        key = line.split("=")[0].strip()
        if key in overrides:
            continue
        lines.append(line)
        if line.strip() == "[study]":
            lines += [f"{k} = {v}" for k, v in overrides.items()]
    head = "\n".join(lines) + "\n"
    tag = f"{seed}-{_slug(variant)}{form.tag}"
    head = head.replace('name = "demo"', f'name = "peers-{tag}"')
    head = re.sub(r"(?m)^seed = 0", f"seed = {seed}", head)
    head = re.sub(r"(?m)^n_trials = \d+", f"n_trials = {trials}", head)
    head = head.replace('database = "../demo-data/pics.db"', f'database = "{data / "pics.db"}"')
    head = head.replace('device = "auto"', 'device = "cpu"')
    if form.pretrained:
        head = re.sub(r"(?m)^pretrained = false", f'pretrained = true\nweights = "{WEIGHTS}"', head)
    file = folder / f"peers-{tag}.toml"
    file.write_text(head + demo_space(form.one_stage))
    return file


def demo_space(one_stage: bool = False) -> str:
    """studies/demo.toml's [space] and [space.stage2] as shipped; `one_stage`: [space] only."""
    space = "[space]\n" + DEMO.read_text().split("\n[space]\n", 1)[1]
    return space.split("\n[space.stage2]\n")[0] + "\n" if one_stage else space


def variant_lines(variant: str) -> dict[str, str]:
    """"pruner_warmup_epochs = 1; warm_start = false" -> {key: TOML value}; "default" -> {}."""
    if variant.strip() == DEFAULT_VARIANT:
        return {}
    pairs = [part.split("=", 1) for part in variant.split(";") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--variant {variant!r}: write [study] lines as 'key = value; key = value'")
    return {key.strip(): value.strip() for key, value in pairs}


def _slug(variant: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")[:60] or DEFAULT_VARIANT


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
    charged = _range_tests_charged(study)
    return [_swipr_finished(t, charged.get(t.number, 0.0)) for t in _in_finish_order(study.trials)]


def _range_tests_charged(study) -> dict[int, float]:
    """{trial number: epochs-equivalent of the lr range tests it ran}: the finder's cost counts as
    epochs spent, before the trial's own (objectives.lr_record records which trial ran each)."""
    from objectives.lr_record import recorded_findings

    charged: dict[int, float] = {}
    for record in recorded_findings(study)[0]:
        cost = record.get("cost")
        if isinstance(cost, dict) and cost.get("trial") is not None:
            charged[cost["trial"]] = charged.get(cost["trial"], 0.0) + float(cost["epochs_equivalent"])
    return charged


def _swipr_finished(trial, range_tests: float = 0.0) -> Finished:
    """A swipr trial as the budgets see it; `range_tests`: the epochs-equivalent of the range
    tests it ran first, spent before its own epochs."""
    attrs = attrs_of(trial)
    epochs = int(attrs.get("epochs", 0)) + range_tests
    losses = attrs.get("val_loss_by_epoch", [])
    # The schedules it finished on the way (nested: each cycle end whose count is in the space)
    on_the_way = [(range_tests + epoch + 1, losses[epoch]) for epoch, _ in attrs.get("finished_schedules", [])
                  if epoch < len(losses) and losses[epoch] == losses[epoch]]
    loss = trial.value if trial.state.name == "COMPLETE" else attrs.get("best_cycle_end_loss")
    if loss is not None and not on_the_way:   # n_cycles sampled: its one schedule ends with it
        on_the_way = [(epochs, loss)]
    return Finished(epochs, loss, on_the_way)


def _in_finish_order(trials) -> list:
    done = [t for t in trials if t.state.is_finished() and t.datetime_complete is not None]
    return sorted(done, key=lambda t: t.datetime_complete)


def run_plain(file: Path, seed: int, epochs: float, startup: int = OPTUNA_STARTUP, form: Form | None = None) -> list[Finished]:
    """The plain script: what a user writes with optuna-integration's fastai callback, run until it
    has spent `epochs` (swipr's total for the seed): it stops after the trial that reaches them."""
    import optuna
    import pandas as pd

    from search.study.data_record import prepare_study_data
    from search.studyfile import load_study_file

    spec = load_study_file(file)
    prepare_study_data(spec)   # the labels file with the split swipr makes and uses (if not made yet)
    table = pd.read_csv(spec.data.labels_file)   # the same images on each side
    table["is_valid"] = table["is_valid"].astype(bool)
    epochs_run: dict[int, int] = {}
    objective = plain_objective(table, spec.data.image_root, form or Form(), epochs_run)

    def enough(study: optuna.Study, _trial) -> None:
        if sum(epochs_run.values()) >= epochs:
            study.stop()

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    study = optuna.create_study(direction="minimize", sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # The callback reports step 0 again in every fit after the first: Optuna says so each time.
        warnings.filterwarnings("ignore", message="The reported value is ignored")
        study.optimize(objective, n_trials=MAX_PLAIN_TRIALS, callbacks=[enough])
    finished = []
    for trial in _in_finish_order(study.trials):
        spent, value = epochs_run.get(trial.number, 0), trial.value if trial.state.name == "COMPLETE" else None
        finished.append(Finished(spent, value, [(spent, value)] if value is not None else []))
    return finished


def plain_objective(table, image_root: Path, form: Form, epochs_run: dict[int, int]) -> Callable:
    """The plain script's objective over PLAIN_SPACE (and PLAIN_STAGE2 unless `form.one_stage`):
    fastai's ImageDataLoaders, a timm network through vision_learner, fit_sgdr, the pruning
    callback on valid_loss. Records each trial's epochs trained in `epochs_run`."""
    from fastai.vision.all import Callback, CrossEntropyLossFlat, accuracy, set_seed, vision_learner
    from optuna_integration import FastAIPruningCallback

    class EpochCounter(Callback):
        """Counts the epochs trained, pruned or not (before the pruning callback cancels a fit)."""

        order = 0

        def __init__(self):
            self.count = 0

        def after_epoch(self):
            self.count += 1

    def objective(trial) -> float:
        s1, s2 = PLAIN_SPACE, PLAIN_STAGE2
        lr = trial.suggest_float("lr", *s1["lr"], log=True)
        bs = trial.suggest_categorical("batch_size", s1["batch_size"])
        size = trial.suggest_categorical("image_size", s1["image_size"])
        freeze = trial.suggest_categorical("freeze", s1["freeze"])
        n_cycles = trial.suggest_categorical("n_cycles", s1["n_cycles"])
        cycle_mult = trial.suggest_categorical("cycle_mult", s1["cycle_mult"])
        n_cycles2 = 0 if form.one_stage else trial.suggest_categorical("stage2_n_cycles", s2["n_cycles"])
        set_seed(trial.number)
        weights = {"pretrained_cfg_overlay": {"file": str(WEIGHTS)}} if form.pretrained else {}
        learn = vision_learner(_plain_loaders(table, image_root, size, bs, form), "test_resnet",
                               pretrained=form.pretrained, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                               cbs=[FastAIPruningCallback(trial, monitor="valid_loss")], **weights)
        epochs = EpochCounter()
        learn.add_cb(epochs)
        try:
            with learn.no_bar(), learn.no_logging():
                if freeze == "frozen_then_unfrozen":
                    learn.freeze()
                    learn.fit_sgdr(1, 1, lr_max=lr)
                learn.unfreeze()   # vision_learner freezes a pretrained network's body
                _plain_cycles(learn, n_cycles, cycle_mult, lr)
                if n_cycles2:   # stage 2: the same network at the larger size
                    lr2 = trial.suggest_float("stage2_lr", *s2["lr"], log=True)
                    freeze2 = trial.suggest_categorical("stage2_freeze", s2["freeze"])
                    learn.dls = _plain_loaders(table, image_root, s2["image_size"], bs, form)
                    learn.freeze() if freeze2 == "frozen" else learn.unfreeze()
                    _plain_cycles(learn, n_cycles2, cycle_mult, lr2)
                return float(learn.validate()[0])
        finally:
            epochs_run[trial.number] = epochs.count

    return objective


def _plain_loaders(table, image_root: Path, size: int, bs: int, form: Form):
    """fastai's ImageDataLoaders over the labels file's rows and split; a pretrained network's
    normalisation written in, so a stage 2's new loaders keep it (vision_learner adds it only
    to the loaders it is built with, from timm's config)."""
    import timm
    from fastai.vision.all import ImageDataLoaders, Normalize, Resize, aug_transforms

    cfg = timm.get_pretrained_cfg("test_resnet")   # the stats vision_learner's _timm_norm would add
    tfms = [*aug_transforms(), *([Normalize.from_stats(cfg.mean, cfg.std)] if form.pretrained else [])]
    return ImageDataLoaders.from_df(table, path=image_root, fn_col="path", label_col="label", valid_col="is_valid",
                                    item_tfms=Resize(size), batch_tfms=tfms, bs=bs, num_workers=0)


def _plain_cycles(learn, n_cycles: int, cycle_mult: int, lr: float) -> None:
    """n_cycles SGDR cycles of 1 epoch times cycle_mult**i: fastai's fit_sgdr divides by
    cycle_mult - 1, so equal cycles are one fit each."""
    if cycle_mult == 1:
        for _ in range(n_cycles):
            learn.fit_sgdr(1, 1, lr_max=lr)
    else:
        learn.fit_sgdr(n_cycles, 1, lr_max=lr, cycle_mult=cycle_mult)


def up_to(finished: list[Finished], epochs: float) -> list[Finished]:
    """The trials, in finish order, up to the one that reaches `epochs` spent: a plain run made
    for a larger total cut to the one this comparison needs (TPE with its seed draws the same
    trials either way)."""
    spent, kept = 0.0, []
    for trial in finished:
        if spent >= epochs:
            break
        kept.append(trial)
        spent += trial.epochs
    return kept


def best_at(finished: list[Finished], budget: float, on_the_way: bool = False) -> float | None:
    """The best finished loss among the trials done within `budget` epochs (in finish order);
    with `on_the_way`, also the schedules finished within it inside a trial still running."""
    spent, best = 0, None
    for trial in finished:
        if on_the_way:
            found = [loss for at, loss in trial.on_the_way if spent + at <= budget and not math.isnan(loss)]
        else:
            found = [trial.loss] if (spent + trial.epochs <= budget and trial.loss is not None
                                     and not math.isnan(trial.loss)) else []
        best = min([*found, *([] if best is None else [best])], default=None)
        spent += trial.epochs
        if spent > budget:
            break
    return best


def compare(swipr: list[Finished], plain: list[Finished], on_the_way: bool = False) -> tuple[list[tuple], float]:
    """(share, budget, swipr's best, plain's best, ratio) at each of BUDGET_SHARES of the larger
    total, and the worst ratio (a budget where neither has finished a trial left out)."""
    total = max(sum(t.epochs for t in swipr), sum(t.epochs for t in plain))
    rows, worst = [], 0.0
    for share in BUDGET_SHARES:
        budget = share * total
        ours, theirs = best_at(swipr, budget, on_the_way), best_at(plain, budget, on_the_way)
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


def _best(finished: list[Finished]) -> float | None:
    return min((t.loss for t in finished if t.loss is not None and not math.isnan(t.loss)), default=None)


def _fmt(value: float | None) -> str:
    return "  none" if value is None else f"{value:.4f}"


def cached(cache: Path | None, name: str, contender, made: Callable[[], dict], run: bool = True,
           accept_unversioned: bool = False,
           enough: Callable[[list[Finished]], bool] = lambda _: True) -> tuple[list[Finished], float] | None:
    """(trials, seconds) of `contender()`, kept as `cache/name.json` with its provenance when a
    cache folder is given: a second run of this script with other variants reuses the plain
    script's trials. A cached file is reused only if `made()` (what would be run now:
    bench/provenance.py) matches what made it, otherwise the run stops with one line naming the
    file and what differs; and only if its trials are `enough` (a plain run that spent fewer
    epochs than this comparison needs is made again). None if it isn't cached and not to be `run`."""
    file = cache / f"{name}.json" if cache else None
    if file is not None and file.exists():
        saved = json.loads(file.read_text())
        try:
            told = provenance.check(file, saved.get("provenance"), made(), accept_unversioned)
        except provenance.Refused as error:
            provenance.refuse(error, "bench/peers.py")
        trials = [Finished(t["epochs"], t["loss"], [tuple(x) for x in t["on_the_way"]]) for t in saved["trials"]]
        if enough(trials):
            print(f"reusing {told}", flush=True)
            return trials, saved["seconds"]
        print(f"{told}: spent {sum(t.epochs for t in trials):g} epochs, fewer than this comparison needs"
              + ("; training it again" if run else ""), flush=True)
    if not run:
        return None
    started = time.monotonic()
    trials = contender()
    seconds = time.monotonic() - started
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        temp = file.with_suffix(".tmp")
        temp.write_text(json.dumps({"provenance": made(), "seconds": seconds, "trials": [asdict(t) for t in trials]}))
        temp.replace(file)
    return trials, seconds


def what_makes(folder: Path, args, seeds: list[int], form: Form) -> Callable[..., dict]:
    """made(contender, seed, variant_or_startup) -> the provenance block of what this run would
    make: the code it runs, the space, the demo photos and their split (prepared once here, as
    both contenders prepare them), threads and the settings that change a contender's trials."""
    from search.study.data_record import prepare_study_data
    from search.studyfile import load_study_file

    spec = load_study_file(study_file(folder, folder / "data", seeds[0], args.trials, form=form))
    data, split = provenance.dataset_fingerprints(prepare_study_data(spec), spec.data.image_root)
    code = provenance.project_code(Path(__file__), "swipr_core", "objectives", "search")
    base = {"images": args.images, "one_stage": form.one_stage, "pretrained": form.pretrained}
    if form.pretrained:
        base["weights"] = provenance.files_hash(WEIGHTS.parent, [WEIGHTS.name])

    def made(contender: str, seed: int, variant: str | int) -> dict:
        settings = {"contender": contender, "seed": seed, **base}
        if contender == "swipr":
            settings |= {"trials": args.trials, "variant": variant_lines(str(variant))}
            text = study_file(folder, folder / "data", seed, args.trials, str(variant), form).read_text()
            settings["study_file"] = provenance.digest(text.replace(str(folder), "<tmp>").replace(str(ROOT), "<root>"))
            space = provenance.digest(demo_space(form.one_stage))
        else:   # its trial count is where it reached swipr's epochs: `enough`, not a setting
            settings["tpe_startup"] = variant
            space = provenance.digest({"stage1": PLAIN_SPACE, "stage2": None if form.one_stage else PLAIN_STAGE2})
        return provenance.provenance("bench/peers.py", code=code, space=space, data=data, split=split,
                                     threads=args.threads, settings=settings)

    return made


def print_seed(seed: int, row: str, ours: list[Finished], theirs: list[Finished], swipr_s: float,
               plain_s: float) -> tuple[float, float, bool]:
    """Print one seed's comparison; (anytime at trial ends, anytime on the way, final best better)."""
    rows, worst = compare(ours, theirs)
    way_rows, way_worst = compare(ours, theirs, on_the_way=True)
    print(f"seed {seed} [{row}]: swipr {len(ours)} trials, {_spent(ours)} epochs in {swipr_s:.0f} s "
          f"({sum(t.loss is None for t in ours)} stopped before a finished schedule), "
          f"plain script {len(theirs)} trials, {_spent(theirs)} epochs in {plain_s:.0f} s "
          f"({sum(t.loss is None for t in theirs)} pruned)")
    for (share, budget, a, b, ratio), (_, _, a_way, _, way_ratio) in zip(rows, way_rows, strict=True):
        print(f"  at {share:4.0%} of the larger total ({budget:5.1f} epochs): "
              f"swipr {_fmt(a)}  plain {_fmt(b)}  ratio {ratio:.3f}   "
              f"(counting schedules finished inside a running trial: swipr {_fmt(a_way)}, ratio {way_ratio:.3f})")
    print(f"  at the end: swipr {_fmt(_best(ours))} ({_spent(ours)} epochs), "
          f"plain {_fmt(_best(theirs))} ({_spent(theirs)} epochs)")
    print(f"  seed {seed} anytime: {worst:.3f} (on the way: {way_worst:.3f})")
    return worst, way_worst, rows[-1][4] < 1.0


def _spent(finished: list[Finished]) -> str:
    return f"{sum(t.epochs for t in finished):.1f}"


def spread(values: list[float]) -> str:
    """'X (min A, median X, max B)' of per-seed figures."""
    median = statistics.median(values)
    return f"{median:.3f} (min {min(values):.3f}, median {median:.3f}, max {max(values):.3f})"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="TPE seeds, comma-separated (default 0,1,2,3,4)")
    parser.add_argument("--trials", type=int, default=12, help="swipr's trials per seed (default 12); the plain "
                                                               "script runs until it has spent swipr's epochs")
    parser.add_argument("--images", type=int, default=600, help="demo photos (default 600, as make demo)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    parser.add_argument("--variant", action="append", default=None,
                        help="swipr's [study] lines to try instead of the shipped ones, e.g. "
                             "'pruner_warmup_epochs = 1; warm_start = false'; repeatable; 'default' = as shipped "
                             "(default: default only). The last lines are the first variant's.")
    parser.add_argument("--plain-startup", default=str(OPTUNA_STARTUP),
                        help=f"the plain script's TPE n_startup_trials, comma-separated for more rows "
                             f"(default {OPTUNA_STARTUP}, Optuna's; swipr's TPE uses 5)")
    parser.add_argument("--pretrained", action="store_true",
                        help=f"both start from {WEIGHTS.relative_to(ROOT)} (bench/make_pretrained.py)")
    parser.add_argument("--one-stage", action="store_true", help="the demo's space without its [space.stage2]")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping each contender's trials per seed, so another run reuses them")
    parser.add_argument(provenance.ACCEPT_FLAG, action="store_true",
                        help="read cached trials recorded before provenance (bench/README.md, Provenance); "
                             "what they do record is still checked")
    parser.add_argument("--only", choices=("swipr", "plain", "cached"), default=None,
                        help="run one contender only, into --cache (the plain script needs swipr's trials there "
                             "first), or neither ('cached': compare what the cache holds)")
    args = parser.parse_args(argv)
    if args.only and args.cache is None:
        parser.error("--only needs --cache: the other contender's trials are read from it")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        args.plain_startup = [int(x) for x in args.plain_startup.split(",") if x.strip()]
    except ValueError as error:
        parser.error(f"--seeds and --plain-startup take comma-separated whole numbers: {error}")
    args.variant = args.variant or [DEFAULT_VARIANT]
    for variant in args.variant:
        variant_lines(variant)   # refuse a malformed one before minutes of training
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from swipr_core.data.demo import write_demo_data
    from swipr_core.train.threads import THREADS_VARIABLE

    torch.set_num_threads(args.threads)
    os.environ[THREADS_VARIABLE] = str(args.threads)   # swipr's trials pick their own count otherwise
    form = Form(one_stage=args.one_stage, pretrained=args.pretrained)
    rows = [(v, n) for v in args.variant for n in args.plain_startup]
    results: dict[tuple, list[tuple[float, float, bool]]] = {row: [] for row in rows}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swipr-peers-") as tmp:
        folder = Path(tmp)
        write_demo_data(folder / "data", n_images=args.images, seed=0)
        made = what_makes(folder, args, args.seeds, form)
        for seed in args.seeds:
            for row, figures in one_seed(folder, args, seed, form, made).items():
                results[row].append(figures)
    print(f"({time.monotonic() - started:.0f} s in all, training and reading the cache)")
    for (variant, startup), found in results.items():
        if found:
            ends, ways = [r[0] for r in found], [r[1] for r in found]
            print(f"[{_row(variant, startup)}] per-seed anytime {' '.join(f'{a:.3f}' for a in ends)}: "
                  f"{spread(ends)}; every budget <= 1.0 in {sum(a <= 1.0 for a in ends)} of {len(found)} seeds; "
                  f"final best better in {sum(r[2] for r in found)} of {len(found)}; "
                  f"on the way: {' '.join(f'{a:.3f}' for a in ways)}, {spread(ways)}")
    headline = [r[0] for r in results[rows[0]]]
    if headline:
        print(f"anytime: {spread(headline)} over {len(headline)} seeds [{_row(*rows[0])}{form.tag}]")
        print(f"anytime_max: {max(headline):.3f}")
    return 0


def _row(variant: str, startup: int) -> str:
    return variant if startup == OPTUNA_STARTUP else f"{variant}; plain TPE n_startup_trials={startup}"


def one_seed(folder: Path, args, seed: int, form: Form, made) -> dict[tuple, tuple[float, float, bool]]:
    """Each (variant, plain startup) row's figures for one seed: swipr's variants first, then the
    plain script until it has spent the most epochs any of them did."""
    key = f"t{args.trials}-i{args.images}-th{args.threads}{form.tag}"
    ours = {}
    for variant in args.variant:
        file = study_file(folder, folder / "data", seed, args.trials, variant, form)
        ours[variant] = cached(args.cache, f"swipr-{seed}-{key}-{_slug(variant)}",
                               functools.partial(run_swipr, file, args.trials),
                               functools.partial(made, "swipr", seed, variant), args.only in (None, "swipr"),
                               args.accept_unversioned)
    found = [sum(t.epochs for t in run[0]) for run in ours.values() if run is not None]
    if len(found) < len(ours):
        print(f"seed {seed}: not compared, swipr not in {args.cache} yet (the plain script needs its epochs)")
        return {}
    epochs = max(found)
    figures = {}
    for startup in args.plain_startup:
        name = f"plain-{seed}-i{args.images}-th{args.threads}{form.tag}" + ("" if startup == OPTUNA_STARTUP else f"-s{startup}")
        theirs = cached(args.cache, name, functools.partial(run_plain, study_file(folder, folder / "data", seed, args.trials,
                                                                                  form=form), seed, epochs, startup, form),
                        functools.partial(made, "plain", seed, startup), args.only in (None, "plain"),
                        args.accept_unversioned, enough=lambda trials: sum(t.epochs for t in trials) >= epochs)
        if theirs is None:
            print(f"seed {seed}: not compared, the plain script (TPE startup {startup}) not in {args.cache} yet")
            continue
        for variant, (trials, seconds) in ours.items():
            spent = sum(t.epochs for t in trials)
            figures[(variant, startup)] = print_seed(seed, _row(variant, startup), trials, up_to(theirs[0], spent),
                                                     seconds, theirs[1])
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
