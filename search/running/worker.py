"""One worker: trials one after another on the study, here or in a trial process.

Heartbeats, the data fingerprint check and the trial objective (objectives.trial), then
Optuna's optimize loop. A trial process (`--workers`/`--gpus`) runs one trial and exits.
"""
from __future__ import annotations

import sys
from pathlib import Path

import optuna

from objectives.oom import free_memory
from objectives.resume import Checkpoints, take_no_trial_when_stopping
from objectives.trial import TrainSettings, trial_objective
from search.running.stop import StopFlag
from search.study.data_record import check_fingerprint
from search.study.open import open_study, open_worker_study, quiet_optuna
from search.study.storage import redact_output
from search.studyfile import StudyFile, load_study_file
from search.views.artifacts import make_objective_hooks
from search.views.format import describe_trial
from swipr_core.data import Dataset, prepare_data
from swipr_core.errors import SwiprError


def checkpoint_root(study_file: StudyFile) -> Path:
    """Per-trial checkpoints live in the machine's cache folder, one folder per study."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_file.study.name)
    return study_file.data.cache_dir / "checkpoints" / safe


def train_settings(study_file: StudyFile, device: str | None) -> TrainSettings:
    train = study_file.train
    return TrainSettings(head_epochs=train.head_epochs, seed=study_file.study.seed, device=device or train.device,
                         precision=train.precision, compile=train.compile, prune_at=study_file.study.prune_at)


def run_worker(study_file: StudyFile, dataset: Dataset, *, n_trials: int, timeout: float | None = None,
               device: str | None = None, slot: str = "0", hooks=(), callbacks=(),
               stop: StopFlag | None = None) -> optuna.Study:
    """`n_trials` trials on the study, with heartbeats, resumable retries and OOM handling;
    the data fingerprint is checked before anything trains. Returns the study."""
    stop = stop or StopFlag()   # only a trial process's SIGTERM sets it
    checkpoints = Checkpoints(checkpoint_root(study_file), study_file.study.max_retry)
    study = open_worker_study(study_file, checkpoints, slot)
    take_no_trial_when_stopping(study, stop)
    check_fingerprint(study, dataset, study_file)
    objective = trial_objective(dataset, study_file.space, study_file.model, train_settings(study_file, device),
                                checkpoints, stop, hooks)

    def tidy(study, trial) -> None:
        free_memory()   # what the trial left behind goes before the next one allocates

    study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[*callbacks, tidy],
                   catch=(RuntimeError, ValueError))
    return study


def run_trial_process(study_file_path: str, label: str, slot_index: int, device: str | None, stop: StopFlag) -> int:
    """A trial process under `--workers`/`--gpus`: one trial, then exit (status as the CLI's)."""
    try:
        study_file = load_study_file(study_file_path)
        redact_output(study_file.study.storage)
        quiet_optuna()
        dataset = prepare_data(study_file.data)
        if stop.requested:
            return 130

        def announce(study, trial) -> None:
            print(f"{label}: {describe_trial(trial)}", flush=True)

        hooks = make_objective_hooks(study_file, open_study(study_file, create=False))
        run_worker(study_file, dataset, n_trials=1, device=device, slot=str(slot_index), hooks=hooks,
                   callbacks=[announce], stop=stop)
    except SwiprError as error:
        print(f"swipr: error: {label}: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
