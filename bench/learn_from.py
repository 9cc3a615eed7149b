"""Does a study on grown photos gain from `[study] learn_from` the study of the photos before?

Makes the demo data at --before photos (600), then grows it to --after (900): the generator
shuffles its rows by the count it is asked for, so 900 photos of the same seed are not a
superset of the 600; the grown folder is the 600's rows and images, plus the 900-photo set's
rows numbered 600 and up, with --relabel of the 600's YES/NO photos moved to the other folder
(labels changed). Runs studies/demo.toml (12 trials) one after another on the CPU:

- `before`: the 600-photo study (study seed 0), run once;
- for each --seeds study seed: `cold` (the grown data, no learn_from), `learned` (learn_from
  `before`, TPE seeing its trials), `enqueued` (learn_from `before`, enqueue only:
  learn_from_sampler = false), and `control` (learn_from `other`, a study of another task: the
  600 photos with their YES/NO folders shuffled, so what it learned says nothing of this task).

Prints each study's best-so-far at 25/50/100% of the cold study's epochs (epochs run, in trial
order), each variant's worst ratio to cold over those points, and last
`learn_from_anytime: X`, the median over seeds of the learned study's worst ratio (lower is
better; < 1: ahead of cold at every point).

Its first line says what makes the figures (commit, library versions, threads). With --work, the
data and the earlier studies are kept with a provenance.json (bench/provenance.py); --reuse reads
them back only if this run would make them the same way, and refuses them in one line otherwise.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/learn_from.py --seeds 5 [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import provenance  # noqa: E402

POINTS = (0.25, 0.5, 1.0)
VARIANTS = ("learned", "enqueued", "control")


def grown_data(work: Path, before: int, after: int, relabel: float) -> tuple[Path, Path, Path]:
    """(the `before` folder, the grown folder, the other-task folder), each with its pics.db."""
    from swipr_core.data.demo import write_demo_data

    small, big, grown, other = work / "before", work / "big", work / "grown", work / "other"
    for folder in (small, big, grown, other):
        shutil.rmtree(folder, ignore_errors=True)
    write_demo_data(small, n_images=before, seed=0)
    write_demo_data(big, n_images=after, seed=0)
    small_rows, big_rows = _rows(small), _rows(big)
    subset = {r[0] for r in small_rows} <= {r[0] for r in big_rows} and all(r in big_rows for r in small_rows)
    print(f"data: the {after}-photo set of seed 0 {'holds' if subset else 'does NOT hold'} the {before}; "
          f"grown = the {before}'s rows + the {after}'s rows numbered {before} and up")
    shutil.copytree(small, grown)
    added = [r for r in big_rows if _number(r[0]) >= before and (big / r[0]).exists()]
    for row in added:
        (grown / row[0]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(big / row[0], grown / row[0])
    moved = _move_folders(grown, small_rows, relabel, random.Random(1))
    _write_rows(grown, [r for r in _rows(grown)] + added)
    print(f"data: grown to {len(_rows(grown))} rows ({len(added)} new photos, {moved} of the {before}'s moved "
          f"between YES and NO folders)")
    shutil.copytree(small, other)
    _move_folders(other, small_rows, 0.5, random.Random(2))   # half of them: folders unrelated to the pictures
    return small / "pics.db", grown / "pics.db", other / "pics.db"


def _number(path: str) -> int:
    return int(Path(path).stem.split("_")[-1]) if Path(path).stem.split("_")[-1].isdigit() else -1


def _rows(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "pics.db") as connection:
        return connection.execute("SELECT * FROM pics").fetchall()


def _write_rows(folder: Path, rows: list[tuple]) -> None:
    with sqlite3.connect(folder / "pics.db") as connection:
        connection.execute("DELETE FROM pics")
        connection.executemany(f"INSERT INTO pics VALUES ({', '.join('?' * len(rows[0]))})", rows)


def _move_folders(folder: Path, rows: list[tuple], share: float, rng: random.Random) -> int:
    """Move `share` of the YES/NO photos to the other class's folder (file and row): a changed label."""
    from swipr_core.data.demo import NO_DIRS, YES_DIRS

    other = {**dict(zip(YES_DIRS, NO_DIRS, strict=True)), **dict(zip(NO_DIRS, YES_DIRS, strict=True))}
    current = _rows(folder)
    moved = 0
    for i, row in enumerate(current):
        where = str(Path(row[0]).parent)
        if where in other and (folder / row[0]).exists() and rng.random() < share and row in rows:
            target = f"{other[where]}/{Path(row[0]).name}"
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            (folder / row[0]).rename(folder / target)
            current[i] = (target, *row[1:])
            moved += 1
    _write_rows(folder, current)
    return moved


def study_file(work: Path, name: str, database: Path, seed: int, learn_from: str = "", sampler: bool = True) -> Path:
    text = (ROOT / "studies" / "demo.toml").read_text()
    text = text.replace('name = "demo"', f'name = "{name}"').replace("seed = 0", f"seed = {seed}", 1)
    text = text.replace('database = "../demo-data/pics.db"', f'database = "{database}"')
    if learn_from:
        text = text.replace("[data]\n", f'learn_from = "{learn_from}"\nlearn_from_sampler = '
                                          f'{str(sampler).lower()}\n\n[data]\n', 1)
    path = work / f"{name}.toml"
    path.write_text(text)
    return path


