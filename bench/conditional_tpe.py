"""TPE on the demo's conditional space: independent (the shipped sampler) against
`multivariate=True, group=True`, which Optuna documents for spaces whose params are drawn only
in some trials (stage 2's, drawn only by trials that reach stage 2: objectives.space.conditional).

Each variant runs the demo study as shipped (`studies/demo.toml`: its warm start, lr finder,
[space.stage2] and pruner) through `swipr study run` in a process of its own, with the same
seeds, one run after the other, on the same demo data; only the sampler differs. For each run it
prints the best value at 25%, 50% and 100% of the independent run's epochs (every epoch trained,
range tests counted as their epochs-equivalent where the study records them), how many trials
drew stage-2 params, and the final best; the last line is

    multivariate_vs_independent: X

the median over seeds of the worst (largest) ratio of the multivariate run's best-so-far to the
independent run's over those budgets (X <= 1: multivariate at least as good at every budget).

    .venv/bin/python bench/conditional_tpe.py [--seeds 0,1,2] [--trials 12] [--images 600]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from objectives.trial_attrs import attrs_of

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "independent": "",   # the shipped make_sampler
    "multivariate": ("import optuna, search.study.samplers as s, search.study.open as o\n"
                     "def make(name, seed):\n"
                     "    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5,\n"
                     "                                      multivariate=True, group=True)\n"
                     "s.make_sampler = o.make_sampler = make\n"),
}
RUN = "{patch}import warnings; warnings.simplefilter('ignore')\nfrom search.cli import main\nraise SystemExit(main())\n"


def _run(variant: str, seed: int, trials: int, data: Path, folder: Path) -> list[dict]:
    """One study run; its trials as (epochs, value, stage2 drawn) in the order they ended."""
    study = folder / f"{variant}-{seed}.toml"
    text = (ROOT / "studies" / "demo.toml").read_text()
    text = text.replace('database = "../demo-data/pics.db"', f'database = "{data / "pics.db"}"')
    text = text.replace("seed = 0", f"seed = {seed}", 1).replace('name = "demo"', f'name = "demo-{variant}-{seed}"')
    study.write_text(text)
    code = RUN.format(patch=VARIANTS[variant])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, "study", "run", str(study), "--n-trials", str(trials)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{variant} seed {seed}: exit {result.returncode}: {result.stderr[-2000:]}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=f"demo-{variant}-{seed}", storage=f"sqlite:///{folder / (study.stem + '.db')}")
    rows = []
    for t in sorted(loaded.trials, key=lambda t: t.datetime_complete or t.datetime_start):
        rows.append({"epochs": attrs_of(t).get("epochs", 0) - attrs_of(t).get("resumed_from_epoch", 0),
                     "value": t.value if t.state.name == "COMPLETE" else None,
                     "stage2": any(name.startswith("stage2_") and name != "stage2_n_cycles" for name in t.params)})
    return rows


def best_at(rows: list[dict], budget: float) -> float | None:
    spent, best = 0, None
    for row in rows:
        spent += row["epochs"]
        if spent > budget:
            break
        if row["value"] is not None and (best is None or row["value"] < best):
            best = row["value"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--images", type=int, default=600)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    from swipr_core.data.demo import write_demo_data

    worst = []
    with tempfile.TemporaryDirectory(prefix="swipr-bench-ctpe-") as tmp:
        folder = Path(tmp)
        write_demo_data(folder / "data", n_images=args.images, seed=0)
        for seed in seeds:
            runs = {variant: _run(variant, seed, args.trials, folder / "data", folder) for variant in VARIANTS}
            total = sum(row["epochs"] for row in runs["independent"])
            ratios = []
            for share in (0.25, 0.5, 1.0):
                a, b = best_at(runs["multivariate"], share * total), best_at(runs["independent"], share * total)
                if a is not None and b is not None:
                    ratios.append(a / b)
                print(f"seed {seed} at {share:.0%} of {total} epochs: independent {b}, multivariate {a}")
            for variant, rows in runs.items():
                finals = [r["value"] for r in rows if r["value"] is not None]
                print(f"seed {seed} {variant}: final best {min(finals):.4f}, {sum(r['stage2'] for r in rows)} of "
                      f"{len(rows)} trials drew stage 2's params, {sum(r['epochs'] for r in rows)} epochs")
            worst.append(max(ratios) if ratios else float("nan"))
            print(json.dumps({"seed": seed, "worst_ratio": worst[-1]}))
    print(f"multivariate_vs_independent: {statistics.median(worst):.3f}")


if __name__ == "__main__":
    main()
