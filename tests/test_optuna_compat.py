"""Each use of Optuna's private API (objectives/optuna_compat.py) against the installed Optuna:
an upgrade that changes one of them fails here, not in the middle of a study."""
from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from objectives import optuna_compat
from objectives.trial_attrs import attrs_of


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_storage_and_study_id(study):
    storage = optuna_compat.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_study_id_from_name(study.study_name) == optuna_compat.study_id(study)


def test_a_running_trials_stored_record(study):
    trial = study.ask()
    trial.set_user_attr("k", 1)
    record = optuna_compat.stored_trial(trial)
    assert isinstance(record, optuna.trial.FrozenTrial)
    assert (record.number, record.state, attrs_of(record)) == (trial.number, TrialState.RUNNING, {"k": 1})


def test_a_trial_attached_by_id_is_the_asked_one(study):
    # What a Dask task does with the id the driver sends: the same trial, its params fixed.
    asked = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    attached = optuna_compat.attach(study, optuna_compat.trial_id(asked))
    assert (attached.number, attached.suggest_float("x", 0, 2)) == (asked.number, asked.params["x"])
    attached.report(0.5, step=0)
    assert optuna_compat.stored_trial(asked).intermediate_values == {0: 0.5}


def test_a_trial_put_back_is_waiting_and_asked_again(study):
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()
    optuna_compat.put_back(trial)
    assert study.trials[0].state == TrialState.WAITING
    again = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    assert (again.number, again.params) == (trial.number, {"x": 1.0})


def test_guarded_ask_runs_around_the_optimize_loops_own_ask(study):
    seen = []
    optuna_compat.guard_ask(study, before=lambda: seen.append("before"),
                            after=lambda trial: seen.append(f"after {trial.number}"))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert seen == ["before", "after 0", "before", "after 1"]


def test_a_guard_that_raises_stops_the_loop_before_a_trial_is_taken(study):
    def stop() -> None:
        raise KeyboardInterrupt

    optuna_compat.guard_ask(study, before=stop, after=lambda trial: None)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(lambda trial: 0.0, n_trials=1)
    assert study.trials == []


def test_queued_trials_chosen_first_are_taken_first(study):
    for x in (1.0, 2.0, 3.0):
        study.enqueue_trial({"x": x}, user_attrs={"retry": x == 3.0})
    optuna_compat.take_queued_first(study, lambda trial: attrs_of(trial).get("retry", False))
    dist = {"x": optuna.distributions.FloatDistribution(0, 4)}
    assert [study.ask(dist).params["x"] for _ in range(3)] == [3.0, 1.0, 2.0]
    assert study.ask(dist).number == 3   # an empty queue: a new trial, as Optuna makes it


def test_the_queue_is_taken_in_the_given_order_and_what_it_leaves_out_stays(study):
    for x in (1.0, 2.0, 3.0):
        study.enqueue_trial({"x": x})
    optuna_compat.order_queue(study, lambda waiting: [t for t in reversed(waiting) if t.number != 1])
    dist = {"x": optuna.distributions.FloatDistribution(0, 4)}
    assert [study.ask(dist).number for _ in range(3)] == [2, 0, 3]   # then a new trial: 1 is left out
    assert study.trials[1].state == TrialState.WAITING


def test_a_trial_taken_from_the_queue_beats_at_once_and_while_it_runs(tmp_path):
    # A paused trial comes back with the heartbeat of its last turn, long past the grace period.
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 1.0})
    optuna_compat.order_queue(study, lambda waiting: waiting)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    with optuna_compat.heartbeat(trial):
        pass
    optuna_compat.put_back(trial)
    time.sleep(1.5)
    with pytest.warns(UserWarning, match="Heartbeat"):
        again = study.ask()
    assert again.number == trial.number and optuna_compat.stale_trial_numbers(study) == set()


def test_a_trial_finished_under_the_loop_is_skipped_and_the_loop_goes_on(study):
    # Another worker found trial 0's heartbeat late and failed it while it ran; Optuna's own
    # loop would stop with ValueError("Cannot tell a FAIL trial").
    optuna_compat.skip_telling_finished_trials()
    optuna_compat.skip_telling_finished_trials()   # twice: still one wrapper

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 0:
            optuna_compat.storage_of(study).set_trial_state_values(optuna_compat.trial_id(trial), TrialState.FAIL)
        return 0.5

    study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].value is None


