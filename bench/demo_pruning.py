"""What `make demo` prunes, replayed on bench/search_efficiency.py's table (no training).

    python bench/demo_pruning.py [--trials 12] [--seeds 5] [--n-cycles budget|sampled]

The table was recorded on the demo data with the demo's model (batch 16, 32 px). Here its
demo-like part (cycle_len 1, freeze unfrozen / frozen_then_unfrozen, its 3 learning rates,
cycle_mult 1 / 2, n_cycles 2 / 3) is searched with studies/demo.toml's sampler and pruner
settings, one study per seed: trials pruned, trials stopped after a finished shorter schedule,
epochs run of those planned, what nesting saved, and the best value.
"""
from __future__ import annotations

import argparse
import json

import optuna
import search_efficiency as bench  # bench/ is the script's folder, first on sys.path

from objectives.judging import CUT_ATTR, nesting_saved
from objectives.space import Choices, suggest
from objectives.trial_attrs import attrs_of
from search.study.pruners import make_pruner
from search.study.samplers import make_sampler
from search.studyfile import load_study_file


def demo_study(curves: dict, grid: dict, n_trials: int, mode: str, seed: int) -> tuple[optuna.Study, dict]:
    section = load_study_file(bench.STUDY_FILE).study
    if mode == "budget":
        grid, curves = bench.nested_curves(curves, grid, 1)
    study = optuna.create_study(sampler=make_sampler(section.sampler, seed),
                                pruner=make_pruner(section, max(len(c["val_loss"]) for c in curves.values())))
    space = {name: Choices(tuple(values)) for name, values in grid.items()}

    def objective(trial: optuna.Trial) -> float:
        curve = curves[bench.key({name: suggest(trial, name, spec) for name, spec in space.items()}, grid)]
        return bench.replay_curve(trial, curve["val_loss"], curve["cycle_end"], section.prune_at, curve.get("finishes"))

    study.optimize(objective, n_trials=n_trials)
    return study, {bench.key(t.params, grid): curves[bench.key(t.params, grid)] for t in study.trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=load_study_file(bench.STUDY_FILE).study.n_trials)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-cycles", choices=("budget", "sampled"), default="budget")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = json.loads(bench.TABLE.read_text())
    grid = {name: tuple(values) for name, values in data["grid"].items()}
    grid = {**grid, "freeze": ("unfrozen", "frozen_then_unfrozen"), "cycle_len": (1,)}
    curves = {bench.key(c["params"], grid): c for c in data["configs"]
              if c["params"]["freeze"] in grid["freeze"] and c["params"]["cycle_len"] == 1}
    for seed in range(args.seeds):
        study, used = demo_study(curves, grid, args.trials, args.n_cycles, seed)
        trials = study.trials
        names = list(trials[0].params)
        planned = sum(len(used[bench.key(t.params, names)]["val_loss"]) for t in trials)
        run = sum(attrs_of(t)["epochs"] for t in trials)
        print(f"seed {seed}: {sum(t.state.name == 'PRUNED' for t in trials)} pruned, "
              f"{sum(CUT_ATTR in attrs_of(t) and t.state.name == 'COMPLETE' for t in trials)} stopped after a "
              f"finished shorter schedule; {run} of {planned} planned epochs run ({1 - run / planned:.0%} saved), "
              f"nesting saved {sum(nesting_saved(attrs_of(t)) for t in trials)}; best {study.best_value:.4f}")


if __name__ == "__main__":
    main()
