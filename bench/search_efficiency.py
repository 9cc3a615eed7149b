"""How many epochs each search strategy spends to find a good configuration.

A tabular learning-curve benchmark, as HPO research measures searchers:

    python bench/search_efficiency.py            # replay the committed tables: minutes, no training
    nice python bench/search_efficiency.py --record   # train the whole grid once (minutes, 1 CPU thread)
    nice python bench/search_efficiency.py --record --pretrained   # the pretrained table's grid

Two tables: "demo", random weights as studies/demo.toml trains; "pretrained", the
same network fine-tuned from bench/make_pretrained.py's weights (`[model] pretrained = true,
weights = FILE`), the real job, over PRETRAINED_GRID. --record trains every configuration of
a table's grid to its end, unpruned, with the project's trainer on the demo data of
studies/demo.toml, and writes each one's validation loss per epoch, which epochs end a cycle,
and seconds to the table's file. The replay runs real Optuna studies (the project's
samplers and pruners) over GRID as a categorical space; each trial reports its recorded curve
through objectives.judging.replay_curve, the code a live trial runs, and stops where the pruner
says so. Each study runs until it has spent CAP_FACTOR x the grid's epochs.

Three ways to treat n_cycles: "sampled", one more param (each trial one length);
"budget", nested schedules (a trial plans the largest n_cycles and each smaller one in the grid
is a finished schedule on the way: the table's 3-cycle curves hold the 2-cycle runs exactly,
epoch for epoch); and the one-epoch baseline of Egele et al. (2023), "Is one epoch all you need
for multi-fidelity HPO?": train every sampled configuration to its first cycle end, keep the
best ONE_EPOCH_KEEP, train those to their end (nested), and again, until the cap.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run as a script from anywhere: the project's packages

from bench import provenance  # noqa: E402
from objectives.judging import BEST_N_CYCLES_ATTR, replay_curve  # noqa: E402
from objectives.space import DEFAULT_N_CYCLES_MODE, Choices, suggest  # noqa: E402
from objectives.trial_attrs import attrs_of  # noqa: E402
from search.study.pruners import make_pruner  # noqa: E402
from search.study.samplers import make_sampler  # noqa: E402
from search.studyfile import StudySection  # noqa: E402
from swipr_core.train.schedule import TrainConfig  # noqa: E402

TABLE = ROOT / "bench" / "results" / "search_efficiency_curves.json"
PRETRAINED_TABLE = ROOT / "bench" / "results" / "search_efficiency_curves_pretrained.json"
WEIGHTS = ROOT / "bench" / "results" / "demo_pretrained_test_resnet.safetensors"   # bench/make_pretrained.py
STUDY_FILE = ROOT / "studies" / "demo.toml"
# The grid: every schedule knob at two values, three learning rates across the demo space,
# and the three freeze strategies. batch_size and image_size stay at the demo's first choice.
GRID = {
    "lr": (1e-3, 5e-3, 2e-2),
    "freeze": ("frozen", "unfrozen", "frozen_then_unfrozen"),
    "n_cycles": (2, 3),
    "cycle_len": (1, 2),
    "cycle_mult": (1, 2),
}
# Fine-tuning wants lower learning rates: the grid's lrs a step lower, the rest the same.
PRETRAINED_GRID = {**GRID, "lr": (5e-4, 2e-3, 8e-3)}
TABLES = {"demo": (TABLE, GRID), "pretrained": (PRETRAINED_TABLE, PRETRAINED_GRID)}   # name: (file, grid)
DEFAULTS = StudySection()   # the study file's defaults: pruner, warm-up, start-up trials
# (name, sampler, pruner, prune_at, pruner_warmup_epochs[, n_cycles: sampled | budget | one_epoch]).
# "today": the study file defaults the first table was measured against (median pruner, every epoch).
STRATEGIES = (
    ("random, no pruning", "random", "none", "epoch", 1),
    ("tpe, no pruning", "tpe", "none", "epoch", 1),
    ("tpe + median, every epoch (today)", "tpe", "median", "epoch", 1),
    ("tpe + median, cycle ends, warm-up 1", "tpe", "median", "cycle_end", 1),
    ("tpe + median, cycle ends", "tpe", "median", "cycle_end", DEFAULTS.pruner_warmup_epochs),
    ("tpe + hyperband, every epoch", "tpe", "hyperband", "epoch", DEFAULTS.pruner_warmup_epochs),
    ("tpe + hyperband, cycle ends", "tpe", "hyperband", "cycle_end", DEFAULTS.pruner_warmup_epochs),
    ("tpe + successive halving, cycle ends", "tpe", "successive_halving", "cycle_end", DEFAULTS.pruner_warmup_epochs),
    ("tpe, no pruning, nested", "tpe", "none", "cycle_end", 1, "budget"),
    ("tpe + median, cycle ends, nested", "tpe", "median", "cycle_end", DEFAULTS.pruner_warmup_epochs, "budget"),
    ("tpe + hyperband, cycle ends, nested", "tpe", "hyperband", "cycle_end", DEFAULTS.pruner_warmup_epochs, "budget"),
    ("tpe + successive halving, nested", "tpe", "successive_halving", "cycle_end", DEFAULTS.pruner_warmup_epochs,
     "budget"),
    # the default's pruner with promote's draws ("/distinct": make_sampler's distinct, a configuration
    # no trial holds): how much of promote's gain the draws alone give
    ("tpe + succ. halving, nested, distinct", "tpe/distinct", "successive_halving", "cycle_end",
     DEFAULTS.pruner_warmup_epochs, "budget"),
    ("one-epoch baseline (random, keep 3)", "random", "none", "cycle_end", 0, "one_epoch"),
    ("one-epoch baseline (tpe, keep 3)", "tpe", "none", "cycle_end", 0, "one_epoch"),
    # [study] scheduler = "promote" (docs/promotion.md): pause at every cycle end, promote by the rule
    ("tpe, promote (asha), nested", "tpe", "none", "cycle_end", 0, "promote:asha"),
    ("tpe, promote (curve), nested", "tpe", "none", "cycle_end", 0, "promote:curve"),
)
TODAY, CYCLE_END, NO_PRUNING = STRATEGIES[2][0], STRATEGIES[4][0], STRATEGIES[1][0]
TARGET = 1.02        # within 2% of the grid's best final loss
CAP_FACTOR = 2.0     # a study stops after this many times the epochs of the whole grid
BUDGET_FACTOR = 0.5  # "best after a fixed budget": half the grid's epochs
TOP = 3              # the grid's best configurations, watched for being pruned
ONE_EPOCH_SCREEN = 12   # one-epoch baseline: configurations screened to their first cycle end a round
ONE_EPOCH_KEEP = 3      # ... and the best of them trained to their end


def default_strategy() -> tuple:
    """The study files' defaults as a strategy: the one `vs_unpruned` speaks for."""
    return ("defaults", DEFAULTS.sampler, DEFAULTS.pruner, DEFAULTS.prune_at, DEFAULTS.pruner_warmup_epochs,
            DEFAULTS.n_cycles or DEFAULT_N_CYCLES_MODE)


