"""One trial on a Dask worker: the task `swipr study run --dask` submits for every trial it asks.

The driver asks Optuna for the trial (so the sampler and its constant liar see every running
trial); this task trains it and records the result. It reaches the study's storage through
optuna-integration's DaskStorage, which lives in the scheduler process: workers need no
database credentials. The first task on a worker process prepares the data (builds or reuses
the image cache on its machine) and every task checks the data fingerprint before training.

Outcomes the task records itself, as Optuna's optimize loop would: COMPLETE, PRUNED, FAIL (its
checkpoints removed). The driver's stop (Ctrl-C) is seen after the next epoch: the trial is
recorded FAIL, marked interrupted (objectives.resume), with one retry queued and its checkpoints
kept. A trial the driver has already given up on (no longer RUNNING) stops there too, recording
nothing. A task that Dask re-runs after its worker died ("lost") touches nothing: the driver
fails and retries that trial.
"""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from objectives.oom import free_memory
from objectives.optuna_compat import attach, storage_of, stored_trial
from objectives.resume import Checkpoints, original_number
from objectives.trial import guarded_finetune
from objectives.trial_attrs import attrs_of, set_attr
from search.running.failures import FailureGuard, TrialFailed, error_log
from search.running.worker import checkpoint_root, train_settings
from search.study.data_record import check_fingerprint, prepare_study_data
from search.study.open import quiet_optuna
from search.study.pruners import pruner_for
from search.studyfile import StudyFile, load_study_file
from search.studyfile.trained_with import RecordTrainedWith, check_same_version
from search.views.artifacts import make_objective_hooks
from search.views.progress import trial_lines
from swipr_core.errors import SwiprError

STARTED_ATTR = "swipr_dask_started"   # system attr: the token of the task that started the trial
STOP_EVENT = "swipr-stop-{run}"       # a Dask Event the driver sets on Ctrl-C


@dataclass(frozen=True)
class DaskTask:
    """What the driver sends with one trial: small, and no storage URL or password."""

    study_file: str
    storage_name: str   # the DaskStorage registered on the scheduler
    trial_id: int
    token: str          # this attempt; a Dask re-run of the same task carries the same token
    run: str            # the driver's run id (its stop event)
    device: str         # "cuda" (the worker's own GPU) or "cpu"
    study_file_sha256: str = ""   # the file's version the run started with: a worker's copy must match


class StopTrial(KeyboardInterrupt):
    """Raised after an epoch: the driver asked to stop, or has given up on the trial. An
    interrupt, so the failure guard lets it through as it does Ctrl-C."""

    def __init__(self, abandoned: bool):
        super().__init__("given up by the driver" if abandoned else "stopped by the driver")
        self.abandoned = abandoned


_prepared: dict = {}   # (study file, its mtime) -> (StudyFile, Dataset): once per worker process


def _prepare(path: str):
    key = (path, Path(path).stat().st_mtime_ns if Path(path).is_file() else 0)
    if key not in _prepared:
        study_file = load_study_file(path)
        _prepared[key] = (study_file, prepare_study_data(study_file))
    return _prepared[key]


def where_am_i(device: str) -> dict:
    """The worker, machine and GPU of a trial, as user attrs that `swipr study status` shows."""
    from distributed import get_worker

    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0") if device == "cuda" else None
    return {"worker": str(get_worker().name), "host": socket.gethostname(), "gpu": gpu}


def open_remote_study(task: DaskTask, study_file: StudyFile) -> optuna.Study:
    from optuna_integration.dask import DaskStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = DaskStorage(name=task.storage_name, register=False)
    # The driver samples; this study only hands back the params it was given.
    return optuna.load_study(study_name=study_file.study.name, storage=storage,
                             sampler=optuna.samplers.RandomSampler(), pruner=pruner_for(study_file))


