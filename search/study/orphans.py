"""RUNNING trials that no heartbeat will ever fail: their worker never wrote one.

Optuna fails a trial as stale when its last heartbeat is older than the grace period, but a
trial whose first heartbeat was never written (a full disk, the database gone, the worker
killed between taking the trial and its first beat) has no heartbeat row at all: Optuna's
check never sees it, and it stays RUNNING for ever. Here the trial's start counts as its
first heartbeat: RUNNING, no heartbeat row, started more than grace_period ago means no live
worker owns it (a live one beats every heartbeat_interval), so it is failed and handed to the
same stale-trial callback as any dead worker's trial (which queues its retry).

Trials a Dask driver started (they run without heartbeats, and the driver keeps track of
them itself) are left alone.
"""
from __future__ import annotations

import datetime

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from objectives.optuna_compat import storage_of, unbeaten_running_trial_ids

DASK_TOKEN_ATTR = "swipr_dask_token"   # system attr: marks a trial as a Dask driver's (search.running.dask_driver)
NEVER_BEAT = "its worker never wrote a heartbeat (it stopped before its first, or the storage refused it)"


def fail_unbeaten_trials(study: optuna.Study, grace_period: int, on_stale) -> list[int]:
    """Fail each unbeaten trial (see the module's doc) and pass it to `on_stale(study, trial)`,
    as Optuna does with a stale one. Returns the numbers failed."""
    storage, failed = storage_of(study), []
    started_before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=grace_period)
    for trial_id in unbeaten_running_trial_ids(study, started_before):
        trial = storage.get_trial(trial_id)
        if DASK_TOKEN_ATTR in trial.system_attrs:
            continue
        try:   # the reason first: a finished trial takes no more attributes
            storage.set_trial_user_attr(trial_id, "fail_reason", NEVER_BEAT)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:   # another worker got there first
            continue
        print(f"trial {trial.number}: left RUNNING with no heartbeat; {NEVER_BEAT}", flush=True)
        on_stale(study, storage.get_trial(trial_id))
        failed.append(trial.number)
    return failed
