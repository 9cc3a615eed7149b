"""Would prefix sharing beyond n_cycles pay? Measured on bench/search_efficiency.py's replays.

    python bench/prefix_sharing.py [--seeds 10]

Over the default strategy's replayed studies (first BUDGET_FACTOR x the grid's epochs of each), it
counts the epochs a trial could have started from another trial's checkpoint instead of training:
  - a configuration sampled again: everything the earlier trial already trained;
  - one that differs only in cycle_mult from an earlier trial: their common first cycle (and the
    frozen_then_unfrozen warm-up before it).
"""
from __future__ import annotations

import argparse
import json

import optuna
import search_efficiency as bench  # bench/ is the script's folder, first on sys.path


def shared_epochs(rows: list[dict], names: list[str], window: float) -> tuple[int, int, int]:
    """(epochs spent, of which a repeat's already-trained, of which a first cycle shared with
    another cycle_mult) in the first `window` epochs of one study."""
    reached: dict[tuple, int] = {}   # configuration -> most epochs trained so far
    spent = repeat = first = 0
    for row in rows:
        if spent + row["epochs"] > window:
            break
        spent += row["epochs"]
        params = dict(zip(names, row["key"], strict=True))
        exact = min(reached.get(row["key"], 0), row["epochs"])
        common = params["cycle_len"] + (params["freeze"] == "frozen_then_unfrozen")
        sibling = any(dict(zip(names, other, strict=True))["cycle_mult"] != params["cycle_mult"] and epochs >= common
                      and all(dict(zip(names, other, strict=True))[n] == params[n] for n in ("lr", "freeze", "cycle_len"))
                      for other, epochs in reached.items())
        repeat += exact
        first += max(exact, min(common, row["epochs"]) if sibling else 0) - exact
        reached[row["key"]] = max(reached.get(row["key"], 0), row["epochs"])
    return spent, repeat, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = json.loads(bench.TABLE.read_text())
    grid = {name: tuple(values) for name, values in data["grid"].items()}
    curves = {bench.key(c["params"], grid): c for c in data["configs"]}
    grid_epochs = sum(len(c["val_loss"]) for c in curves.values())
    strategy = next(s for s in bench.STRATEGIES if bench._with_mode(s[1:]) == bench.default_strategy()[1:])
    names = [name for name in grid if name != "n_cycles"]
    totals = [0, 0, 0]
    for seed in range(args.seeds):
        rows = bench.replay_study(curves, grid, strategy, seed, grid_epochs * bench.CAP_FACTOR,
                                  data["meta"].get("head_epochs", 1))
        for i, value in enumerate(shared_epochs(rows, names, grid_epochs * bench.BUDGET_FACTOR)):
            totals[i] += value
    spent, repeat, first = totals
    print(f"{strategy[0]}, {args.seeds} seeds, first {grid_epochs * bench.BUDGET_FACTOR:g} epochs of each study: "
          f"{spent} epochs; a repeated configuration's already-trained epochs {repeat} ({repeat / spent:.1%}); "
          f"first cycles shared with another cycle_mult {first} ({first / spent:.1%})")


if __name__ == "__main__":
    main()
