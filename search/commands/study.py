"""`swipr study run|status|best STUDY.toml`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from objectives.judging import interrupted
from objectives.optuna_compat import stale_trial_numbers
from objectives.pausing import paused_after
from objectives.record import record_of
from objectives.trial_attrs import attrs_of
from search.study.data_record import majority_baseline
from search.study.open import best_trial, open_study, quiet_optuna
from search.studyfile import load_study_file
from search.views.format import accuracy_text, count, params_text
from search.views.gains import gains_rows, search_gains
from search.views.results import accuracy_of, auc_of, schedule_text


def add_parser(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description="Run, inspect or report on a study.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    run_p = actions.add_parser(
        "run", help="run trials (running it again continues the same study)",
        description="Run trials of the study that STUDY.toml describes: prepare its data once, then train "
                    "one configuration from its [space] per trial, keeping every result in the study's "
                    "storage. Running it again continues the same study; Ctrl-C stops it (exit 130), and "
                    "the trial it interrupted resumes from its last epoch on the next run.")
    run_p.add_argument("study_file", type=Path, metavar="STUDY.toml",
                       help="the study file: [study], [data], [model], [train] and [space] (see studies/demo.toml)")
    run_p.add_argument("--n-trials", type=int, metavar="N", help="trials to run now (default: [study] n_trials)")
    run_p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    run_p.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: [train] device)")
    run_p.add_argument("--workers", type=int, metavar="K",
                       help="run K worker processes, a fresh process per trial (default: one, in this process)")
    run_p.add_argument("--gpus", metavar="0,1,..", help="one worker per GPU, each seeing only its GPU")
    run_p.add_argument("--trials-per-gpu", type=int, metavar="K", help="with --gpus: K workers per GPU (default 1)")
    run_p.add_argument("--dask", metavar="ADDRESS",
                       help="run the trials on the Dask cluster whose scheduler is at ADDRESS, e.g. tcp://head:8786 "
                            "(default: [cluster] dask or $SWIPR_DASK)")
    run_p.set_defaults(func="search.running.driver:run_study")   # torch, fastai: see search.cli

    status_p = actions.add_parser(
        "status", help="list the study's trials",
        description="List the study's trials: state, value, accuracy, epochs, params. A trial stopped by Ctrl-C "
                    "or SIGTERM reads INTERRUPTED; Optuna records it FAIL (its retry needs that), and --json "
                    "keeps \"state\": \"FAIL\" with \"interrupted\": true.")
    status_p.add_argument("study_file", type=Path, metavar="STUDY.toml", help="the study file")
    status_p.add_argument("--json", action="store_true", help="print JSON")
    status_p.set_defaults(func=status)

    best_p = actions.add_parser("best", help="the best trial's number, value and params; how it compares with "
                                             "the notebook's pipeline, and the epochs pruning saved")
    best_p.add_argument("study_file", type=Path, metavar="STUDY.toml", help="the study file")
    best_p.add_argument("--json", action="store_true", help="print JSON")
    best_p.set_defaults(func=best)

    report_p = actions.add_parser("report", help="write a self-contained HTML report of the study")
    report_p.add_argument("study_file", type=Path, metavar="STUDY.toml", help="the study file")
    report_p.add_argument("--out", type=Path, metavar="DIR", required=True, help="folder to write report.html in")
    report_p.add_argument("--artifact-dir", type=Path, metavar="DIR",
                          help="the study's pictures (default: <study>.artifacts beside the study file)")
    report_p.set_defaults(func="search.views.report:report_command")   # plotly, matplotlib


def _trial_row(trial, stale: bool = False) -> dict:
    """A trial as `status` shows it; STALE: RUNNING, but its worker's heartbeat stopped. Its
    figures are its record's result: the finished schedule its value names (objectives.record)."""
    record, attrs = record_of(trial), attrs_of(trial)
    result = record.result
    return {
        "number": trial.number,
        "state": "STALE" if stale else trial.state.name,
        # FAIL in Optuna (its retries need that) though nothing failed: stopped by Ctrl-C or SIGTERM
        "interrupted": interrupted(trial),
        # WAITING in Optuna: paused at a cycle end under scheduler = "promote" (objectives.pausing)
        "paused_after_cycle": paused_after(trial),
        "value": trial.value,
        "params": trial.params,
        "epochs": attrs.get("epochs"),
        "value_epoch": result.epoch if result is not None else None,
        "value_is": schedule_text(record) if result is not None else None,
        "val_accuracy": accuracy_of(trial),
        "val_roc_auc": auc_of(trial),
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
        # where it ran, on a Dask cluster: worker name, machine, GPU (CUDA_VISIBLE_DEVICES there)
        "worker": attrs.get("worker"),
        "host": attrs.get("host"),
        "gpu": attrs.get("gpu"),
    }


