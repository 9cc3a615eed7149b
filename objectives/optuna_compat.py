"""Every use of Optuna's private API, in one place.

Optuna has no public call for these; each is one line over an underscore attribute, over how
`Study.optimize` asks for trials, over RDBStorage's private methods or over its tables.
tests/test_optuna_compat.py runs every function and name here against the installed Optuna,
so an upgrade that changes them fails that test, not a study. pyproject.toml pins Optuna to
the tested major range; docs/development.md says how to check a new release.
"""
from __future__ import annotations

import contextlib
import datetime
import json
from typing import Callable, Iterator

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread
from optuna.study import _optimize
from optuna.trial import TrialState


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object a study was opened on (optuna-dashboard and reports read it)."""
    return study._storage


def study_id(study: optuna.Study | optuna.study.StudySummary) -> int:
    """The study's id in its storage (the dashboard's URLs and pages use it)."""
    return study._study_id


def stored_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """A running trial's record as stored: its system attrs say whether it retries another."""
    return trial.study._storage.get_trial(trial._trial_id)


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's (live or frozen) id in its storage: what a Dask task needs to pick the trial up
    elsewhere, and what the storage's per-trial calls take."""
    return trial._trial_id


def set_system_attr(trial: optuna.Trial, key: str, value) -> None:
    """A system attr on a live trial: Optuna's Trial has no setter for them since 3.x, its storage does.
    The generic tables (`optuna trials`, the dashboard's attribute list) leave system attrs out."""
    trial.study._storage.set_trial_system_attr(trial._trial_id, key, value)


def fix_params(trial: optuna.Trial, params: dict) -> None:
    """Params the trial's later `suggest` calls return, without drawing them now: what
    `Study.enqueue_trial` keeps as the system attr "fixed_params", added to a trial already asked."""
    storage, stored = trial.study._storage, trial.study._storage.get_trial(trial._trial_id)
    storage.set_trial_system_attr(trial._trial_id, "fixed_params", {**stored.system_attrs.get("fixed_params", {}),
                                                                    **params})


def attach(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live Trial for the stored RUNNING trial `trial_id`, as `ask` builds it, in another process."""
    return optuna.Trial(study, trial_id)


def put_back(trial: optuna.Trial) -> None:
    """Return a trial just handed out by `ask` to the queue, untouched (WAITING)."""
    trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)


def guard_ask(study: optuna.Study, before: Callable[[], None], after: Callable[[optuna.Trial], None]) -> None:
    """Run `before()` ahead of every trial `study.optimize` asks for, and `after(trial)` once
    it has one. Optuna's optimize loop calls `study.ask()` itself, so the instance's ask is
    wrapped; `before`/`after` may raise to stop the loop."""
    ask = study.ask

    def guarded_ask(*args, **kwargs) -> optuna.Trial:
        before()
        trial = ask(*args, **kwargs)
        after(trial)
        return trial

    study.ask = guarded_ask   # type: ignore[method-assign]  # the wrap is the point: see the docstring


def take_queued_first(study: optuna.Study, first: Callable[[optuna.trial.FrozenTrial], bool]) -> None:
    """Make `study.ask` take the WAITING trials for which `first(trial)` holds before the rest
    (Optuna takes them in the order they were queued). Taking one stays atomic: a trial goes to
    the worker whose WAITING -> RUNNING update succeeds, exactly as in Optuna's own queue."""
    order_queue(study, lambda waiting: sorted(waiting, key=lambda t: not first(t)))   # stable: queue order within each


def order_queue(study: optuna.Study,
                order: Callable[[list[optuna.trial.FrozenTrial]], list[optuna.trial.FrozenTrial]]) -> None:
    """Make `study.ask` take WAITING trials in the order `order(waiting)` gives (queue order in,
    those it leaves out are not taken); where it takes none, `ask` makes a new trial. Taking one
    stays atomic, as in Optuna's own queue, and beats its heartbeat at once: a trial paused
    long ago (objectives.pausing) carries an old one, and another worker must not fail it as stale."""
    storage, study_id = study._storage, study._study_id
    beat = storage.record_heartbeat if isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() else None

    def pop_waiting_trial_id() -> int | None:
        waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
        for trial in order(list(waiting)):
            try:
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                    if beat is not None:
                        beat(trial._trial_id)
                    return trial._trial_id
            except UpdateFinishedTrialError:
                continue
        return None

    study._pop_waiting_trial_id = pop_waiting_trial_id   # type: ignore[method-assign]  # Optuna's queue, reordered


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial) -> Iterator[None]:
    """The trial's heartbeat while the block runs, as Study.optimize beats one (none where the
    storage has none): a worker loop of its own (search.running.promotion) needs it too."""
    with get_heartbeat_thread(trial._trial_id, trial.study._storage):
        yield


