"""The [space] lr finder against a plainly searched lr range, on the demo study.

Two studies per seed, both studies/demo.toml as shipped (its data, model, split, sampler,
pruner, warm start and n_trials) with only [study] seed, name, storage and [space] lr set:

    plain:  lr = { low = 1e-4, high = 0.05, log = true }                       (the demo's range)
    finder: lr = { finder = "valley", factor = { low = 0.3, high = 3, log = true } }

Each runs through the project's own CLI (`swipr study run` in a subprocess, one CPU thread, its
own SQLite file beside a temporary study file) on demo data made once with `swipr demo-data`;
at most --jobs (2) studies at once, the two of a seed side by side so the load moves both alike.

Per seed it prints each study's best val_loss, the epochs its trials trained, the finder's range
tests in epochs-equivalent (the batches each test ran over the batches of one training epoch at
its batch size; a test runs once per freeze x batch size x image size a trial asks for, kept on
the study, charged to the trial that ran it), each study's wall-clock seconds, and the cost
(epochs, range tests included) each needed to reach the other's best ("never" if it didn't) and
to reach the worse of the two bests, which both reach; the same again with the range tests
free (what they cost on a dataset whose epoch is far longer than 100 batches: the demo's epoch
is 26 batches at batch size 16, so a test costs ~4 epochs there). Trials count in the order
they finished.
Per seed and in the summary it also prints each study's best at equal compute: within the
smaller of the two studies' costs (epochs trained plus range tests in epochs-equivalent), the
trials counted in the order they finished. The last two lines are

    finder_vs_plain: best X (median ratio of best losses), wins N/M
    finder_vs_plain_equal_compute: best Y (median ratio of the bests within the smaller total, ...), wins K/M

X = median over seeds of finder best / plain best after the same number of trials (below 1: the
finder is better); N: seeds where the finder's best is lower. Y and K: the same at equal
compute, the range tests counted (a study with no trial finished within it: ratio inf, or 0 for
the plain one).

    PYTHONPATH=. .venv/bin/python bench/lr_finder_vs_plain.py [--seeds 0-9] [--trials 12]
        [--factor 0.3,3] [--finder valley] [--jobs 2] [--keep DIR [--accept-unversioned]]

With --keep, each finished study gets NAME.provenance.json beside it (bench/provenance.py:
commit, code, versions, space, data, split, threads, settings); a later run reads a finished
study only if that is what it would make now, says which it reuses and from when, and
otherwise stops, before anything trains, with one line naming the study and what differs.

About 2-4 minutes per study on one core of the 2-core machine: 10 seeds take 30-60 minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import provenance  # noqa: E402
from objectives.trial_attrs import attrs_of  # noqa: E402

LR_LINE = re.compile(r"^lr = .*$", re.MULTILINE)
# A plainly searched range, fixed here so the comparison doesn't move with studies/demo.toml's
# own lr line.
PLAIN_LR = "lr = { low = 1e-4, high = 0.05, log = true }"


@dataclass
class Trial:
    """One finished trial as a budget sees it: what it cost and the loss it finished with (or None)."""

    epochs: int             # epochs trained
    range_epochs: float     # the range tests it ran first, in epochs-equivalent
    loss: float | None


@dataclass
class Outcome:
    """One study's run."""

    trials: list[Trial]
    train_epochs: int
    range_tests: int = 0
    range_epochs: float = 0.0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> float:
        losses = [t.loss for t in self.trials if t.loss is not None]
        return min(losses) if losses else math.inf

    @property
    def cost(self) -> float:
        return self.train_epochs + self.range_epochs


