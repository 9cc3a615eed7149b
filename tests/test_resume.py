"""A trial resumes only from its own checkpoint: folders keyed by storage and study, and each
trial folder's owner checked before anything in it is loaded. An interrupted trial is marked
so; a retry outside an edited range says so in one line."""
from __future__ import annotations

import json
import warnings

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from objectives.judging import INTERRUPTED_ATTR, interrupted
from objectives.resume import OWNER_FILE, Checkpoints
from objectives.space import Range, suggest
from objectives.trial_attrs import attrs_of
from search.running.worker import checkpoint_root
from search.studyfile import load_study_file
from tests.studykit import write_study


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    made = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    made.set_user_attr("data_fingerprint", "abc")
    return made


def test_studies_whose_names_differ_only_in_odd_characters_get_their_own_folders(tmp_path, monkeypatch):
    roots = set()
    for name, storage in (("exp 1", "a.db"), ("exp:1", "a.db"), ("exp_1", "a.db"), ("exp 1", "b.db")):
        monkeypatch.setenv("SWIPR_STORAGE", f"sqlite:///{tmp_path / storage}")
        path = write_study(tmp_path, tmp_path / "data", name=name)
        roots.add(checkpoint_root(load_study_file(path)))
    assert len(roots) == 4
    assert all(root.parent == tmp_path / ".swipr-cache" / "checkpoints" for root in roots)


def test_a_folder_holding_another_runs_checkpoint_is_cleared_not_resumed(tmp_path, study):
    checkpoints = Checkpoints(tmp_path / "ck", max_retry=1)
    trial = study.ask()
    trial.suggest_float("lr", 0.001, 0.1)
    folder = checkpoints.folder(0)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"epoch 3 of someone else's run")
    (folder / OWNER_FILE).write_text(json.dumps({"root": "elsewhere", "trial": 0, "params": {}}))
    assert checkpoints.dir_for(trial) == folder
    assert not (folder / "checkpoint.pt").exists()
    owner = json.loads((folder / OWNER_FILE).read_text())
    assert owner == {"root": str(tmp_path / "ck"), "trial": 0, "params": trial.params, "data_fingerprint": "abc"}


def test_the_trials_own_folder_is_kept(tmp_path, study):
    checkpoints = Checkpoints(tmp_path / "ck", max_retry=1)
    trial = study.ask()
    trial.suggest_float("lr", 0.001, 0.1)
    folder = checkpoints.dir_for(trial)
    (folder / "checkpoint.pt").write_bytes(b"mine")
    assert checkpoints.dir_for(trial) == folder and (folder / "checkpoint.pt").read_bytes() == b"mine"


def test_other_data_makes_a_checkpoint_someone_elses(tmp_path, study):
    checkpoints = Checkpoints(tmp_path / "ck", max_retry=1)
    trial = study.ask()
    folder = checkpoints.dir_for(trial)
    (folder / "checkpoint.pt").write_bytes(b"trained on the old split")
    study.set_user_attr("data_fingerprint", "def")
    checkpoints.dir_for(trial)
    assert not (folder / "checkpoint.pt").exists()


def test_an_interrupted_trial_is_marked_so_though_optuna_records_it_fail(tmp_path, study):
    # Ctrl-C: FAIL for Optuna (its retry semantics), the interrupted mark for the views; the
    # retry queued from it is no interrupt, and the mark is set with no retries left too.
    checkpoints = Checkpoints(tmp_path, max_retry=1)
    trial = study.ask({"lr": FloatDistribution(1e-3, 1e-1, log=True)})
    assert checkpoints.retry_later(trial) is True
    study.tell(trial, state=TrialState.FAIL)
    retry = study.ask()
    assert checkpoints.retry_later(retry) is False   # its one retry is used
    study.tell(retry, state=TrialState.FAIL)
    failed_plain = study.ask()
    study.tell(failed_plain, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert [interrupted(t) for t in trials] == [True, True, False]
    assert attrs_of(trials[1]).get(INTERRUPTED_ATTR) is True and retry.number == 1


def test_a_retry_outside_an_edited_range_says_so_in_one_line(tmp_path, study, capsys):
    # A retry holds its original's lr; [space] lr has moved since: the retry keeps its value
    # and says so once, not in Optuna's paragraph-long RuntimeWarning.
    trial = study.ask({"lr": FloatDistribution(1e-3, 1e-1, log=True)})
    Checkpoints(tmp_path, max_retry=1).retry_later(trial)
    study.tell(trial, state=TrialState.FAIL)
    edited = Range(0.5, 1.0, log=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # any warning fails the test
        retry = study.ask()
        values = {suggest(retry, "lr", edited) for _ in range(3)}
    assert values == {study.trials[0].params["lr"]}
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"trial 1: lr={study.trials[0].params['lr']:.4g} is outside [space] now (0.5..1); "
                     "it keeps the value it started with"]
    # A fresh trial draws from the edited range, quietly.
    fresh = study.ask()
    assert 0.5 <= suggest(fresh, "lr", edited) <= 1.0 and capsys.readouterr().out == ""
