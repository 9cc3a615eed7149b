"""A trial resumes only from its own checkpoint: folders keyed by storage and study, and each
trial folder's owner checked before anything in it is loaded."""
from __future__ import annotations

import json

import optuna
import pytest

from objectives.resume import OWNER_FILE, Checkpoints
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