def parse_seeds(text: str) -> list[int]:
    """"0-9" or "0,3,5" (or both: "0-4,7")."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            low, high = part.split("-")
            seeds.extend(range(int(low), int(high) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def study_text(name: str, seed: int, database: Path, lr_line: str) -> str:
    """studies/demo.toml with its name, seed, data and [space] lr replaced, without its [space.stage2];
    CPU, as the demo runs."""
    demo = (ROOT / "studies" / "demo.toml").read_text()
    head, space = demo.split("\n[space]\n")   # the section, not a comment that names it
    # Measured on the one-stage demo (before it gained a second stage): stage 1's lr is what differs.
    space = space.split("\n[space.stage2]\n")[0]
    head = head.replace('name = "demo"', f'name = "{name}"')
    head = re.sub(r"^seed = \d+", f"seed = {seed}", head, flags=re.MULTILINE)
    head = head.replace('database = "../demo-data/pics.db"', f'database = "{database}"')
    head = head.replace('device = "auto"', 'device = "cpu"')
    space, replaced = LR_LINE.subn(lr_line, space)
    if replaced != 1 or f"seed = {seed}" not in head or str(database) not in head:
        raise SystemExit("studies/demo.toml changed shape: this script can't rewrite its seed, data or lr")
    return head + "\n[space]\n" + space


def swipr(*args: str, log: Path) -> float:
    """Run the swipr CLI with one CPU thread; its output goes to `log`. Returns wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SWIPR_CPU_THREADS="1")
    started = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run([sys.executable, "-m", "search.cli", *args], env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"swipr {' '.join(args)} exited {code}; see {log}")
    return time.monotonic() - started


def kept(folder: Path, name: str, seed: int, database: Path, lr_line: str, trials: int,
         made: Callable[[str, int, str], dict], accept_unversioned: bool = False, quiet: bool = False) -> Outcome | None:
    """The study a run before finished in a --keep folder, or None (none, or half-run). One that
    this run would not make the same way (`made(name, seed, study text)`, bench/provenance.py,
    against its .provenance.json) stops the run with one line naming it and what differs."""
    file, wall_file, made_file = folder / f"{name}.toml", folder / f"{name}.wall_s", folder / f"{name}.provenance.json"
    text = study_text(name, seed, database, lr_line)
    if not (wall_file.exists() and file.read_text() == text):
        return None
    outcome = read_outcome(file.with_suffix(".db"), name)
    if len(outcome.trials) != trials:
        return None
    recorded = json.loads(made_file.read_text()) if made_file.exists() else None
    try:
        line = provenance.check(file, recorded, made(name, seed, text.replace(str(folder), "<keep>")), accept_unversioned)
    except provenance.Refused as error:
        provenance.refuse(error, "bench/lr_finder_vs_plain.py")
    if not quiet:
        print(f"reusing {line}", flush=True)
    outcome.wall_s = float(wall_file.read_text())
    return outcome


def run_study(folder: Path, name: str, seed: int, database: Path, lr_line: str, trials: int,
              made: Callable[[str, int, str], dict], accept_unversioned: bool = False) -> Outcome:
    """Run the study, or read the one a run before finished in a --keep folder (kept); write
    what made it beside it."""
    outcome = kept(folder, name, seed, database, lr_line, trials, made, accept_unversioned, quiet=True)
    if outcome is not None:
        return outcome
    file = folder / f"{name}.toml"
    text = study_text(name, seed, database, lr_line)
    file.with_suffix(".db").unlink(missing_ok=True)
    file.write_text(text)
    wall = swipr("study", "run", str(file), "--n-trials", str(trials), log=folder / f"{name}.log")
    (folder / f"{name}.wall_s").write_text(f"{wall:.1f}")
    made_by = made(name, seed, text.replace(str(folder), "<keep>"))
    (folder / f"{name}.provenance.json").write_text(json.dumps(made_by, indent=1))
    outcome = read_outcome(file.with_suffix(".db"), name)
    outcome.wall_s = wall
    return outcome


