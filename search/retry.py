"""Dead workers lose at most one epoch: heartbeats, retries and per-trial checkpoints.

A running trial beats (Optuna's RDBStorage heartbeat). A worker that dies (SIGKILL, a lost
machine) stops beating; after the grace period the next worker to start a trial fails it
and Optuna's RetryHeartbeatStaleTrialCallback enqueues a copy with the same params. The copy
finds the original's checkpoint folder (keyed by the ORIGINAL trial's number, which Optuna
keeps across repeated retries) and `train` resumes after the last saved epoch. A trial that
ends in its own process (complete, pruned, failed) removes its folder; so does one that has
used up its retries. Ctrl-C (or SIGTERM) keeps the folder and enqueues the retry at once; a
worker asked to stop before its trial began gives the trial back to the queue instead.
"""
from __future__ import annotations

import shutil
import socket
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback as _Retry

from search.pruners import make_pruner
from search.samplers import make_sampler, worker_seed
from search.storage import Heartbeat, open_storage, redact
from search.study_file import StudyFile
from swipr_core.errors import SwiprError



def _quietly(function, *args):
    """Optuna's retry helpers are 'experimental' and warn on every call: noise for users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return function(*args)


def checkpoint_root(study_file: StudyFile) -> Path:
    """Per-trial checkpoints, one folder per study: in [cluster] checkpoint_dir (a folder every
    worker reads, so a retry resumes on any machine), else in the machine's cache folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_file.study.name)
    return (study_file.cluster.checkpoint_dir or study_file.data.cache_dir / "checkpoints") / safe


def original_number(trial: optuna.trial.FrozenTrial) -> int:
    number = _quietly(_Retry.retried_trial_number, trial)
    return trial.number if number is None else number


def frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return trial.study._storage.get_trial(trial._trial_id)


class Checkpoints:
    """Where each trial's checkpoints go, and what happens to them when the trial ends."""

    def __init__(self, root: Path, max_retry: int):
        self.root = root
        self.max_retry = max_retry
        self._retry = _quietly(lambda: _Retry(max_retry=max_retry))

    def folder(self, trial_number: int) -> Path:
        return self.root / f"trial-{trial_number}"

    def dir_for(self, trial: optuna.Trial) -> Path:
        """FinetuneObjective's checkpoint_dir_for."""
        return self.folder(original_number(frozen(trial)))

    def seed_number_for(self, trial: optuna.Trial) -> int:
        """FinetuneObjective's seed_number_for: a retry trains with its original's seed."""
        return original_number(frozen(trial))

    def remove(self, trial_number: int) -> None:
        shutil.rmtree(self.folder(trial_number), ignore_errors=True)

    def note_resume(self, trial: optuna.Trial) -> None:
        """On a retry: record what it retries and the epoch it resumes from, and report the
        saved epochs again so the pruner sees the whole learning curve."""
        state = frozen(trial)
        retried = _quietly(_Retry.retried_trial_number, state)
        if retried is None:
            return
        from swipr_core.checkpoints import load_checkpoint

        saved = load_checkpoint(self.folder(retried))
        history = saved["history"] if saved else []
        trial.set_user_attr("retry_of", retried)
        trial.set_user_attr("resumed_from_epoch", len(history))
        for record in history:
            trial.report(record["valid_loss"], step=record["epoch"])
        print(f"trial {trial.number}: retries trial {retried}, "
              f"{'resumes after epoch ' + str(len(history) - 1) if history else 'no checkpoint, starts over'}",
              flush=True)

    def retry_later(self, trial: optuna.Trial) -> bool:
        """An interrupted trial: enqueue its retry now and keep its checkpoints."""
        state = frozen(trial)
        if len(_quietly(_Retry.retry_history, state)) >= self.max_retry:
            return False
        _quietly(self._retry, trial.study, state)
        return True

    def on_stale(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """The storage's heartbeat_stale_trial_callback: retry, or give up and clean up.
        Returns whether a retry was queued."""
        if len(_quietly(_Retry.retry_history, trial)) >= self.max_retry:
            print(f"trial {trial.number}: its worker stopped; failed, no retries left", flush=True)
            self.remove(original_number(trial))
            return False
        print(f"trial {trial.number}: its worker stopped; failed, will be retried", flush=True)
        _quietly(self._retry, study, trial)
        return True


def heartbeat(study_file: StudyFile) -> Heartbeat:
    s = study_file.study
    return Heartbeat(interval=s.heartbeat_interval, grace_period=s.grace_period, max_retry=s.max_retry)


def open_worker_study(study_file: StudyFile, checkpoints: Checkpoints, slot: str = "0") -> optuna.Study:
    """The study as one worker runs it: heartbeats on, stale trials retried (on SQLite and
    PostgreSQL; a journal file has no heartbeats), and a sampler seed of its own
    (see search.samplers.worker_seed)."""
    s = study_file.study
    storage = open_storage(s.storage, create=False, heartbeat=heartbeat(study_file), on_stale=checkpoints.on_stale)
    pruner = make_pruner(s.pruner, s.pruner_startup_trials, s.pruner_warmup_epochs)
    try:
        study = optuna.load_study(study_name=s.name, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.RandomSampler())
    except KeyError:
        raise SwiprError(f"no study named '{s.name}' in {redact(s.storage)}") from None
    so_far = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(s.sampler, worker_seed(s.seed, socket.gethostname(), slot, so_far))
    return study


class ResumableObjective:
    """Wraps an objective: resume notes before the run, checkpoint clean-up after it."""

    def __init__(self, objective, checkpoints: Checkpoints):
        self.objective = objective
        self.checkpoints = checkpoints

    def __call__(self, trial: optuna.Trial):
        from search.workers import in_trial, stop_requested

        keep = False
        try:
            # From here on a stop request interrupts the trial, and the except below queues its
            # retry; so the resume notes come after, and the trial leaves the span before its
            # value goes back to Optuna (a stop in between is an interrupt, not a lost retry).
            in_trial(True)
            if stop_requested():   # asked to stop between ask_unless_stopping and this call
                raise KeyboardInterrupt
            self.checkpoints.note_resume(trial)
            value = self.objective(trial)
            in_trial(False)
        except KeyboardInterrupt:
            in_trial(False)
            keep = self.checkpoints.retry_later(trial)
            raise
        finally:
            in_trial(False)
            if not keep:
                self.checkpoints.remove(original_number(frozen(trial)))
        return value


def ask_unless_stopping(study: optuna.Study, stopping) -> None:
    """A worker asked to stop takes no trial. Optuna's optimize loop asks for the next trial
    before the objective (and its stop check) runs, and the trial it takes may be one waiting
    in the queue, such as the retry that another stopping worker has just enqueued: failed at
    once, it would burn a retry and leave a FAIL whose retry is a retry of a retry. So a stop
    requested before the ask raises KeyboardInterrupt before a trial is taken, and one that
    lands during the ask puts the trial back in the queue (WAITING, its attributes as they were)
    before Optuna starts its heartbeat: neither FAIL nor left RUNNING."""
    ask = study.ask

    def ask_or_stop(*args, **kwargs) -> optuna.Trial:
        if stopping():
            raise KeyboardInterrupt
        trial = ask(*args, **kwargs)
        if stopping():
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.WAITING)
            raise KeyboardInterrupt
        return trial

    study.ask = ask_or_stop   # _run_trial calls study.ask(): this study's trials come through here
