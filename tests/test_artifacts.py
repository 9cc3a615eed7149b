"""Pictures and notes per trial: drawn, uploaded as Optuna artifacts, pruned trials included."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna_dashboard import get_note, save_note

from objectives.finetune import FinetuneObjective
from objectives.optuna_compat import storage_of, study_id, trial_id
from objectives.trial_attrs import attrs_of
from search.study.data_record import check_fingerprint
from search.study.open import open_study
from search.studyfile import load_study_file
from search.views.artifacts import (
    CONFUSION_PNG,
    CURVES_PNG,
    LR_PNG,
    NOTE_ATTR,
    ROC_PNG,
    TOP_LOSSES_PNG,
    TrialArtifacts,
    confusion,
    make_objective_hooks,
    open_artifact_store,
    plot_confusion,
    plot_curves,
    plot_lr,
    plot_roc,
    store_trial_note,
    study_note,
    trial_note,
    trial_pictures,
)
from search.views.dashboard_compat import read_note
from swipr_core.data.dataset import prepare_data
from swipr_core.train.model import ModelSpec
from swipr_core.train.run import EpochRecord
from tests.studykit import write_study

PNG = b"\x89PNG\r\n\x1a\n"


def _history():
    return [EpochRecord(epoch=i, phase="frozen" if i == 0 else "unfrozen", train_loss=0.7 - 0.1 * i,
                        valid_loss=0.8 - 0.1 * i, accuracy=0.5 + 0.1 * i, seconds=1.0,
                        lrs=[0.01 * (1 - j / 4) for j in range(4)]) for i in range(3)]


def test_confusion_rows_are_labels_and_columns_answers():
    # two NO rows answered NO and YES, three YES rows answered YES, YES and NO
    probs = np.array([0.2, 0.7, 0.9, 0.6, 0.1])
    targets = np.array([0, 0, 1, 1, 1])
    assert confusion(probs, targets) == [[1, 1], [1, 2]]


def test_a_model_that_says_no_to_everything_shows_an_empty_yes_column():
    assert confusion(np.zeros(6), np.array([0, 0, 0, 1, 1, 1])) == [[3, 0], [3, 0]]


def test_every_picture_is_a_png(tmp_path):
    probs, targets = np.array([0.1, 0.8, 0.4, 0.9]), np.array([0, 1, 0, 1])
    paths = [plot_curves(_history(), tmp_path / "c.png", "t"), plot_lr(_history(), tmp_path / "l.png", "t"),
             plot_confusion(probs, targets, tmp_path / "m.png", "t"), plot_roc(probs, targets, tmp_path / "r.png", "t"),
             plot_roc(probs, np.ones(4), tmp_path / "one-class.png", "t")]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, path


def test_notes_carry_params_metrics_and_the_data_summary():
    note = trial_note(4, "PRUNED", {"lr": 0.0123456, "freeze": "unfrozen"}, {"val_loss": 0.5})
    assert "Trial 4: PRUNED" in note and "| lr | 0.01235 |" in note and "| val_loss | 0.5 |" in note
    note = trial_note(5, "COMPLETE", {}, {"val_accuracy": 0.83, "majority_accuracy": 0.8}, baseline=0.8)
    assert "| val_accuracy | 0.830 (majority baseline 0.800) |" in note and "| majority_accuracy" not in note
    note = study_note("demo", {"yes": 30, "no": 90, "valid": 24, "excluded": {"missing_file": 5, "outside_dirs": 2},
                               "fingerprint": "abc123"})
    assert "YES 30, NO 90; YES share 25.0%" in note
    assert "| missing_file | 5 |" in note and "| **total** | 7 |" in note and "`abc123`" in note


class _PruneAfter:
    """A pruner that prunes every trial numbered in `numbers` once it has reported an epoch."""

    def __init__(self, numbers):
        self.numbers = numbers

    def prune(self, study, trial):
        return trial.number in self.numbers


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifacts")
    study_file = load_study_file(write_study(folder, folder / "data"))
    return study_file, prepare_data(study_file.data)


def test_finished_and_pruned_trials_both_get_their_pictures_and_notes(prepared, tmp_path):
    study_file, dataset = prepared
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner())
    study.pruner = _PruneAfter({1})
    store = open_artifact_store(tmp_path / "store")
    # prune_at "epoch": these runs are one epoch long, and at cycle ends a last epoch is never judged
    objective = FinetuneObjective(dataset, study_file.space, ModelSpec("test_resnet", False), device="cpu",
                                  hooks=[TrialArtifacts(store, dataset)], prune_at="epoch")
    study.optimize(objective, n_trials=2)
    done, pruned = study.trials
    assert (done.state, pruned.state) == (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    names = {m.filename for m in get_all_artifact_meta(done, storage=storage_of(study))}
    assert names == {CURVES_PNG, LR_PNG, CONFUSION_PNG, ROC_PNG, TOP_LOSSES_PNG}
    pictures = trial_pictures(done, storage_of(study), store)
    assert set(pictures) == names and all(p.startswith(PNG) for p in pictures.values())
    # pruned as its one epoch ended, it had finished that schedule: its model's pictures too
    assert {m.filename for m in get_all_artifact_meta(pruned, storage=storage_of(study))} == names
    # each note where optuna-dashboard's Note panel reads it, the trial's one line in its user attrs
    notes = _dashboard_notes(study)
    assert notes[done.number].startswith("## Trial 0: COMPLETE") and "val_roc_auc" in notes[done.number]
    assert notes[pruned.number].startswith("## Trial 1: PRUNED")
    assert attrs_of(done)[NOTE_ATTR].startswith("COMPLETE, val_loss ")
    assert "majority baseline" in attrs_of(done)[NOTE_ATTR]


def _dashboard_notes(study) -> dict[int, str]:
    """{trial number: its note, as optuna-dashboard reads it for the trial's page}."""
    attrs = storage_of(study).get_study_system_attrs(study_id(study))
    return {t.number: read_note(attrs, trial_id(t))["body"] for t in study.get_trials()}


def test_a_note_stored_again_replaces_the_last_and_the_dashboard_can_still_edit_it():
    study = optuna.create_study()
    trial = study.ask()
    long_note = "## long\n" + "x" * 5000   # three of the dashboard's 2,045-character attrs
    store_trial_note(trial, None, long_note, "first")
    assert _dashboard_notes(study)[0] == long_note
    store_trial_note(trial, None, "## Trial 0: COMPLETE\n", "second")
    # the shorter note whole, nothing left of the longer one; the line replaced too
    assert _dashboard_notes(study)[0] == "## Trial 0: COMPLETE\n"
    assert attrs_of(study.trials[0])[NOTE_ATTR] == "second"
    attrs = storage_of(study).get_study_system_attrs(study_id(study))
    assert read_note(attrs, trial_id(trial))["version"] == 2
    # the dashboard's own editor stores version + 1 of what it read: it finds the version it expects
    save_note(trial, "edited in the dashboard")
    assert _dashboard_notes(study)[0] == "edited in the dashboard"
    # the trial's next note replaces the edit
    store_trial_note(trial, None, "## Trial 0: later\n", "third")
    assert _dashboard_notes(study)[0] == "## Trial 0: later\n"


def test_a_picture_that_fails_warns_and_keeps_the_trial(prepared, tmp_path, capsys):
    study_file, dataset = prepared
    study = optuna.create_study()

    class Broken:
        def write(self, *args, **kwargs):
            raise OSError("disk full")

    objective = FinetuneObjective(dataset, study_file.space, ModelSpec("test_resnet", False), device="cpu",
                                  hooks=[TrialArtifacts(Broken())])
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert "could not store curves.png: OSError: disk full" in capsys.readouterr().err


def test_the_study_note_is_written_once_from_the_recorded_data(prepared, tmp_path):
    study_file, dataset = prepared
    study = open_study(study_file, create=True)
    check_fingerprint(study, dataset, study_file)
    make_objective_hooks(study_file, study)
    note = get_note(study)
    counts = dataset.split.counts()
    assert f"YES {counts['YES']}, NO {counts['NO']}" in note and dataset.fingerprint in note
    make_objective_hooks(study_file, study)
    assert get_note(study) == note
    assert (study_file.path.parent / "study.artifacts").is_dir()