def what_makes(folder: Path, database: Path, trials: int) -> Callable[[str, int, str], dict]:
    """made(name, seed, study text) -> the provenance of a study this run makes: the code
    `swipr study run` runs, the demo photos and their split (prepared once here), one thread."""
    from search.study.data_record import prepare_study_data
    from search.studyfile import load_study_file

    probe = folder / "provenance-probe.toml"
    probe.write_text(study_text("provenance-probe", 0, database, PLAIN_LR))
    spec = load_study_file(probe)
    data, split = provenance.dataset_fingerprints(prepare_study_data(spec), spec.data.image_root)
    probe.unlink()
    code = provenance.project_code(Path(__file__), "swipr_core", "objectives", "search")

    def made(name: str, seed: int, text: str) -> dict:
        space = text.split("\n[space]\n", 1)[1]
        return provenance.provenance("bench/lr_finder_vs_plain.py", code=code, space=provenance.digest(space),
                                     data=data, split=split, threads=1,
                                     settings={"study": name, "seed": seed, "trials": trials,
                                               "study_file": provenance.digest(text)})

    return made


def train_batches(n_train: int, batch_size: int) -> int:
    """Batches in one training epoch, as swipr_core.data.loaders counts them (a lone last image is dropped)."""
    return n_train // batch_size if n_train % batch_size == 1 else math.ceil(n_train / batch_size)


def read_outcome(storage: Path, name: str) -> Outcome:
    """The study's trials in the order they finished, each charged with the range tests it ran:
    each test's record says its trial and its epochs-equivalent (objectives.lr_record); one of an
    older study, which doesn't, is charged to the first finished trial of its combination."""
    import optuna

    from objectives.lr_record import range_test_cost, recorded_findings

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage}")
    counts = study.user_attrs["data_counts"]
    n_train = counts["YES"] + counts["NO"] - counts["valid"]
    records, skipped = recorded_findings(study)
    charged: dict[int, float] = {}
    legacy = {}
    for record in records:
        cost = record.get("cost")
        if isinstance(cost, dict) and cost.get("trial") is not None:
            charged[cost["trial"]] = charged.get(cost["trial"], 0.0) + float(cost["epochs_equivalent"])
        else:
            legacy[record["key"]] = len(record["lrs"]) / train_batches(n_train, record["batch_size"])
    done = sorted((t for t in study.trials if t.state.is_finished() and t.datetime_complete is not None),
                  key=lambda t: t.datetime_complete)
    outcome = Outcome(trials=[], train_epochs=0, range_tests=range_test_cost(study)["count"])
    for trial in done:
        epochs = int(attrs_of(trial).get("epochs", 0))
        combo = f"{trial.params.get('freeze')}:bs{trial.params.get('batch_size')}:px{trial.params.get('image_size')}"
        range_epochs = charged.pop(trial.number, 0.0)
        if "finder_lr" in attrs_of(trial):
            range_epochs += legacy.pop(combo, 0.0)
        outcome.range_epochs += range_epochs
        outcome.train_epochs += epochs
        loss = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        outcome.trials.append(Trial(epochs, range_epochs, loss))
    unaccounted = [*legacy, *(f"trial {number}'s" for number in charged), *skipped]
    if unaccounted:
        outcome.notes.append(f"range tests no finished trial accounts for: {', '.join(sorted(unaccounted))}")
    return outcome


def cost_to_reach(outcome: Outcome, target: float, range_tests: bool = True) -> float:
    """Epochs (range tests included, unless not) spent until a finished trial reached `target`;
    inf if none did."""
    spent = 0.0
    for trial in outcome.trials:
        spent += trial.epochs + (trial.range_epochs if range_tests else 0.0)
        if trial.loss is not None and trial.loss <= target:
            return spent
    return math.inf


def best_within(outcome: Outcome, budget: float) -> float:
    """The best loss of the trials finished within `budget` epochs, range tests included (in the
    order they finished); inf if none had."""
    spent, best = 0.0, math.inf
    for trial in outcome.trials:
        spent += trial.epochs + trial.range_epochs
        if spent > budget:
            break
        if trial.loss is not None:
            best = min(best, trial.loss)
    return best