def mode_of(strategy: tuple) -> str:
    return strategy[5] if len(strategy) > 5 else "sampled"


def _with_mode(settings: tuple) -> tuple:
    """(sampler, pruner, prune_at, warm-up, n_cycles mode) of a strategy's settings."""
    return (*settings[:4], settings[4] if len(settings) > 4 else "sampled")


# --- record ---------------------------------------------------------------------------------

def record(table: Path, study_path: Path, threads: int, grid: dict = GRID, weights: Path | None = None) -> None:
    """Train every configuration of `grid` to its end on the demo data, from `weights` if given
    (else the study file's model); write the curves."""
    import dataclasses

    import torch

    torch.set_num_threads(threads)   # one thread: a shared machine, and no oversubscription
    from search.studyfile import load_study_file
    from swipr_core.data.dataset import prepare_data
    from swipr_core.data.demo import write_demo_data
    from swipr_core.train.run import train
    from swipr_core.train.schedule import TrainConfig

    study_file = load_study_file(study_path)
    if not study_file.data.database.exists():
        write_demo_data(study_file.data.database.parent)
    dataset = prepare_data(study_file.data)
    made = table_provenance(study_file, dataset, grid, weights, threads)   # before training: what it will be
    fixed = {name: study_file.space[name].values[0] for name in ("batch_size", "image_size")}
    model = study_file.model if weights is None else dataclasses.replace(study_file.model, pretrained=True,
                                                                        weights=weights)
    rows, started = [], time.perf_counter()
    for params in grid_configs(grid):
        config = TrainConfig(**params, **fixed, head_epochs=study_file.train.head_epochs, seed=0)
        result = train(dataset, config, model, device="cpu", precision="fp32")
        rows.append({"params": params, "val_loss": [r.valid_loss for r in result.history],
                     "cycle_end": [r.cycle_end for r in result.history],
                     "accuracy": [r.accuracy for r in result.history],
                     "seconds": [round(r.seconds, 3) for r in result.history]})
        print(f"{len(rows)}/{n_configs(grid)} {params}: {len(result.history)} epochs, "
              f"final val_loss {result.history[-1].valid_loss:.4f}", flush=True)
    meta = {"study_file": str(study_path.relative_to(ROOT)), "arch": model.arch, **fixed,
            "weights": str(weights.relative_to(ROOT)) if weights else None,
            "head_epochs": study_file.train.head_epochs, "data_fingerprint": dataset.fingerprint,
            "images": len(dataset.split), "cpu_threads": torch.get_num_threads(),
            "total_seconds": round(time.perf_counter() - started, 1), "provenance": made}
    table.parent.mkdir(parents=True, exist_ok=True)
    partial = table.with_suffix(".partial")
    partial.write_text(json.dumps({"meta": meta, "grid": grid, "configs": rows}, indent=1))
    partial.replace(table)   # an interrupted recording leaves the committed table as it was
    print(f"wrote {table}: {len(rows)} configurations in {meta['total_seconds']} s")


