"""One record per trial (objectives.record): its plan, written as it starts, and its result, the
finished schedule its value names. Every view shows that result's figures, the pictures are of
that model, `swipr fit` replays the plan and lands on the result's AUC; a study written before
the record reads the same way."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from objectives.finetune import FinetuneObjective
from objectives.optuna_compat import storage_of, study_id, trial_id
from objectives.record import PLAN_ATTR, RESULT_ATTR, record_of
from objectives.trial_attrs import attrs_of
from search.studyfile import load_study_file
from search.studyfile.trained_with import RecordTrainedWith
from search.views.artifacts import CONFUSION_PNG, ROC_PNG, TOP_LOSSES_PNG, make_objective_hooks
from search.views.dashboard_compat import read_note
from swipr_core.train.model import ModelSpec
from tests.studykit import run_cli, space_toml, write_study

TINY = ModelSpec(arch="test_resnet", pretrained=False)
# Stage 1: 2 one-epoch cycles (epochs 0, 1); stage 2 at an lr no model survives well, a budget of
# 0 (stage 1's end), 1 or 2 cycles (epochs 2, 3): its value is stage 1's end, not its last epoch.
LOSING_STAGE2 = space_toml(n_cycles="2", batch_size="[16]").replace(
    "lr = { low = 1e-3, high = 3e-2, log = true }", "lr = 1e-2") + "[space.stage2]\nlr = 0.9\nn_cycles = [0, 1, 2]\n"
OLD_STUDY = Path(__file__).parent / "data" / "study_before_the_record.db"


@pytest.fixture(scope="module")
def losing_stage2(tmp_path_factory, data_dir):
    """(study file path, the one COMPLETE trial): stage 2 ran and lost, so its value is epoch 1."""
    from search.study.data_record import check_fingerprint, prepare_study_data

    tmp_path = tmp_path_factory.mktemp("record")
    path = write_study(tmp_path, data_dir, space=LOSING_STAGE2, pruner="none")
    study_file = load_study_file(path)
    study = optuna.create_study(study_name=study_file.study.name, storage=study_file.study.storage)
    dataset = prepare_study_data(study_file)
    check_fingerprint(study, dataset, study_file)
    hooks = [RecordTrainedWith(study_file), *make_objective_hooks(study_file, study, dataset)]
    study.optimize(FinetuneObjective(dataset, study_file.space, TINY, device="cpu", hooks=hooks), n_trials=1)
    [trial] = study.trials
    return path, trial


def test_the_result_is_the_value_s_schedule_not_the_last_epoch(losing_stage2):
    _, trial = losing_stage2
    record = record_of(trial)
    assert trial.state == TrialState.COMPLETE and not record.legacy
    assert PLAN_ATTR in trial.system_attrs and RESULT_ATTR in trial.system_attrs
    assert PLAN_ATTR not in trial.user_attrs and set(trial.user_attrs) == {"val_accuracy"}   # Optuna's tables stay readable
    losses = attrs_of(trial)["val_loss_by_epoch"]
    assert record.epochs_run == 4 and record.result.epoch == 1 and record.result.stage == 1
    assert record.result.val_loss == trial.value == losses[1] != losses[-1]
    assert record.plan.config.stage2 is not None and record.plan.config.finish_at == (0, 1, 2)
    # the user attrs people see say the result's figures, not the last epoch's
    assert trial.user_attrs["val_accuracy"] == round(record.result.accuracy, 3)   # a table's worth
    assert attrs_of(trial)["val_roc_auc"] == record.result.roc_auc
    assert sum(record.result.confusion.values()) == record.result.n_valid
    replay = record.replay_config()
    assert replay.stage2 is None and replay.epochs == 2


def test_the_note_and_the_pictures_are_of_the_value_s_model(losing_stage2):
    path, trial = losing_stage2
    study_file = load_study_file(path)
    study = optuna.load_study(study_name=study_file.study.name, storage=study_file.study.storage)
    names = {meta.filename for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=storage_of(study))}
    assert {CONFUSION_PNG, ROC_PNG, TOP_LOSSES_PNG} <= names
    # the note as optuna-dashboard's Note panel reads it
    note = read_note(storage_of(study).get_study_system_attrs(study_id(study)), trial_id(trial))["body"]
    result = record_of(trial).result
    assert f"| val_loss | {trial.value:.4g} |" in note
    assert f"| val_roc_auc | {result.roc_auc:.4g} |" in note
    assert "after epoch 1 of 4 run" in note
    last = attrs_of(trial)["val_loss_by_epoch"][-1]
    assert f"| last epoch (3) val_loss | {last:.4g} |" in note   # the last epoch only labelled as such
    assert attrs_of(trial)["note"].startswith(f"COMPLETE, val_loss {trial.value:.4g}")


def test_optunas_own_tables_stay_readable(losing_stage2):
    # `optuna trials` and `optuna studies` print every user attr: a trial's bookkeeping (its
    # losses per epoch, its plan, its judging marks) lives in system attrs, so rows stay short
    import subprocess
    import sys

    path, trial = losing_stage2
    storage = load_study_file(path).study.storage
    optuna_cli = [sys.executable, "-c", "from optuna.cli import main; raise SystemExit(main())"]
    for command in (["trials", "--study-name", "t"], ["studies"]):
        table = subprocess.run([*optuna_cli, *command, "--storage", storage], capture_output=True, text=True,
                               check=True).stdout
        assert max(len(line) for line in table.splitlines()) <= 400, table
    assert set(trial.user_attrs) == {"val_accuracy"}


def test_status_best_and_the_report_show_the_same_result(losing_stage2, tmp_path):
    path, trial = losing_stage2
    result = record_of(trial).result
    status = json.loads(run_cli("study", "status", path, "--json").stdout)["trials"][0]
    best = json.loads(run_cli("study", "best", path, "--json").stdout)
    for shown in (status, best):
        assert shown["value"] == trial.value
        assert shown["val_accuracy"] == result.accuracy and shown["val_roc_auc"] == result.roc_auc
    assert status["value_epoch"] == 1 and best["result"]["epoch"] == 1
    text = run_cli("study", "best", path).stdout
    assert f"val_roc_auc: {result.roc_auc:.4f}" in text and "stage 1's end (stage 2 skipped), after epoch 1" in text
    run_cli("study", "report", path, "--out", tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"<th>val_roc_auc</th><td>{result.roc_auc:.4f}</td>" in page
    assert "Confusion matrix of the value&#x27;s model" in page


def test_fit_replays_the_plan_and_lands_on_the_recorded_auc(losing_stage2, tmp_path):
    from search.fit.replay import fit

    path, trial = losing_stage2
    lines: list[str] = []
    outcome = fit(path, tmp_path / "bundle", echo=lines.append)
    result = record_of(trial).result
    assert outcome.replay_value == trial.value and outcome.matched
    assert outcome.manifest["epochs"] == 2
    assert any(f"ROC AUC {result.roc_auc:.4f}, the same as the trial's" in line for line in lines)
    assert outcome.manifest["replay"]["roc_auc"] == {"trial": result.roc_auc, "replay": result.roc_auc}


# --- a study written before the record --------------------------------------------------------

@pytest.fixture
def old_study(tmp_path, data_dir) -> Path:
    """A study file over a copy of a demo study that swipr wrote before the record (12 trials,
    two stages, the lr finder); its best trial, 10, has its value at epoch 6 of 10."""
    database = tmp_path / "old.db"
    shutil.copy(OLD_STUDY, database)
    path = write_study(tmp_path, data_dir, name="demo")
    path.write_text(path.read_text().replace("[study]\n", f'[study]\nstorage = "sqlite:///{database}"\n', 1))
    return path


def test_a_study_written_before_the_record_reads_as_one(old_study):
    study = optuna.load_study(study_name="demo", storage=load_study_file(old_study).study.storage)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        record = record_of(trial)
        assert record.legacy and record.plan is not None and record.result is not None
        assert record.result.val_loss == trial.value
        assert record.replay_config().epochs == record.result.epoch + 1
    best = record_of(study.best_trial)
    assert (best.number, best.result.epoch, best.epochs_run, best.result.stage) == (10, 6, 10, 1)
    assert best.result.accuracy == attrs_of(study.best_trial)["val_accuracy"]
    assert best.result.roc_auc is None   # the old val_roc_auc was epoch 9's: not the value's model
    status = json.loads(run_cli("study", "status", old_study, "--json").stdout)
    row = next(r for r in status["trials"] if r["number"] == 10)
    assert row["value_epoch"] == 6 and row["val_accuracy"] == best.result.accuracy
    assert "best trial: 10" in run_cli("study", "best", old_study).stdout
