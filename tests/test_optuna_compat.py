"""Each use of Optuna's private API (objectives/optuna_compat.py) against the installed Optuna:
an upgrade that changes one of them fails here, not in the middle of a study."""
from __future__ import annotations

import optuna
import pytest
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
