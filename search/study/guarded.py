"""Optuna's RDBStorage, with what a storage does on a bad day said in one line.

A lost database connection (PostgreSQL restarted, a network blip) is retried with backoff for
RETRY_FOR_S seconds, said once when it starts and once when it ends; after that the run stops.
A full disk, a database file deleted or replaced under the run (its st_dev/st_ino changed),
or a file that can't be written stop the run at once. Either way the error is a StorageFailed,
which names the storage (never its password) and stops the run with exit status 1. A heartbeat
that can't be written is skipped (the next beat tries again); it never kills the heartbeat thread.

Each trial this process starts is marked with the run that started it (RUN_ENV), so a summary
counts the trials this run ran, not those another run wrote meanwhile.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc

from objectives.optuna_compat import RDB_CREATE_TRIAL, RDB_PRIVATE_CALLS
from objectives.optuna_compat import trial_id as id_of
from swipr_core.errors import RunStopped, SwiprError

RETRY_FOR_S = 120        # how long a lost connection is retried before the run stops
FIRST_WAIT_S, MAX_WAIT_S = 1.0, 15.0   # backoff between tries: doubles from the first, up to the most
RUN_ENV = "SWIPR_RUN"    # the run's token, set by `swipr study run` and inherited by its trial processes
RUN_ATTR = "swipr_run"   # system attr: the run that started the trial

_DISK_FULL = ("database or disk is full", "no space left on device")
_WRITES = ("set_", "create_", "delete_", "_set_", "_create_", "record_")   # storage methods that write
_UNWRITABLE = ("readonly database", "read-only file system", "disk i/o error", "unable to open database file")


class StorageFailed(RunStopped):
    """The storage can't go on (exit 1): the message names it and says why."""