def _where(row: dict) -> str:
    if row["worker"] is None:
        return ""
    gpu = f" GPU {row['gpu']}" if row["gpu"] is not None else ""
    return f"  [{row['worker']}@{row['host']}{gpu}]"


def status(args: argparse.Namespace) -> int:
    study_file = load_study_file(args.study_file)
    quiet_optuna()
    study = open_study(study_file, create=False, heartbeat_aware=True, read_only=True)
    stale = stale_trial_numbers(study)
    rows = [_trial_row(t, t.number in stale) for t in study.get_trials(deepcopy=False)]
    baseline, majority_class = majority_baseline(study)
    if args.json:
        print(json.dumps({"study": study.study_name, "majority_accuracy": baseline, "trials": rows}, indent=2))
        return 0
    states: dict[str, int] = {}
    for row in rows:
        states[_shown_state(row)] = states.get(_shown_state(row), 0) + 1
    print(f"study '{study.study_name}': {count(len(rows), 'trial')} "
          f"({', '.join(f'{n} {s.lower()}' for s, n in sorted(states.items())) or 'none'})")
    if baseline is not None:   # what val_acc is worth: always answering the commoner class scores this
        always = f" (always {majority_class})" if majority_class else ""
        print(f"majority baseline accuracy {baseline:.3f}{always}; vs_base = val_acc minus it")
    print("val_loss, val_acc: the trial's value, its best finished schedule, whose epoch is 'at'")
    print(f"{'#':>4}  {'state':<11} {'val_loss':>8}  {'val_acc':>7}  {'vs_base':>7}  {'at':>3}  {'epochs':>6}  params")
    for row in rows:
        print(_status_line(row, baseline))
    return 0


def _shown_state(row: dict) -> str:
    """The state a person reads: an interrupted trial's FAIL as INTERRUPTED, a paused one's WAITING as PAUSED."""
    if row.get("paused_after_cycle") is not None:
        return "PAUSED"
    return "INTERRUPTED" if row["interrupted"] and row["state"] == "FAIL" else row["state"]


def _status_line(row: dict, baseline: float | None) -> str:
    value = f"{row['value']:.4f}" if row["value"] is not None else "-"
    accuracy = row["val_accuracy"]
    acc = f"{accuracy:.3f}" if accuracy is not None else "-"
    # + 0.0: a margin that rounds to zero is +0.000, not -0.000
    margin = f"{round(accuracy - baseline, 3) + 0.0:+.3f}" if accuracy is not None and baseline is not None else "-"
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
    at = row["value_epoch"] if row["value_epoch"] is not None else "-"
    return (f"{row['number']:>4}  {_shown_state(row):<11} {value:>8}  {acc:>7}  {margin:>7}  {at:>3}  "
            f"{row['epochs'] or '-':>6}  {params}{_where(row)}{_paused(row)}")


def _paused(row: dict) -> str:
    cycle = row.get("paused_after_cycle")
    return f"  (paused after cycle {cycle})" if cycle is not None else ""


def best(args: argparse.Namespace) -> int:
    study_file = load_study_file(args.study_file)
    quiet_optuna()
    study = open_study(study_file, create=False, read_only=True)
    trial = best_trial(study)
    gains = search_gains(study)
    record = record_of(trial)
    result = record.result
    payload = {"number": trial.number, "value": trial.value, "params": trial.params,
               "val_accuracy": accuracy_of(trial), "val_roc_auc": auc_of(trial),
               "result": result.to_json() if result is not None else None,
               "value_is": schedule_text(record) if result is not None else None, **gains}
    if args.json:
        print(json.dumps(payload))
        return 0
    print(f"best trial: {trial.number}")
    print(f"val_loss: {trial.value:.4f}" + (f" ({payload['value_is']})" if payload["value_is"] else ""))
    if payload["val_accuracy"] is not None:
        print(f"val_accuracy: {accuracy_text(payload['val_accuracy'], *majority_baseline(study))}")
    if payload["val_roc_auc"] is not None:
        print(f"val_roc_auc: {payload['val_roc_auc']:.4f}")
    print(f"params: {params_text(trial.params)}")
    for label, text in gains_rows(study, gains):
        print(f"{label}: {text}")
    return 0
