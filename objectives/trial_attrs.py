"""A trial's attributes, read and written in one place: the few people read stay user attrs, the
bookkeeping goes in system attrs.

Optuna's own tables (`optuna trials`, the dashboard's attribute list) print every user attr of
every trial: a trial's per-epoch losses, its plan and its judging marks there made each row
thousands of characters wide. So `set_attr` keeps as user attrs only what a person reads in
those tables (SHOWN) and stores everything else as the system attr `swipr:<key>`, and
`attrs_of` reads both back as one dict: a study written before (everything in user attrs)
reads the same way. Never read or write a trial's user attrs directly: call these.
"""
from __future__ import annotations

import optuna

from objectives.optuna_compat import set_system_attr, stored_trial

PREFIX = "swipr:"
# What Optuna's tables show of a trial: the value's accuracy (its AUC, note and all the rest are
# in the dashboard's Note panel), which trial is the notebook's, why one failed, what a retry
# retries, where a Dask trial ran.
SHOWN = frozenset({"val_accuracy", "warm_start", "fail_reason", "retry_of", "worker", "host", "gpu"})
# The SHA-256 of the study file's version a trial's run started with: written as the trial starts
# (search.studyfile.trained_with), copied into the trial's plan (objectives.finetune).
STUDY_FILE_ATTR = "study_file_sha256"
RETRY_OF_ATTR = "retry_of"   # a retry's (objectives.resume): the number of the trial it retries


def attrs_of(trial) -> dict:
    """Every attribute of a trial, stored or running (a live trial is read from its storage):
    its user attrs and its `swipr:` system attrs, by their plain names."""
    frozen = stored_trial(trial) if isinstance(trial, optuna.Trial) else trial
    found = dict(getattr(frozen, "user_attrs", {}))
    system = getattr(frozen, "system_attrs", {})
    found.update({key[len(PREFIX):]: value for key, value in system.items() if key.startswith(PREFIX)})
    return found


def set_attr(trial: optuna.Trial, key: str, value) -> None:
    """One attribute of a running trial: a user attr if people read it (SHOWN), else `swipr:<key>`."""
    if key in SHOWN:
        trial.set_user_attr(key, value)
    else:
        set_system_attr(trial, PREFIX + key, value)


def user_attrs_for(attrs: dict) -> tuple[dict, dict]:
    """(user attrs, system attrs) to give a trial that is created or enqueued with `attrs`."""
    shown = {key: value for key, value in attrs.items() if key in SHOWN}
    hidden = {PREFIX + key: value for key, value in attrs.items() if key not in SHOWN}
    return shown, hidden