def failure_in(error: BaseException | None) -> StorageFailed | None:
    """The StorageFailed behind `error`, if any. Optuna's optimize loop turns a failed tell into
    other errors (an AssertionError "Should not reach.", an UnboundLocalError) raised while the
    storage's error is being handled: it is their __context__."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StorageFailed):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _kind(first: BaseException) -> tuple[str, str] | None:
    """("full" | "unwritable" | "lost", reason) for a storage error, None for anything else."""
    seen: set[int] = set()
    error: BaseException | None = first
    while error is not None and id(error) not in seen and not isinstance(error, SwiprError):
        # a SwiprError down the chain is a failure already reported: an error raised while it is
        # handled (the run's summary, read in a `finally` as the run stops) carries it as its
        # context, and is not that failure again
        seen.add(id(error))
        text = (str(getattr(error, "orig", None) or error).splitlines() or [""])[0].strip()
        lowered = text.lower()
        if isinstance(error, (sa_exc.DBAPIError, OSError)) and any(s in lowered for s in _DISK_FULL):
            return "full", text
        if isinstance(error, (sa_exc.DBAPIError, OSError)) and any(s in lowered for s in _UNWRITABLE):
            return "unwritable", text
        if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)) or (
                isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated):
            return "lost", text or type(error).__name__
        error = error.__cause__ or error.__context__
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


class GuardedStorage(optuna.storages.RDBStorage):
    """RDBStorage whose every call says what went wrong with the storage in one line."""

    def __init__(self, url: str, *args, shown: str, sqlite_file: Path | None = None, **kwargs):
        super().__init__(url, *args, **kwargs)
        self._setup_guard(shown, sqlite_file)

    def _setup_guard(self, shown: str, sqlite_file: Path | None) -> None:
        self.shown, self.sqlite_file = shown, sqlite_file
        self.identity = _identity(sqlite_file) if sqlite_file else None
        self._lock = threading.Lock()
        self._lost_since: float | None = None   # when the current outage began
        self._given_up: StorageFailed | None = None     # nothing more can be read or written
        self._unwritable: StorageFailed | None = None   # nothing more can be written

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    def _check_identity(self) -> None:
        if self.sqlite_file is not None and _identity(self.sqlite_file) != self.identity:
            self._given_up = StorageFailed(
                f"storage {self.shown}: the database file was deleted or replaced while this run used it; "
                f"what the run wrote since then is not in {self.sqlite_file}; stopping")
            raise self._given_up

    def _call(self, method, args, kwargs):
        wait, deadline = FIRST_WAIT_S, None
        while True:
            self._refuse_if_failed(method.__name__)
            try:
                result = method(self, *args, **kwargs)
            except Exception as error:
                found = _kind(error)
                if found is None or (found[0] == "lost" and self.sqlite_file is not None):
                    raise   # not the storage's trouble; or, for a local file, "database is locked" and the like
                kind, reason = found
                if kind != "lost":
                    self._unwritable = self._stop(kind, reason)
                    raise self._unwritable from None
                now = time.monotonic()
                deadline = deadline or self._outage_began(reason, now) + RETRY_FOR_S
                if now >= deadline:
                    self._given_up = StorageFailed(
                        f"storage {self.shown}: lost the connection ({reason}) and it did not come back in "
                        f"{RETRY_FOR_S} s; stopping")
                    raise self._given_up from None
                time.sleep(min(wait, deadline - now))
                wait = min(wait * 2, MAX_WAIT_S)
                continue
            self._outage_ended()
            return result

    def _refuse_if_failed(self, method_name: str) -> None:
        """After a write failed for good (a full disk), no later write of this run is tried: the
        trial that was running stays RUNNING rather than FAIL with no reason written, and the
        next run fails it as its worker's and retries it (search.study.orphans). Reads go on, so
        the run can still print its summary."""
        if self._given_up is not None:
            raise self._given_up
        self._check_identity()
        if self._unwritable is not None and method_name.startswith(_WRITES):
            raise self._unwritable

    def _stop(self, kind: str, reason: str) -> StorageFailed:
        what = {"full": "the disk is full", "unwritable": "can't write to it"}[kind]
        where = f" ({self.sqlite_file.parent})" if self.sqlite_file else ""
        return StorageFailed(f"storage {self.shown}: {what}{where}: {reason}; stopping")

    def _outage_began(self, reason: str, now: float) -> float:
        with self._lock:
            if self._lost_since is None:
                self._lost_since = now
                print(f"swipr: storage {self.shown}: lost the connection ({reason}); retrying for up to "
                      f"{RETRY_FOR_S} s", file=sys.stderr, flush=True)
            return self._lost_since

    def _outage_ended(self) -> None:
        if self._lost_since is None:
            return
        with self._lock:
            if self._lost_since is not None:
                print(f"swipr: storage {self.shown}: connection back after {time.monotonic() - self._lost_since:.0f} s",
                      file=sys.stderr, flush=True)
                self._lost_since = None

    def record_heartbeat(self, trial_id: int) -> None:
        """One try: a beat that can't be written is skipped, the next one tries again, and the
        trial's own storage calls say what is wrong (the heartbeat thread must not die)."""
        try:
            self._refuse_if_failed("record_heartbeat")
            super().record_heartbeat(trial_id)
            self._outage_ended()
        except StorageFailed:
            pass
        except Exception as error:
            found = _kind(error)
            if found is None:
                raise
            if found[0] == "lost":
                self._outage_began(found[1], time.monotonic())
            else:   # the trial's next write stops the run, with this reason
                self._unwritable = self._stop(*found)

    def _create_trial_marked(self, study_id, template_trial=None):
        """RDBStorage's private RDB_CREATE_TRIAL, guarded, the trial marked with this run: every
        new trial goes through it (Optuna's _CachedStorage calls it in place of create_new_trial)."""
        trial = self._call(getattr(optuna.storages.RDBStorage, RDB_CREATE_TRIAL), (study_id, template_trial), {})
        if template_trial is None or template_trial.state == TrialState.RUNNING:
            self._mark_run(id_of(trial))
        return trial

    def set_trial_state_values(self, trial_id, state, values=None):
        taken = self._call(optuna.storages.RDBStorage.set_trial_state_values, (trial_id, state, values), {})
        if taken and state == TrialState.RUNNING:   # this process took a queued trial
            self._mark_run(trial_id)
        return taken

    def _mark_run(self, trial_id: int) -> None:
        token = os.environ.get(RUN_ENV)
        if token:
            self.set_trial_system_attr(trial_id, RUN_ATTR, token)


def _guard(method):
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        return self._call(method, args, kwargs)
    return guarded


_GUARDED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
            "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
            "set_trial_param", "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
            "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
            "get_best_trial", *RDB_PRIVATE_CALLS)   # the private ones: what Optuna calls instead
for _name in _GUARDED:
    setattr(GuardedStorage, _name, _guard(getattr(optuna.storages.RDBStorage, _name)))
setattr(GuardedStorage, RDB_CREATE_TRIAL, GuardedStorage._create_trial_marked)