def table_provenance(study_file, dataset, grid: dict, weights: Path | None, threads: int) -> dict:
    """What a --record of `grid` makes now (bench/provenance.py): the trainer (swipr_core) and
    record()'s own source, the grid, the demo photos and their split, the fixed settings."""
    settings = {"study_file": str(study_file.path.relative_to(ROOT)), "arch": study_file.model.arch,
                **{name: study_file.space[name].values[0] for name in ("batch_size", "image_size")},
                "head_epochs": study_file.train.head_epochs,
                "weights": str(weights.relative_to(ROOT)) if weights else None}
    code = {"swipr_core": provenance.code_hash(ROOT / "swipr_core"),
            "bench/search_efficiency.py:record": provenance.source_hash(record)}
    if weights:
        code[settings["weights"]] = provenance.files_hash(ROOT, [weights.relative_to(ROOT)])
    data, split = provenance.dataset_fingerprints(dataset, study_file.data.image_root)
    return provenance.provenance("bench/search_efficiency.py --record", code=code, space=provenance.digest(grid),
                                 data=data, split=split, threads=threads, settings=settings)


def check_table(table: Path, study_path: Path, threads: int, accept_unversioned: bool) -> None:
    """Refuse (one line, exit 2) a table that a --record now would not make the same way; print
    what is replayed and from when. The demo photos are made in a temporary folder when the
    study file's aren't there, as --record would make them."""
    import dataclasses
    import tempfile

    from search.studyfile import load_study_file
    from swipr_core.data.dataset import prepare_data
    from swipr_core.data.demo import write_demo_data

    data = json.loads(table.read_text())
    name = table_name(table)
    grid = TABLES[name][1] if name in TABLES else data["grid"]
    weights = WEIGHTS if data["meta"].get("weights") else None
    study_file = load_study_file(study_path)
    with tempfile.TemporaryDirectory(prefix="swipr-efficiency-") as tmp:
        spec = study_file.data
        if not spec.database.exists():
            write_demo_data(Path(tmp) / "demo-data")
            spec = dataclasses.replace(spec, database=Path(tmp) / "demo-data" / "pics.db", image_root=Path(tmp) / "demo-data",
                                       cache_dir=Path(tmp) / "cache", labels_file=Path(tmp) / "labels.csv")
        dataset = prepare_data(spec)
        now = table_provenance(dataclasses.replace(study_file, data=spec), dataset, grid, weights, threads)
    try:
        print(f"replaying {provenance.check(table, data['meta'].get('provenance'), now, accept_unversioned)}",
              flush=True)
    except provenance.Refused as error:
        provenance.refuse(error, "bench/search_efficiency.py")


def grid_configs(grid: dict = GRID) -> list[dict]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def n_configs(grid: dict = GRID) -> int:
    return math.prod(len(values) for values in grid.values())


# --- replay ---------------------------------------------------------------------------------

def key(params: dict, names) -> tuple:
    return tuple(params[name] for name in names)