def equal_compute(plain: Outcome, finder: Outcome) -> tuple[float, float, float]:
    """(budget, plain's best, finder's best) within the smaller of the two studies' costs, range
    tests counted: the two at the same compute."""
    budget = min(plain.cost, finder.cost)
    return budget, best_within(plain, budget), best_within(finder, budget)


def loss_ratio(finder: float, plain: float) -> float:
    """finder / plain best val_loss; inf when the finder side has none yet, 0 when only it has one."""
    return math.inf if math.isinf(finder) else 0.0 if math.isinf(plain) else finder / plain


def _reach(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.1f}"


def summarize(rows: list[tuple[int, Outcome, Outcome]]) -> list[str]:
    def median(values) -> str:
        """The median ("never" where most seeds never got there), and how many never did."""
        middle = statistics.median(values)
        never = sum(math.isinf(v) for v in values)
        text = "never" if math.isinf(middle) else f"{middle:.4g}"
        return f"{text} ({never} never)" if never else text

    ratios = [f.best / p.best for _, p, f in rows]
    wins = sum(f.best < p.best for _, p, f in rows)
    equal = [equal_compute(p, f) for _, p, f in rows]
    common = [(cost_to_reach(p, max(p.best, f.best)), cost_to_reach(f, max(p.best, f.best)),
               cost_to_reach(f, max(p.best, f.best), range_tests=False)) for _, p, f in rows]
    return [
        f"summary over {len(rows)} seeds (medians):",
        f"  best val_loss    plain {median([p.best for _, p, _ in rows])}  finder {median([f.best for _, _, f in rows])}"
        f"  (finder/plain {statistics.median(ratios):.3f}; finder lower in {wins} of {len(rows)})",
        f"  at equal compute (the smaller total, range tests counted: {median([e[0] for e in equal])} epochs) "
        f"plain {median([e[1] for e in equal])}  finder {median([e[2] for e in equal])}  (finder/plain "
        f"{statistics.median(loss_ratio(e[2], e[1]) for e in equal):.3f}; finder lower in "
        f"{sum(e[2] < e[1] for e in equal)} of {len(rows)})",
        f"  epochs trained   plain {median([p.train_epochs for _, p, _ in rows])}  finder "
        f"{median([f.train_epochs for _, _, f in rows])} + range tests {median([f.range_epochs for _, _, f in rows])} "
        f"epochs-equivalent ({median([f.range_tests for _, _, f in rows])} tests)",
        f"  wall seconds     plain {median([p.wall_s for _, p, _ in rows])}  finder {median([f.wall_s for _, _, f in rows])}",
        f"  finder to reach plain's best {median([cost_to_reach(f, p.best) for _, p, f in rows])} epochs; "
        f"plain to reach finder's best {median([cost_to_reach(p, f.best) for _, p, f in rows])}",
        f"  to reach the worse of the two bests: plain {median([c[0] for c in common])}, finder "
        f"{median([c[1] for c in common])} epochs (finder fewer in {sum(c[1] < c[0] for c in common)} of {len(rows)})",
        f"  the same, range tests free: finder to reach plain's best "
        f"{median([cost_to_reach(f, p.best, range_tests=False) for _, p, f in rows])}; to the worse of the two: "
        f"finder {median([c[2] for c in common])} (fewer than plain in {sum(c[2] < c[0] for c in common)} of {len(rows)})",
    ]