def stale_trial_numbers(study: optuna.Study) -> set[int]:
    """RUNNING trials whose heartbeat is older than the storage's grace period (a dead worker's),
    without failing them: only a worker that starts a trial does that."""
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return set()
    return {storage.get_trial(trial_id).number for trial_id in storage._get_stale_trial_ids(study._study_id)}


def skip_telling_finished_trials() -> None:
    """Optuna's optimize loop raises ValueError ("Cannot tell a FAIL trial"), and stops, when
    the trial it ran was finished meanwhile by someone else: another worker that found its
    heartbeat late and failed it as stale. Leave such a trial as it was recorded and go on
    with the loop. Idempotent, process-wide."""
    if getattr(_optimize._tell_with_warning, "skips_finished", False):
        return
    tell = _optimize._tell_with_warning

    def tell_unless_finished(study, trial, *args, **kwargs):
        stored = study._storage.get_trial(trial._trial_id)
        if stored.state.is_finished():   # the message stands in for the loop's failure log
            return stored.state, stored.values, f"trial {stored.number} was finished elsewhere while it ran"
        return tell(study, trial, *args, **kwargs)

    tell_unless_finished.skips_finished = True   # type: ignore[attr-defined]  # the idempotence mark
    _optimize._tell_with_warning = tell_unless_finished


def study_system_attrs(study: optuna.Study) -> dict:
    """The study's system attrs: bulky records kept out of the user attrs that `optuna studies`
    and the dashboard list (Optuna 4 dropped the public `Study.system_attrs`)."""
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value) -> None:
    """Store one study system attr (any JSON value), as `Study.set_system_attr` did."""
    study._storage.set_study_system_attr(study._study_id, key, value)


# Optuna's optimize loop logs each failed trial (its traceback included) on this module's logger.
OPTIMIZE_LOGGER = "optuna.study._optimize"

# RDBStorage's private methods that Optuna calls instead of the public ones: its _CachedStorage
# (which every Study wraps an RDBStorage in) and its heartbeat check. A storage subclass that
# guards every call must guard these too; RDB_CREATE_TRIAL is the one every new trial goes through.
RDB_CREATE_TRIAL = "_create_new_trial"
RDB_PRIVATE_CALLS = ("_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids")


def rdb_engine(storage: optuna.storages.BaseStorage) -> sqlalchemy.engine.Engine | None:
    """The SQLAlchemy engine under an RDB storage (bare, or wrapped in the _CachedStorage a
    Study opens it in); None for any other storage (a journal file, in memory)."""
    return getattr(getattr(storage, "_backend", storage), "engine", None)


# Optuna's RDB schema (optuna/storages/_rdb/models.py): trial_heartbeats holds one row per trial
# that has beaten at least once; trials.datetime_start is naive UTC.
_UNBEATEN = sqlalchemy.text(
    "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL "
    "AND t.datetime_start IS NOT NULL AND t.datetime_start < :before")


def unbeaten_running_trial_ids(study: optuna.Study, started_before: datetime.datetime) -> list[int]:
    """Ids of the study's RUNNING trials that have no heartbeat row and started before
    `started_before` (aware or naive UTC). Empty for a storage without tables (a journal file)."""
    engine = rdb_engine(storage_of(study))
    if engine is None:
        return []
    if started_before.tzinfo is not None:
        started_before = started_before.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    with engine.connect() as connection:
        rows = connection.execute(_UNBEATEN, {"study": study_id(study), "before": started_before}).fetchall()
    return [row[0] for row in rows]


# Optuna's RDB schema: study_system_attributes holds one (study_id, key, value_json) row per key.
_ADD_STUDY_SYSTEM_ATTR = sqlalchemy.text(
    "INSERT INTO study_system_attributes (study_id, key, value_json) VALUES (:study, :key, :value)")


def add_study_system_attrs(study: optuna.Study, attrs: dict) -> None:
    """Store new study system attrs (keys the study doesn't have yet, JSON values) on an RDB
    storage in one transaction: what one `set_study_system_attr` per key stores, without a
    commit per key (bench/dashboard_notes.py builds studies with thousands of notes)."""
    engine = rdb_engine(storage_of(study))
    if engine is None:
        raise TypeError(f"{type(storage_of(study)).__name__} has no tables: add_study_system_attrs needs an RDB storage")
    rows = [{"study": study_id(study), "key": key, "value": json.dumps(value)} for key, value in attrs.items()]
    with engine.begin() as connection:
        connection.execute(_ADD_STUDY_SYSTEM_ATTR, rows)
