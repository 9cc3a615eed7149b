"""Dead workers lose at most one epoch: per-trial checkpoints and the retries that resume them.

A retried trial is a copy with the same params that Optuna's RetryHeartbeatStaleTrialCallback
enqueues (after its worker's heartbeat went stale, or at once when it was interrupted). The
copy finds the original's checkpoint folder (keyed by the ORIGINAL trial's number, which
Optuna keeps across repeated retries) and training resumes after the last saved epoch. A
trial that ends in its own process (complete, pruned, failed) removes its folder; so does one
that has used up its retries. An interrupted trial keeps its folder and queues its retry; a
worker asked to stop before its trial began gives the trial back to the queue instead.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback as _Retry

from objectives.judging import INTERRUPTED_ATTR, report_epoch
from objectives.optuna_compat import guard_ask, put_back, stored_trial, take_queued_first
from objectives.pausing import TrialPaused, pause, paused_before
from objectives.space import STAGE2, stage2_name
from objectives.trial_attrs import RETRY_OF_ATTR, set_attr
from swipr_core.train.checkpoints import load_checkpoint


def _quietly(function, *args):
    """Optuna's retry helpers are 'experimental' and warn on every call: noise for users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return function(*args)


def original_number(trial: optuna.trial.FrozenTrial) -> int:
    number = _quietly(_Retry.retried_trial_number, trial)
    return trial.number if number is None else number


OWNER_FILE = "owner.json"   # whose checkpoints a folder holds: study, trial, params, data


class Checkpoints:
    """Where each trial's checkpoints go, and what happens to them when the trial ends.

    `root` is the study's own folder (search.running.worker.checkpoint_root keys it by storage
    and study). Each trial folder also records its owner; a folder whose owner is not the trial
    at hand (another study's, other params, other data) is never resumed from, only cleared.
    """

    def __init__(self, root: Path, max_retry: int):
        self.root = root
        self.max_retry = max_retry
        self._retry = _quietly(lambda: _Retry(max_retry=max_retry))

    def folder(self, trial_number: int) -> Path:
        return self.root / f"trial-{trial_number}"

    def owner(self, study: optuna.Study, number: int, params: dict) -> dict:
        """Whose checkpoints: the study's folder, the trial, the params it draws as it starts (stage
        2's come later: objectives.space.conditional) and its data."""
        first = {name: value for name, value in params.items()
                 if not name.startswith(STAGE2) or name == stage2_name("n_cycles")}
        return {"root": str(self.root), "trial": number, "params": first,
                "data_fingerprint": study.user_attrs.get("data_fingerprint")}

    def owned_by(self, folder: Path, owner: dict) -> bool:
        try:
            return json.loads((folder / OWNER_FILE).read_text()) == json.loads(json.dumps(owner))
        except (OSError, ValueError):
            return False

    def dir_for(self, trial: optuna.Trial) -> Path:
        """FinetuneObjective's checkpoint_dir_for: the trial's folder, cleared of anything that
        is not its own, with its owner written down."""
        number = original_number(stored_trial(trial))
        folder, owner = self.folder(number), self.owner(trial.study, number, trial.params)
        if folder.exists() and not self.owned_by(folder, owner):
            print(f"trial {trial.number}: {folder} holds another run's checkpoint; not resumed from, cleared",
                  flush=True)
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OWNER_FILE).write_text(json.dumps(owner))
        return folder

    def seed_number_for(self, trial: optuna.Trial) -> int:
        """FinetuneObjective's seed_number_for: a retry trains with its original's seed."""
        return original_number(stored_trial(trial))

    def remove(self, trial_number: int) -> None:
        shutil.rmtree(self.folder(trial_number), ignore_errors=True)

    def note_resume(self, trial: optuna.Trial, prune_at: str = "cycle_end") -> None:
        """On a retry: record what it retries and the epoch it resumes from, and report the
        saved epochs again, as the objective did (objectives.judging), so the pruner sees the
        whole learning curve. They were judged when they ran: the pruner is not asked again."""
        state = stored_trial(trial)
        retried = _quietly(_Retry.retried_trial_number, state)
        if retried is None:
            return
        # A retry carries its original's params (RetryHeartbeatStaleTrialCallback copies them);
        # only an enqueued trial has them as fixed_params.
        owner = self.owner(trial.study, retried, state.system_attrs.get("fixed_params") or state.params)
        saved = load_checkpoint(self.folder(retried)) if self.owned_by(self.folder(retried), owner) else None
        history = saved["history"] if saved else []
        set_attr(trial, RETRY_OF_ATTR, retried)
        set_attr(trial, "resumed_from_epoch", len(history))
        for record in history:
            report_epoch(trial, record["epoch"], record["valid_loss"], record.get("cycle_end", False), prune_at,
                         ask=False, finishes=record.get("finishes", 0))
        print(f"trial {trial.number}: retries trial {retried}, "
              f"{'resumes after epoch ' + str(len(history) - 1) if history else 'no checkpoint, starts over'}",
              flush=True)

    def retry_later(self, trial: optuna.Trial) -> bool:
        """An interrupted trial: enqueue its retry now and keep its checkpoints; mark it
        interrupted (INTERRUPTED_ATTR), retries left or not. Returns whether a retry was queued."""
        state = stored_trial(trial)
        queued = len(_quietly(_Retry.retry_history, state)) < self.max_retry
        if queued:
            _quietly(self._retry, trial.study, state)
        # After the retry is made from `state`: the retry copies user attrs, and is no interrupt.
        set_attr(trial, INTERRUPTED_ATTR, True)
        return queued

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