def seed_lines(seed: int, plain: Outcome, finder: Outcome) -> list[str]:
    target = max(plain.best, finder.best)
    budget, plain_equal, finder_equal = equal_compute(plain, finder)
    lines = [
        f"seed {seed}: best plain {plain.best:.4f}  finder {finder.best:.4f}  (ratio {finder.best / plain.best:.3f})",
        f"  at equal compute ({budget:.1f} epochs, range tests counted): plain {plain_equal:.4f}  finder "
        f"{finder_equal:.4f}  (ratio {loss_ratio(finder_equal, plain_equal):.3f})",
        f"  epochs: plain {plain.train_epochs}; finder {finder.train_epochs} + {finder.range_epochs:.1f} in "
        f"{finder.range_tests} range tests = {finder.cost:.1f}; wall plain {plain.wall_s:.0f} s, finder {finder.wall_s:.0f} s",
        f"  finder to reach plain's best: {_reach(cost_to_reach(finder, plain.best))}; plain to reach finder's best: "
        f"{_reach(cost_to_reach(plain, finder.best))}; both to {target:.4f}: plain "
        f"{_reach(cost_to_reach(plain, target))}, finder {_reach(cost_to_reach(finder, target))} "
        f"({_reach(cost_to_reach(finder, target, range_tests=False))} with the range tests free)",
    ]
    return lines + [f"  note: {note}" for note in plain.notes + finder.notes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-9", help="[study] seeds: 0-9 or 0,1,2 (default 0-9)")
    parser.add_argument("--trials", type=int, default=12, help="trials per study (default 12, the demo's n_trials)")
    parser.add_argument("--factor", default="0.3,3", help="the finder's factor range LOW,HIGH, log (default 0.3,3)")
    parser.add_argument("--finder", default="valley", help="the finder's suggestion (default valley)")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="studies at once (default 2)")
    parser.add_argument("--keep", type=Path, help="keep study files, logs and databases in this folder; a study "
                        "a run before finished there is read, not run again (so a stopped run can go on), "
                        "if what made it (its .provenance.json) is what this run would make")
    parser.add_argument(provenance.ACCEPT_FLAG, action="store_true",
                        help="--keep: read finished studies recorded before provenance (bench/README.md, Provenance)")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    low, high = (float(v) for v in args.factor.split(","))
    plain_line = PLAIN_LR
    finder_line = f'lr = {{ finder = "{args.finder}", factor = {{ low = {low:g}, high = {high:g}, log = true }} }}'
    print(f"plain:  {plain_line}\nfinder: {finder_line}\n{len(seeds)} seeds x {args.trials} trials, warm start as the "
          f"demo has it, 1 CPU thread a study, {args.jobs} at once", flush=True)

    with tempfile.TemporaryDirectory(prefix="swipr-finder-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        database = folder / "data" / "pics.db"
        if not database.exists():   # the same data every time: swipr demo-data's default seed
            swipr("demo-data", str(folder / "data"), log=folder / "demo-data.log")
        made, accept = what_makes(folder, database, args.trials), args.accept_unversioned
        for seed in seeds:   # a kept study this run would not make is refused here, before anything trains
            for name, line in ((f"plain-{seed}", plain_line), (f"finder-{seed}", finder_line)):
                kept(folder, name, seed, database, line, args.trials, made, accept)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [(seed, pool.submit(run_study, folder, f"plain-{seed}", seed, database, plain_line, args.trials,
                                          made, accept),
                        pool.submit(run_study, folder, f"finder-{seed}", seed, database, finder_line, args.trials,
                                    made, accept))
                       for seed in seeds]
            rows = []
            for seed, plain, finder in futures:
                rows.append((seed, plain.result(), finder.result()))
                print("\n".join(seed_lines(*rows[-1])), flush=True)
    print("\n".join(summarize(rows)))
    ratios = [f.best / p.best for _, p, f in rows]
    print(f"finder_vs_plain: best {statistics.median(ratios):.3f} (median ratio of best losses), "
          f"wins {sum(f.best < p.best for _, p, f in rows)}/{len(rows)}")
    equal = [equal_compute(p, f) for _, p, f in rows]
    print(f"finder_vs_plain_equal_compute: best {statistics.median(loss_ratio(e[2], e[1]) for e in equal):.3f} "
          f"(median ratio of the bests within the smaller total, range tests counted), "
          f"wins {sum(e[2] < e[1] for e in equal)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