def test_a_system_attr_set_on_a_live_trial_is_stored_and_kept_out_of_user_attrs(study):
    trial = study.ask()
    optuna_compat.set_system_attr(trial, "swipr:x", {"a": [1, 2]})
    stored = study.trials[-1]
    assert stored.system_attrs["swipr:x"] == {"a": [1, 2]}
    assert "swipr:x" not in attrs_of(stored)


def test_study_system_attrs_are_kept_apart_from_the_user_attrs(study):
    # A record stored as a system attr reads back whole and stays out of the user attrs.
    optuna_compat.set_study_system_attr(study, "swipr:x", {"lrs": [1e-7, 1.0], "n": 2})
    assert optuna_compat.study_system_attrs(study)["swipr:x"] == {"lrs": [1e-7, 1.0], "n": 2}
    assert study.user_attrs == {}


def test_a_frozen_trial_has_the_id_of_its_live_trial(study):
    trial = study.ask()
    assert optuna_compat.trial_id(study.trials[-1]) == optuna_compat.trial_id(trial)


def test_fixed_params_are_what_later_suggests_return(study):
    trial = study.ask()
    optuna_compat.fix_params(trial, {"x": 0.25})
    again = optuna_compat.attach(study, optuna_compat.trial_id(trial))
    assert again.suggest_float("x", 0, 1) == 0.25


def _rdb(tmp_path, **kwargs) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'rdb.db'}", **kwargs)


def test_the_engine_under_an_rdb_storage_bare_or_as_a_study_holds_it(tmp_path, study):
    storage = _rdb(tmp_path)
    on_rdb = optuna.create_study(storage=storage)
    assert optuna_compat.rdb_engine(storage) is storage.engine
    assert optuna_compat.rdb_engine(optuna_compat.storage_of(on_rdb)) is storage.engine
    assert optuna_compat.rdb_engine(optuna_compat.storage_of(study)) is None   # in memory: no tables


def test_study_system_attrs_added_in_one_transaction_read_back_as_set_ones(tmp_path, study):
    on_rdb = optuna.create_study(storage=_rdb(tmp_path))
    optuna_compat.set_study_system_attr(on_rdb, "one", {"by": "set"})
    optuna_compat.add_study_system_attrs(on_rdb, {"two": [1, "x"], "three": None})
    reopened = optuna.load_study(study_name=on_rdb.study_name, storage=f"sqlite:///{tmp_path / 'rdb.db'}")
    assert optuna_compat.study_system_attrs(reopened) == {"one": {"by": "set"}, "two": [1, "x"], "three": None}
    with pytest.raises(TypeError, match="RDB storage"):
        optuna_compat.add_study_system_attrs(study, {"four": 4})   # in memory: no tables


