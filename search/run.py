"""`swipr study run`: prepare the data once, then run trials against the study's storage."""
from __future__ import annotations

import argparse
import json
import math


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_study(args: argparse.Namespace) -> int:
    from objectives.finetune import FinetuneObjective
    from search.study import check_fingerprint, data_spec, describe_trial, enqueue_warm_start, open_study
    from search.study_file import load_study_file
    from search.storage import redact
    from swipr_core.data import prepare_data
    from swipr_core.errors import SwiprError
    from swipr_core.model import ModelSpec

    study_file = load_study_file(args.study_file)
    n_trials = study_file.study.n_trials if args.n_trials is None else args.n_trials
    if n_trials < 1:
        raise SwiprError(f"--n-trials must be 1 or more, got {n_trials}")
    timeout = args.timeout if args.timeout is not None else (study_file.study.timeout or None)
    if timeout is not None and (timeout <= 0 or not math.isfinite(timeout)):
        raise SwiprError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    _quiet_optuna()

    dataset = prepare_data(data_spec(study_file))
    counts = dataset.split.counts()
    print(f"data: {len(dataset.split)} images, YES {counts['YES']}, NO {counts['NO']}, "
          f"valid {counts['valid']}, fingerprint {dataset.fingerprint}")
    study = open_study(study_file, create=True)
    check_fingerprint(study, dataset, study_file)
    if enqueue_warm_start(study, study_file):
        print("warm start: the notebook's configurations go first")
    done_before = len(study.trials)
    print(f"study '{study.study_name}' in {redact(study_file.study.storage)}: "
          f"{done_before} trials so far, running {n_trials} more")

    model = study_file.model
    objective = FinetuneObjective(
        dataset, study_file.space, ModelSpec(model.arch, model.pretrained, model.weights),
        head_epochs=study_file.train.head_epochs, seed=study_file.study.seed,
        device=args.device or study_file.train.device, precision=study_file.train.precision,
    )

    def announce(study, trial) -> None:
        print(describe_trial(trial), flush=True)

    study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[announce],
                   catch=(RuntimeError, ValueError))
    _print_best(study)
    return 0


def _print_best(study) -> None:
    try:
        trial = study.best_trial
    except ValueError:
        print("no trial completed yet")
        return
    print(f"best: trial {trial.number} val_loss {trial.value:.4f} params {json.dumps(trial.params)}")