def run_dask_trial(task: DaskTask) -> dict:
    """The task: one trial on this worker. Returns {"outcome", "reason", "worker", "host", "gpu"}."""
    where = where_am_i(task.device)
    quiet_optuna()
    study = None
    try:
        study_file, dataset = _prepare(task.study_file)
        study = open_remote_study(task, study_file)
        storage = storage_of(study)
        state = storage.get_trial(task.trial_id)
        if state.state != TrialState.RUNNING or state.system_attrs.get(STARTED_ATTR) == task.token:
            return {"outcome": "lost", **where}   # Dask re-ran the task of a lost worker
        if _stop_requested(task):
            storage.set_trial_state_values(task.trial_id, TrialState.WAITING)   # untouched: back in the queue
            return {"outcome": "returned", **where}
        check_same_version(study_file, task.study_file_sha256)   # not an edit made since the run started
        check_fingerprint(study, dataset, study_file)
    except SwiprError as error:   # before the trial began: it goes back to the queue untouched
        if study is not None:
            storage_of(study).set_trial_state_values(task.trial_id, TrialState.WAITING)
        return {"outcome": "error", "reason": str(error), **where}
    storage.set_trial_system_attr(task.trial_id, STARTED_ATTR, task.token)
    # The trial reaches stage 2 here, and its stage-2 params become params then (objectives.space
    # .conditional): the scheduler's cached storage sets a param only on a trial it has read, and
    # the driver created this one straight in the study's storage. Reading the study's trials once
    # makes it known there.
    study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    trial = attach(study, task.trial_id)
    for key, value in where.items():
        set_attr(trial, key, value)
    return {**_train(task, study_file, dataset, trial), **where}


def _train(task: DaskTask, study_file: StudyFile, dataset, trial: optuna.Trial) -> dict:
    """The objective as trial_objective builds it, less ResumableObjective: here the driver's
    stop arrives between epochs (StopCheck), and checkpoints go only once the end is recorded."""
    checkpoints = Checkpoints(checkpoint_root(study_file), study_file.study.max_retry)
    settings = train_settings(study_file, task.device, trial.study)
    # the per-epoch rows reach the driver's terminal (distributed's print forwards them to the client)
    hooks = [StopCheck(task), RecordTrainedWith(study_file), trial_lines(_to_driver),
             *make_objective_hooks(study_file, trial.study, dataset)]
    finetune = guarded_finetune(dataset, study_file.space, study_file.model, settings, checkpoints, hooks)
    objective = FailureGuard(finetune, error_log(study_file))
    try:
        checkpoints.note_resume(trial, settings.prune_at)
        outcome = {"outcome": "COMPLETE", "value": objective(trial)}
    except optuna.TrialPruned:
        outcome = {"outcome": "PRUNED"}
    except StopTrial as stop:
        outcome = {"outcome": "abandoned" if stop.abandoned else "stopped"}
    except (TrialFailed, SwiprError) as error:   # FailureGuard has logged it; SwiprError: bad input
        outcome = {"outcome": "FAIL", "reason": str(error), "bad_input": isinstance(error, SwiprError)}
    finally:
        free_memory()
    _record(trial, outcome, checkpoints)
    if outcome.get("bad_input"):
        return {"outcome": "error", "reason": outcome["reason"]}
    return outcome


def _record(trial: optuna.Trial, outcome: dict, checkpoints: Checkpoints) -> None:
    """Tell Optuna, then tidy the checkpoints: only a recorded end removes them."""
    kind, study = outcome["outcome"], trial.study
    if kind == "abandoned":
        return   # the driver has recorded the trial and queued its retry: keep the checkpoints
    if kind == "stopped":   # the driver's stop: marked interrupted (objectives.resume), its retry queued
        checkpoints.retry_later(trial)
        study.tell(trial, state=TrialState.FAIL)
        return
    if kind == "COMPLETE":
        study.tell(trial, outcome["value"])
    elif kind == "PRUNED":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        if "fail_reason" not in attrs_of(trial):   # the OOM guard and FailureGuard write theirs
            set_attr(trial, "fail_reason", outcome["reason"])
        study.tell(trial, state=TrialState.FAIL)
    checkpoints.remove(original_number(stored_trial(trial)))


def _to_driver(line: str) -> None:
    """A line on the driver's terminal: distributed's print writes it here and on every client."""
    from distributed import print as forward

    forward(line, flush=True)


def _stop_requested(task: DaskTask) -> bool:
    from distributed import Event

    return Event(STOP_EVENT.format(run=task.run)).is_set()


class StopCheck:
    """An objective hook: after each epoch (its checkpoint saved), stop if the driver says so."""

    def __init__(self, task: DaskTask):
        self.task = task

    def on_epoch(self, trial: optuna.Trial, record) -> None:
        if stored_trial(trial).state != TrialState.RUNNING:
            raise StopTrial(abandoned=True)
        if _stop_requested(self.task):
            raise StopTrial(abandoned=False)