def test_unbeaten_running_trials_are_read_from_optunas_tables(tmp_path):
    import datetime

    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = _rdb(tmp_path, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=storage)
    unbeaten, beaten, done = study.ask(), study.ask(), study.ask()
    storage.record_heartbeat(optuna_compat.trial_id(beaten))
    study.tell(done, 1.0)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)
    assert optuna_compat.unbeaten_running_trial_ids(study, later) == [optuna_compat.trial_id(unbeaten)]
    assert optuna_compat.unbeaten_running_trial_ids(study, later - datetime.timedelta(hours=1)) == []
    journal = optuna.create_study(storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log"))))
    journal.ask()
    assert optuna_compat.unbeaten_running_trial_ids(journal, later) == []


def test_stale_trials_are_found_without_being_failed(tmp_path, study):
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = _rdb(tmp_path, heartbeat_interval=1, grace_period=1)
    on_rdb = optuna.create_study(storage=storage)
    trial = on_rdb.ask()
    storage.record_heartbeat(optuna_compat.trial_id(trial))
    with storage.engine.begin() as connection:   # its last beat an hour ago: a dead worker's
        connection.execute(sqlalchemy.text(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour')"))
    assert optuna_compat.stale_trial_numbers(on_rdb) == {trial.number}
    assert on_rdb.trials[0].state == TrialState.RUNNING
    assert optuna_compat.stale_trial_numbers(study) == set()   # no heartbeats in memory


def test_optunas_cached_storage_calls_the_rdb_private_methods_a_guard_wraps(tmp_path):
    # search.study.guarded.GuardedStorage guards these by name; if Optuna stops calling one of
    # them (or renames it) a storage error there would go unguarded.
    called = set()

    class Recording(optuna.storages.RDBStorage):
        pass

    for name in (optuna_compat.RDB_CREATE_TRIAL, *optuna_compat.RDB_PRIVATE_CALLS):
        method = getattr(optuna.storages.RDBStorage, name)   # AttributeError: renamed

        def recording(self, *args, _name=name, _method=method, **kwargs):
            called.add(_name)
            return _method(self, *args, **kwargs)

        setattr(Recording, name, recording)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = Recording(f"sqlite:///{tmp_path / 'rdb.db'}", heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert study.best_trial.number in (0, 1)
    assert optuna_compat.stale_trial_numbers(study) == set()
    assert called == {optuna_compat.RDB_CREATE_TRIAL, *optuna_compat.RDB_PRIVATE_CALLS}


def test_failed_trials_are_logged_on_the_optimize_loggers_name(study):
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger, keep = logging.getLogger(optuna_compat.OPTIMIZE_LOGGER), Keep()
    logger.addHandler(keep)
    # other tests in this process quiet Optuna's loggers and route its tracebacks (filters)
    level, filters = logger.level, list(logger.filters)
    logger.setLevel(logging.WARNING)
    for kept in filters:
        logger.removeFilter(kept)
    try:
        study.optimize(lambda trial: 1 / 0, n_trials=1, catch=(ZeroDivisionError,))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
        for kept in filters:
            logger.addFilter(kept)
    assert any(record.exc_info and record.exc_info[0] is ZeroDivisionError for record in records)


def test_a_note_written_with_the_dashboards_keys_is_the_one_its_note_panel_reads(study):
    from optuna_dashboard import get_note

    from search.views import dashboard_compat

    trial = study.ask()
    tid, note = optuna_compat.trial_id(trial), "## Trial 0\n" + "n" * 5000   # several chunks
    attrs = dashboard_compat.dashboard_note_attrs(tid, note, 3)
    assert dashboard_compat.note_version_key(tid) in attrs and dashboard_compat.note_chunk_key(tid, 1) in attrs
    for key, value in attrs.items():
        optuna_compat.set_study_system_attr(study, key, value)
    assert get_note(trial) == note   # optuna-dashboard's public reader
    assert attrs[dashboard_compat.note_version_key(tid)] == 3


def test_the_dashboards_study_page_function_can_be_replaced_and_put_back(study):
    import io

    import optuna_dashboard

    from search.views import dashboard_compat

    trial = study.ask()
    study.tell(trial, 0.5)
    plain, before = dashboard_compat.plain_study_page(), dashboard_compat.study_page()
    assert before is not None   # (another test's dashboard may have left its linear page there)
    served = []

    def page(*args, **kwargs):
        served.append(True)
        return plain(*args, **kwargs)

    dashboard_compat.replace_study_page(page)
    try:
        app = optuna_dashboard.wsgi(optuna_compat.storage_of(study))
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/api/studies/{optuna_compat.study_id(study)}",
                   "QUERY_STRING": "after=0", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0",
                   "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
        assert dashboard_compat.study_page() is page
        assert b"".join(app(environ, lambda status, headers, *rest: None))
    finally:
        dashboard_compat.replace_study_page(before)
    assert served == [True] and dashboard_compat.study_page() is before
    listed = dashboard_compat.serialize_frozen_trial(optuna_compat.study_id(study), study.trials[0], {})
    assert (listed["number"], listed["values"]) == (0, [0.5])


def test_a_notes_version_and_body_read_from_the_study_system_attrs(study):
    from optuna_dashboard import save_note

    from search.views import dashboard_compat

    trial = study.ask()
    save_note(trial, "first")
    save_note(trial, "second")   # the dashboard's own writer: version 2
    read = dashboard_compat.read_note(optuna_compat.study_system_attrs(study), optuna_compat.trial_id(trial))
    assert (read["version"], read["body"]) == (2, "second")