class ResumableObjective:
    """Wraps an objective: resume notes before the run, checkpoint clean-up after it.

    `stop` is the worker's stop flag (search.running.stop.StopFlag): from `stop.in_trial(True)`
    on, a stop request interrupts the trial with KeyboardInterrupt and its retry is queued. A
    trial that pauses (objectives.pausing) keeps its folder and goes back to the queue, WAITING.
    """

    def __init__(self, objective, checkpoints: Checkpoints, stop, prune_at: str = "cycle_end"):
        self.objective = objective
        self.checkpoints = checkpoints
        self.stop = stop
        self.prune_at = prune_at   # how the retry re-reports its saved epochs

    def __call__(self, trial: optuna.Trial):
        keep = False
        try:
            # The resume notes come after the span opens, and the trial leaves the span before
            # its value goes back to Optuna: a stop in between is an interrupt, not a lost retry.
            self.stop.in_trial(True)
            if self.stop.requested:   # asked to stop between the guarded ask and this call
                raise KeyboardInterrupt
            if not paused_before(trial):   # a promotion's epochs were reported on the trial as they ran
                self.checkpoints.note_resume(trial, self.prune_at)
            value = self.objective(trial)
            self.stop.in_trial(False)
        except TrialPaused as paused:   # its checkpoint is where its next cycle starts
            self.stop.in_trial(False)
            keep = True
            pause(trial, paused)
            raise
        except KeyboardInterrupt:
            self.stop.in_trial(False)
            keep = self.checkpoints.retry_later(trial)
            raise
        finally:
            self.stop.in_trial(False)
            if not keep:
                self.checkpoints.remove(original_number(stored_trial(trial)))
        return value


def take_no_trial_when_stopping(study: optuna.Study, stop) -> None:
    """A worker asked to stop takes no trial. Optuna's optimize loop asks for the next trial
    before the objective (and its stop check) runs, and the trial it takes may be one waiting
    in the queue, such as the retry that another stopping worker has just enqueued: failed at
    once, it would burn a retry and leave a FAIL whose retry is a retry of a retry. So a stop
    requested before the ask raises KeyboardInterrupt before a trial is taken, and one that
    lands during the ask puts the trial back in the queue (WAITING, its attributes as they were)
    before Optuna starts its heartbeat: neither FAIL nor left RUNNING."""

    def before() -> None:
        if stop.requested:
            raise KeyboardInterrupt

    def after(trial: optuna.Trial) -> None:
        if stop.requested:
            put_back(trial)
            raise KeyboardInterrupt

    guard_ask(study, before, after)


def retries_first(study: optuna.Study) -> None:
    """An interrupted trial holds paid-for epochs in its checkpoint: its retry runs before any
    fresh trial waiting in the queue."""
    take_queued_first(study, lambda trial: "failed_trial" in trial.system_attrs)
