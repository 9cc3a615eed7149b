"""An interrupted trial (Ctrl-C, SIGTERM, a Dask driver's stop) is FAIL in Optuna but reads as
interrupted: in `swipr study status`, in the run's summary and in the report's."""
from __future__ import annotations

import json

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from objectives.judging import INTERRUPTED_ATTR, interrupted
from objectives.optuna_compat import storage_of, trial_id
from objectives.trial_attrs import PREFIX
from search.running.dask_driver import Driver
from search.running.dask_trial import STARTED_ATTR
from search.views.progress import summary_table
from search.views.report import render_report
from tests.studykit import run_cli, write_study


def _trial(state, value=None, stopped=False):
    return create_trial(state=state, value=value, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1e-1)},
                        system_attrs={PREFIX + INTERRUPTED_ATTR: True} if stopped else {})


def _study(storage=None, name="t"):
    study = optuna.create_study(storage=storage, study_name=name)
    study.add_trials([_trial(TrialState.COMPLETE, 0.3), _trial(TrialState.FAIL),
                      _trial(TrialState.FAIL, stopped=True)])
    return study


def test_the_summaries_count_interrupted_trials_apart_from_failed_ones():
    study = _study()
    rows = [" ".join(line.split()) for line in summary_table(study, "cpu").splitlines()]
    assert "trials 3 (1 complete, 0 pruned, 1 failed, 1 interrupted)" in rows
    assert "3 (1 complete, 1 fail, 1 interrupted)" in render_report(study)
    # nothing interrupted: the summary says nothing of it
    assert "interrupted" not in summary_table(optuna.create_study(), "cpu")


def test_status_shows_an_interrupted_trial_as_interrupted(tmp_path):
    study_file = write_study(tmp_path, tmp_path / "data")
    _study(f"sqlite:///{tmp_path / 'study.db'}")
    text = run_cli("study", "status", study_file)
    assert text.returncode == 0, text.stderr
    assert "3 trials (1 complete, 1 fail, 1 interrupted)" in text.stdout
    lines = [line.split() for line in text.stdout.splitlines()]
    assert ["1", "FAIL"] in [line[:2] for line in lines] and ["2", "INTERRUPTED"] in [line[:2] for line in lines]
    # --json keeps Optuna's state, with the mark beside it
    rows = json.loads(run_cli("study", "status", study_file, "--json").stdout)["trials"]
    assert [(row["state"], row["interrupted"]) for row in rows] == [("COMPLETE", False), ("FAIL", False),
                                                                     ("FAIL", True)]


def test_a_dask_driver_stopping_marks_the_trials_it_gives_up_on():
    study = optuna.create_study()
    trial = study.ask({"lr": FloatDistribution(1e-4, 1e-1)})
    driver = Driver.__new__(Driver)   # no cluster: give_up only needs the study and its checkpoints
    driver.study, driver.storage = study, storage_of(study)

    class Checkpoints:
        def on_stale(self, study, frozen):
            study.enqueue_trial(frozen.params)
            return True

    driver.checkpoints = Checkpoints()
    storage_of(study).set_trial_system_attr(trial_id(trial), STARTED_ATTR, "token")
    assert driver.give_up(trial_id(trial), "stopped (Ctrl-C) before its next epoch", interrupt=True) == 1
    stopped, retry = study.trials
    assert stopped.state == TrialState.FAIL and interrupted(stopped)
    assert retry.state == TrialState.WAITING and not interrupted(retry)
    # a lost worker's trial is a failure, not an interrupt
    lost = study.ask({"lr": FloatDistribution(1e-4, 1e-1)})
    storage_of(study).set_trial_system_attr(trial_id(lost), STARTED_ATTR, "token")
    driver.give_up(trial_id(lost), "its worker was lost")
    assert not interrupted(study.trials[lost.number])