def run(path: Path, n_trials: int) -> float:
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run([sys.executable, "-m", "search.cli", "study", "run", str(path), "--n-trials",
                             str(n_trials), "--device", "cpu"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench/learn_from.py: {path.name} failed:\n{result.stderr[-2000:]}")
    for line in result.stdout.splitlines():
        if line.startswith("learn_from:"):
            print(f"  {path.stem}: {line}")
    return time.monotonic() - started


def curve(path: Path) -> list[tuple[int, float | None]]:
    """(epochs run so far, best val_loss so far) after each trial, in trial order."""
    from objectives.trial_attrs import attrs_of
    from search.study.open import open_study
    from search.studyfile import load_study_file

    study = open_study(load_study_file(path), create=False, read_only=True)
    epochs, best, points = 0, None, []
    for trial in study.get_trials(deepcopy=False):
        attrs = attrs_of(trial)
        epochs += attrs.get("epochs", 0) - attrs.get("resumed_from_epoch", 0)
        if trial.state.name == "COMPLETE" and trial.value is not None:
            best = trial.value if best is None else min(best, trial.value)
        points.append((epochs, best))
    return points


def best_at(points: list[tuple[int, float | None]], epochs: float) -> float | None:
    found = [best for ran, best in points if ran <= epochs and best is not None]
    return found[-1] if found else None


def worst_ratio(cold: list, other: list, total: int) -> float | None:
    ratios = []
    for share in POINTS:
        a, b = best_at(other, share * total), best_at(cold, share * total)
        if b is not None:
            ratios.append(a / b if a is not None else float("inf"))
    return max(ratios) if ratios else None


def made(args: argparse.Namespace) -> dict:
    """What makes this run's data and earlier studies: the code, studies/demo.toml (its space and,
    through its [data] keys, the split), the threads and the data's settings."""
    demo = provenance.digest((ROOT / "studies" / "demo.toml").read_text())
    settings = {"trials": args.trials, "before": args.before, "after": args.after, "relabel": args.relabel}
    return provenance.provenance("bench/learn_from.py",
                                 code=provenance.project_code(Path(__file__), "swipr_core", "objectives", "search"),
                                 space=demo, data=provenance.digest(settings), split=demo,
                                 threads=int(os.environ.get("OMP_NUM_THREADS", "1")), settings=settings)


def made_by_line(block: dict) -> str:
    libraries = ", ".join(f"{name} {version}" for name, version in block["versions"].items())
    return f"made by: commit {block['commit']}; {libraries}; threads {block['threads']}"


def reused(work: Path, now: dict) -> None:
    """Refuse --work's earlier studies unless they were made as this run would make them."""
    path = work / "provenance.json"
    if not path.exists():
        provenance.refuse(provenance.Refused(f"--reuse: {work} holds no provenance.json (no whole earlier run was "
                                             f"kept there); run without --reuse to make the data and studies"),
                          "bench/learn_from.py")
    recorded = json.loads(path.read_text())
    try:
        print(provenance.check(path, recorded, now))
    except provenance.Refused as error:
        provenance.refuse(error, "bench/learn_from.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="study seeds 0..N-1 (>= 5 for the figure)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--before", type=int, default=600)
    parser.add_argument("--after", type=int, default=900)
    parser.add_argument("--relabel", type=float, default=0.05, help="share of the earlier photos relabelled")
    parser.add_argument("--work", type=Path, default=None, help="keep the data and studies here")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="--work's data and earlier studies, from a run before")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="learn-from-"))
    work.mkdir(parents=True, exist_ok=True)
    now = made(args)
    print(made_by_line(now), flush=True)
    if args.reuse:
        reused(work, now)
        small, grown, other = (work / folder / "pics.db" for folder in ("before", "grown", "other"))
    else:
        (work / "provenance.json").unlink(missing_ok=True)   # gone until what it describes is whole
        small, grown, other = grown_data(work, args.before, args.after, args.relabel)
        for name, database in (("before", small), ("other", other)):
            seconds = run(study_file(work, name, database, 0), args.trials)
            print(f"{name}: {args.trials} trials in {seconds:.0f} s")
        staged = work / "provenance.json.tmp"
        staged.write_text(json.dumps(now, indent=1))
        staged.replace(work / "provenance.json")
    worst: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        paths = {"cold": study_file(work, f"cold{seed}", grown, seed),
                 "learned": study_file(work, f"learned{seed}", grown, seed, "before.toml"),
                 "enqueued": study_file(work, f"enqueued{seed}", grown, seed, "before.toml", sampler=False),
                 "control": study_file(work, f"control{seed}", grown, seed, "other.toml")}
        curves = {}
        for name, path in paths.items():
            seconds = run(path, args.trials)
            curves[name] = curve(path)
            print(f"seed {seed} {name}: {args.trials} trials in {seconds:.0f} s", flush=True)
        total = curves["cold"][-1][0]
        for name, points in curves.items():
            shown = "  ".join(f"{int(100 * s)}%: {_text(best_at(points, s * total))}" for s in POINTS)
            ratio = worst_ratio(curves["cold"], points, total) if name != "cold" else None
            print(f"seed {seed} {name:9s} best-so-far at the cold study's epochs ({total}) {shown}"
                  + (f"  worst ratio to cold {ratio:.3f}" if ratio is not None else ""), flush=True)
            if ratio is not None:
                worst[name].append(ratio)
    for name in VARIANTS:
        print(f"{name}: worst learned/cold ratio per seed {', '.join(f'{r:.3f}' for r in worst[name])}; "
              f"median {statistics.median(worst[name]):.3f}")
    print(f"learn_from_anytime: {statistics.median(worst['learned']):.3f}")


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