def nested_curves(curves: dict, grid: dict, head_epochs: int) -> tuple[dict, dict]:
    """(space less n_cycles, {key less n_cycles: curve}) of nested trials: each the longest
    n_cycles curve, with `finishes` (swipr_core.train.schedule's finished schedules) and `covers`, the
    grid key finished at each epoch."""
    names = [name for name in grid if name != "n_cycles"]
    budget = tuple(sorted(grid["n_cycles"]))
    nested = {}
    for full, curve in curves.items():
        params = dict(zip(grid, full, strict=True))
        if params["n_cycles"] != budget[-1]:
            continue
        plan = TrainConfig(**params, batch_size=16, image_size=32, head_epochs=head_epochs, finish_at=budget)
        finishes = [0] * len(curve["val_loss"])
        for end in plan.schedule().finished():
            finishes[end.epoch] = end.cycle
        covers = {e: key({**params, "n_cycles": k}, grid) for e, k in enumerate(finishes) if k}
        nested[key(params, names)] = {**curve, "finishes": finishes, "covers": covers,
                                      "sampled": {key({**params, "n_cycles": k}, grid) for k in budget}}
    return {name: grid[name] for name in names}, nested


def replay_study(curves: dict, grid: dict, strategy: tuple, seed: int, cap: float, head_epochs: int = 1) -> list[dict]:
    """One real Optuna study over the recorded grid; a row per trial, in order. Each row: the
    key sampled, state, value, epochs, and which grid configurations it could have finished
    (`sampled`) and did finish (`covers`)."""
    if mode_of(strategy) == "one_epoch":
        return one_epoch_baseline(curves, grid, strategy, seed, cap, head_epochs)
    if mode_of(strategy).startswith("promote:"):
        return promote_study(curves, grid, strategy, seed, cap, head_epochs)
    _, sampler, pruner, prune_at, warmup = strategy[:5]
    if mode_of(strategy) == "budget":
        grid, curves = nested_curves(curves, grid, head_epochs)
    section = StudySection(pruner=pruner, prune_at=prune_at, pruner_warmup_epochs=warmup)
    name, _, draws = sampler.partition("/")
    study = optuna.create_study(study_name=f"{strategy[0]} {seed}", sampler=make_sampler(name, seed, draws == "distinct"),
                                pruner=make_pruner(section, max(len(c["val_loss"]) for c in curves.values())))
    space = {name: Choices(tuple(values)) for name, values in grid.items()}
    spent = [0]

    def objective(trial: optuna.Trial) -> float:
        curve = curves[key({name: suggest(trial, name, spec) for name, spec in space.items()}, grid)]
        return replay_curve(trial, curve["val_loss"], curve["cycle_end"], prune_at, curve.get("finishes"))

    def stop_at_cap(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        spent[0] += attrs_of(trial)["epochs"]
        if spent[0] >= cap:
            study.stop()

    study.optimize(objective, callbacks=[stop_at_cap])
    return [_row(t, curves[key(t.params, grid)]) for t in study.trials]


def _row(trial: optuna.trial.FrozenTrial, curve: dict) -> dict:
    k, epochs = key(trial.params, list(trial.params)), attrs_of(trial)["epochs"]
    done = trial.state.name == "COMPLETE"
    if "covers" in curve:
        covers = {grid_key for e, grid_key in curve["covers"].items() if e < epochs} if done else set()
        sampled = curve["sampled"]
    else:
        covers, sampled = ({k} if done else set()), {k}
    return {"key": k, "state": trial.state.name, "value": trial.value, "epochs": epochs, "covers": covers,
            "sampled": sampled, "best_n_cycles": attrs_of(trial).get(BEST_N_CYCLES_ATTR)}


def one_epoch_baseline(curves: dict, grid: dict, strategy: tuple, seed: int, cap: float, head_epochs: int) -> list[dict]:
    """Egele et al. (2023): rounds of ONE_EPOCH_SCREEN configurations, each trained to its first
    cycle end (the sampler told that loss); the best ONE_EPOCH_KEEP of each round go on to their
    end, nested (value: best finished schedule). Until the cap."""
    grid, curves = nested_curves(curves, grid, head_epochs)
    study = optuna.create_study(study_name=f"{strategy[0]} {seed}", sampler=make_sampler(strategy[1], seed))
    space = {name: Choices(tuple(values)) for name, values in grid.items()}
    rows: list[dict] = []
    while sum(row["epochs"] for row in rows) < cap:
        screened = []
        for _ in range(ONE_EPOCH_SCREEN):
            trial = study.ask()
            k = key({name: suggest(trial, name, spec) for name, spec in space.items()}, grid)
            first = curves[k]["cycle_end"].index(True)
            study.tell(trial, curves[k]["val_loss"][first])
            screened.append((curves[k]["val_loss"][first], len(rows), k, first + 1))
            rows.append({"key": k, "state": "PRUNED", "value": None, "epochs": first + 1, "covers": set(),
                         "sampled": curves[k]["sampled"]})
        for _, index, k, spent in sorted(screened)[:ONE_EPOCH_KEEP]:
            curve = curves[k]
            finished = [(loss, e) for e, (loss, f) in enumerate(zip(curve["val_loss"], curve["finishes"],
                                                                      strict=True)) if f]
            rows[index].update(state="SCREENED", sampled=set())   # its row goes on below
            rows.append({"key": k, "state": "COMPLETE", "value": min(finished)[0],
                         "epochs": len(curve["val_loss"]) - spent, "covers": set(curve["covers"].values()),
                         "sampled": curve["sampled"]})
    return rows


def promote_study(curves: dict, grid: dict, strategy: tuple, seed: int, cap: float, head_epochs: int) -> list[dict]:
    """`scheduler = "promote"` over nested curves, with the live code: search.running.promotion
    decides each turn (new configurations always allowed: the cap ends the study), and
    objectives.pausing pauses a trial at each cycle end and takes it back when promoted. A row per
    turn, in order; a trial's finished schedules count from the turn that reached them."""
    from objectives.judging import best_finished, report_epoch
    from objectives.optuna_compat import order_queue
    from objectives.pausing import TrialPaused, continuing, pause
    from objectives.trial_attrs import set_attr
    from search.running.promotion import next_turn, queue_for

    grid, curves = nested_curves(curves, grid, head_epochs)
    study = optuna.create_study(study_name=f"{strategy[0]} {seed}", sampler=make_sampler(strategy[1], seed, distinct=True))
    space = {name: Choices(tuple(values)) for name, values in grid.items()}
    rule = mode_of(strategy).split(":")[1]
    rows: list[dict] = []
    last_row: dict[int, int] = {}   # trial number -> its latest row
    while sum(row["epochs"] for row in rows) < cap:
        turn = next_turn(study.get_trials(deepcopy=False), DEFAULTS.promotion_eta, rule, True)
        if turn is None:   # every configuration finished: the study ends below the cap
            break
        order_queue(study, queue_for(turn))
        trial = study.ask()
        continuing(trial)
        k = key({name: suggest(trial, name, spec) for name, spec in space.items()}, grid)
        curve, done = curves[k], attrs_of(trial).get("epochs", 0)
        end = next(e for e in range(done, len(curve["val_loss"])) if curve["cycle_end"][e] or e == len(curve["val_loss"]) - 1)
        for e in range(done, end + 1):
            set_attr(trial, "epochs", e + 1)
            report_epoch(trial, e, curve["val_loss"][e], curve["cycle_end"][e], "cycle_end", ask=False,
                         planned=len(curve["val_loss"]), finishes=curve["finishes"][e])
        best = best_finished(curve["val_loss"][:end + 1], curve["finishes"][:end + 1])
        if end + 1 < len(curve["val_loss"]):
            pause(trial, TrialPaused(sum(curve["cycle_end"][:end + 1]), end + 1))
        else:
            study.tell(trial, best[2] if best else curve["val_loss"][-1])
        last_row[trial.number] = len(rows)
        rows.append({"key": k, "trial": trial.number, "state": "COMPLETE" if best else "PRUNED",
                     "value": best[2] if best else None, "epochs": end + 1 - done, "covers": set(), "sampled": set(),
                     "_covers": {g for e, g in curve["covers"].items() if e <= end}, "_sampled": curve["sampled"]})
    for index in last_row.values():   # each configuration counted once, with all it finished
        rows[index].update(covers=rows[index].pop("_covers"), sampled=rows[index].pop("_sampled"))
    return rows


def score(trials: list[dict], target: float, budget: float, top: list) -> dict:
    """Epochs until the best-so-far is within the target, best loss within the budget, and how
    often the `top` configurations (best first) were sampled and not finished (pruned)."""
    spent, best, to_target, best_at_budget = 0, math.inf, math.inf, math.inf
    for trial in trials:
        spent += trial["epochs"]
        if trial["state"] == "COMPLETE":
            best = min(best, trial["value"])
            if spent <= budget:
                best_at_budget = best
            if best <= target and to_target == math.inf:
                to_target = spent
    sampled = [(t, k) for t in trials for k in top if k in t.get("sampled", {t["key"]})]
    pruned = [(t, k) for t, k in sampled if k not in t.get("covers", {t["key"]} if t["state"] == "COMPLETE" else set())]
    return {"epochs_to_target": to_target, "best_at_budget": best_at_budget, "top_sampled": len(sampled),
            "top_pruned": len(pruned), "best_sampled": sum(k == top[0] for _, k in sampled),
            "best_pruned": sum(k == top[0] for _, k in pruned)}


def quartiles(values: list[float]) -> list[float]:
    """[q1, median, q3]; inf (target never reached) sorts last, as it should."""
    ordered = sorted(values)
    return [ordered[int(round(q * (len(ordered) - 1)))] for q in (0.25, 0.5, 0.75)]


def replay(table: Path, seeds: int, only: str | None = None) -> dict:
    data = json.loads(table.read_text())
    grid = {name: tuple(values) for name, values in data["grid"].items()}
    curves = {key(c["params"], grid): c for c in data["configs"]}
    finals = sorted(curves, key=lambda k: curves[k]["val_loss"][-1])
    grid_best = curves[finals[0]]["val_loss"][-1]
    grid_epochs = sum(len(c["val_loss"]) for c in curves.values())
    target, budget, cap = grid_best * TARGET, grid_epochs * BUDGET_FACTOR, grid_epochs * CAP_FACTOR
    head_epochs = data["meta"].get("head_epochs", 1)
    results = {}
    for strategy in STRATEGIES:
        if only and not any(part in strategy[0] for part in only.split("|")) \
                and strategy[0] not in (TODAY, CYCLE_END, NO_PRUNING) and _with_mode(strategy[1:]) != default_strategy()[1:]:
            continue
        scores = [score(replay_study(curves, grid, strategy, seed, cap, head_epochs), target, budget, finals[:TOP])
                  for seed in range(seeds)]
        results[strategy[0]] = {
            "epochs_to_target_q1_median_q3": quartiles([s["epochs_to_target"] for s in scores]),
            "reached_target": sum(s["epochs_to_target"] < math.inf for s in scores),
            "best_at_budget_median": statistics.median(s["best_at_budget"] for s in scores),
            **{key: sum(s[key] for s in scores) for key in ("top_pruned", "top_sampled", "best_pruned",
                                                             "best_sampled")},
        }
    default = next(s[0] for s in STRATEGIES if _with_mode(s[1:]) == default_strategy()[1:])
    return {"grid_best": grid_best, "target": target, "grid_epochs": grid_epochs, "budget_epochs": budget,
            "cap_epochs": cap, "seeds": seeds, "configs": len(curves), "strategies": results, "default": default}


def print_table(name: str, report: dict) -> None:
    print(f"table {name}: {report['configs']} configurations, {report['grid_epochs']} epochs to train them all; grid best "
          f"{report['grid_best']:.4f}, target {report['target']:.4f}; budget {report['budget_epochs']:g} epochs; "
          f"{report['seeds']} seeds per strategy, each study capped at {report['cap_epochs']:g} epochs")
    head = (f"{'strategy':<38} {'epochs to target q1/median/q3':>30} {'reached':>8} {'best@budget':>11} "
            f"{'top3 pruned':>15} {'best pruned':>11}")
    print(head)
    print("-" * len(head))
    for name, row in report["strategies"].items():
        q = "/".join("-" if math.isinf(v) else f"{v:g}" for v in row["epochs_to_target_q1_median_q3"])
        share = row["top_pruned"] / row["top_sampled"] if row["top_sampled"] else 0.0
        pruned = f"{row['top_pruned']}/{row['top_sampled']} {share:4.0%}"
        print(f"{name:<38} {q:>30} {row['reached_target']:>5}/{report['seeds']:<2} "
              f"{row['best_at_budget_median']:>11.4f} {pruned:>15} {row['best_pruned']:>4}/{row['best_sampled']:<6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="train a grid and write its table (slow)")
    parser.add_argument("--pretrained", action="store_true",
                        help=f"--record: the pretrained table (PRETRAINED_GRID from {WEIGHTS.relative_to(ROOT)})")
    parser.add_argument("--table", type=Path, help="--record: write here; replay: only this table "
                        f"(default: {', '.join(str(t.relative_to(ROOT)) for t, _ in TABLES.values())})")
    parser.add_argument("--study-file", type=Path, default=STUDY_FILE, help="--record: data, model and sizes")
    parser.add_argument("--threads", type=int, default=1, help="--record: torch threads")
    parser.add_argument("--seeds", type=int, default=30, help="studies per strategy")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--only", help="replay only the strategies whose name contains one of these ('|'-separated), and "
                             "the four the summary lines compare")
    parser.add_argument(provenance.ACCEPT_FLAG, action="store_true",
                        help="replay tables recorded before provenance (bench/README.md, Provenance); what they do "
                             "record (grid, split, threads, settings) is still checked")
    args = parser.parse_args()
    name = "pretrained" if args.pretrained else "demo"
    if args.record:
        table, grid = TABLES[name]
        record(args.table or table, args.study_file.resolve(), args.threads, grid,
               WEIGHTS if args.pretrained else None)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tables = {table_name(args.table): args.table} if args.table else {n: t for n, (t, _) in TABLES.items()
                                                                       if t.is_file()}
    for table in tables.values():
        check_table(table, args.study_file.resolve(), args.threads, args.accept_unversioned)
    reports = {n: replay(table, args.seeds, args.only) for n, table in tables.items()}
    for n, report in reports.items():
        print_table(n, report)
    text = json.dumps(reports, default=lambda v: None).replace("Infinity", "null")
    print(text)
    if args.json:
        made = replay_provenance(tables, args)
        args.json.write_text(json.dumps({"provenance": made, "tables": json.loads(text)}))
    for n, report in reports.items():
        print_summary(n, report)
    # `ratio:` compares today's per-epoch median with the cycle-end median, on the first table.
    first = next(iter(reports.values()))
    median = medians(first)
    print(f"ratio: {median[TODAY] / median[CYCLE_END]:.2f}")


def replay_provenance(tables: dict[str, Path], args) -> dict:
    """What made a --json file: this script and the code it replays with (samplers, pruners,
    judging), the tables (each table's own provenance), the strategies and seeds."""
    code = provenance.project_code(Path(__file__), "objectives", "search")
    recorded = {n: json.loads(t.read_text())["meta"].get("provenance") for n, t in tables.items()}
    return provenance.provenance("bench/search_efficiency.py", code=code, space=provenance.digest(recorded),
                                 data=provenance.digest({n: p and p.get("data") for n, p in recorded.items()}),
                                 split=provenance.digest({n: p and p.get("split") for n, p in recorded.items()}),
                                 threads=1, settings={"seeds": args.seeds, "only": args.only, "tables": recorded})


def table_name(table: Path) -> str:
    """`vs_unpruned: NAME`: a committed table's name, another file's stem."""
    return next((name for name, (path, _) in TABLES.items() if path.resolve() == table.resolve()), table.stem)


def medians(report: dict) -> dict:
    """Median epochs to target by strategy; a study that never reached the target counts as the
    cap, so a ratio over one is then a lower bound."""
    return {name: min(row["epochs_to_target_q1_median_q3"][1], report["cap_epochs"])
            for name, row in report["strategies"].items()}


def print_summary(name: str, report: dict) -> None:
    median = medians(report)
    bound = "≥ " if median[TODAY] >= report["cap_epochs"] else ""
    print(f"{name}: {TODAY} / {CYCLE_END}, epochs to target: {bound}{median[TODAY]:g} / {median[CYCLE_END]:g}; "
          f"{CYCLE_END} / {NO_PRUNING}: {median[CYCLE_END] / median[NO_PRUNING]:.2f} (target ≤ 0.5)")
    print(f"{name}: default ({report['default']}) / {NO_PRUNING}, epochs to target: {median[report['default']]:g} / "
          f"{median[NO_PRUNING]:g} (target ≤ 0.5)")
    print(f"vs_unpruned: {name} {median[report['default']] / median[NO_PRUNING]:.2f}")


if __name__ == "__main__":
    main()
