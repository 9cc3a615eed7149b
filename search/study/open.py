"""A study file -> its Optuna study (storage, sampler, pruner), and the study's best trial."""
from __future__ import annotations

import logging
import warnings

import optuna

from search.study.orphans import fail_unbeaten_trials
from search.study.pruners import pruner_for
from search.study.samplers import make_sampler
from search.study.storage import Heartbeat, open_storage, study_name_limit
from search.studyfile.url_text import redact
from search.studyfile import StudyFile
from swipr_core.errors import SwiprError

OBJECTIVE_NAME = "val_loss"   # what a trial's value is: the validation loss of its last epoch


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines repeat what swipr prints itself. Its plotting functions
    warn when a study has no (completed) trials yet ("There are no complete trials."): the
    report draws an empty chart there and says how many trials there are in its own words."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Its module loggers (optuna.visualization._slice, ...) inherit this level.
    logging.getLogger("optuna.visualization").setLevel(logging.ERROR)


def refuse_long_name(study_file: StudyFile) -> None:
    """A name longer than the storage's column would fail deep inside Optuna, on the first write."""
    name, limit = study_file.study.name, study_name_limit(study_file.study.storage)
    if limit is not None and len(name) > limit:
        raise SwiprError(f"{study_file.where('study')} name: {len(name)} characters, but "
                         f"{redact(study_file.study.storage)} holds study names of at most {limit}")


def open_study(study_file: StudyFile, create: bool = True, heartbeat_aware: bool = False,
               read_only: bool = False, reader: bool = False) -> optuna.Study:
    """The study; `heartbeat_aware` lets a reader tell a dead worker's trial from a live one;
    `read_only` (status, best) opens a SQLite file read-only, so read-only media can be read;
    `reader`: one that only reads a file it could write (search.study.storage.open_storage)."""
    refuse_long_name(study_file)
    storage = open_storage(study_file.study.storage, create=create, read_only=read_only, reader=reader,
                           heartbeat=heartbeat(study_file) if heartbeat_aware else None)
    sampler = make_sampler(study_file.study.sampler, study_file.study.seed, study_file.study.scheduler == "promote")
    pruner = pruner_for(study_file)
    name = study_file.study.name
    if create:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="minimize", load_if_exists=True)
        if study.metric_names is None:   # optuna-dashboard, trials_dataframe: "val_loss", not "Objective 0"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # stable since 3.2
                study.set_metric_names([OBJECTIVE_NAME])
        return study
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise SwiprError(f"no study named '{name}' in {redact(study_file.study.storage)} "
                         f"(start it with `swipr study run {study_file.path.name}`)") from None


def heartbeat(study_file: StudyFile) -> Heartbeat:
    s = study_file.study
    return Heartbeat(interval=s.heartbeat_interval, grace_period=s.grace_period, max_retry=s.max_retry)


def open_worker_study(study_file: StudyFile, on_stale, slot: str = "0") -> optuna.Study:
    """The study as one worker runs it: heartbeats on, stale trials retried (on SQLite and
    PostgreSQL; a journal file has no heartbeats), and the study's sampler, which seeds each
    trial by its number (search.study.samplers), so no worker needs a seed of its own and the
    machine's name plays no part. `slot` names the worker on this machine; it is not part of
    any seed. `on_stale(study, trial)` gets each dead worker's trial
    (objectives.resume.Checkpoints.on_stale)."""
    s = study_file.study
    refuse_long_name(study_file)
    storage = open_storage(s.storage, create=False, heartbeat=heartbeat(study_file), on_stale=on_stale)
    try:
        study = optuna.load_study(study_name=s.name, storage=storage, pruner=pruner_for(study_file),
                                  sampler=make_sampler(s.sampler, s.seed, s.scheduler == "promote"))
    except KeyError:
        raise SwiprError(f"no study named '{s.name}' in {redact(s.storage)}") from None
    fail_unbeaten_trials(study, s.grace_period, on_stale)
    return study


def best_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the lowest validation loss, or None before one completes."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    trial = best_or_none(study)
    if trial is None:
        raise SwiprError(f"study '{study.study_name}' has no completed trial yet")
    return trial
