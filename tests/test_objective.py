"""The objective: a trial's params become a run, reported on one counter, pruned by Optuna."""
import copy

import optuna
import pytest

from objectives.finetune import FinetuneObjective
from objectives.trial_attrs import attrs_of
from search.studyfile import load_study_file
from swipr_core.data.dataset import prepare_data
from swipr_core.train.model import ModelSpec
from tests.studykit import write_study

SPACE = """
[space]
lr = 0.01
batch_size = 32
image_size = 32
freeze = "frozen_then_unfrozen"
n_cycles = 2
cycle_len = 1
cycle_mult = 2
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("objective")
    study_file = load_study_file(write_study(folder, folder / "data", space=SPACE))
    dataset = prepare_data(study_file.data)
    objective = FinetuneObjective(dataset, study_file.space, ModelSpec("test_resnet", False), device="cpu")
    return objective


class PruneAtStep(optuna.pruners.BasePruner):
    """Prunes once a trial has reported `step`: proves that step was reported at all."""

    def __init__(self, step: int):
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


@pytest.mark.parametrize("prune_at, judged_at, state", [("epoch", [0, 1, 2], "PRUNED"),
                                                        ("cycle_end", [0, 1], "COMPLETE")])
def test_second_phase_reaches_the_pruner(setup, prune_at, judged_at, state):
    # frozen_then_unfrozen: epoch 0 is frozen, epochs 1..3 unfrozen (cycles end at 0, 1, 3).
    # Per epoch, a pruner that acts at step 2 fires only if the unfrozen phase reports on the
    # same counter. At cycle ends it is asked at 0 and 1 (the unfrozen phase's first cycle
    # end), never mid-cycle at 2 nor at the last epoch, 3, where pruning saves nothing.
    objective = copy.copy(setup)
    objective.prune_at = prune_at
    study = optuna.create_study(pruner=PruneAtStep(2))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state.name == state
    assert attrs_of(trial)["judged_epochs"] == judged_at
    assert attrs_of(trial)["train_seconds"] > 0   # a pruned run's cost is recorded too
    assert sorted(trial.intermediate_values) == list(range(attrs_of(trial)["epochs"]))


def test_complete_trial_records_its_metrics(setup):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.optimize(setup, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]
    assert trial.value == attrs_of(trial)["val_loss_by_epoch"][3]
    assert trial.params == {"lr": 0.01, "batch_size": 32, "image_size": 32, "freeze": "frozen_then_unfrozen",
                            "n_cycles": 2, "cycle_len": 1, "cycle_mult": 2}
    for key in ("val_accuracy", "val_roc_auc", "majority_accuracy", "epochs", "train_seconds",
                "train_images_per_s", "seed", "data_fingerprint"):
        assert key in attrs_of(trial), key
    assert 0.5 <= attrs_of(trial)["majority_accuracy"] <= 1


def test_the_study_files_compile_key_reaches_training(tmp_path, monkeypatch):
    import objectives.finetune as finetune
    from objectives.resume import Checkpoints
    from objectives.trial import trial_objective
    from search.running.stop import StopFlag
    from search.running.worker import train_settings

    space = SPACE
    study_file = load_study_file(write_study(tmp_path, tmp_path / "data", space=space,
                                             extra={"train": 'compile = "off"\n'}))
    seen = {}

    def fake_train(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(finetune, "train", fake_train)
    objective = trial_objective(prepare_data(study_file.data), study_file.space, study_file.model,
                                train_settings(study_file, "cpu"), Checkpoints(tmp_path / "ck", 0), StopFlag())
    study = optuna.create_study()
    study.optimize(objective, n_trials=1, catch=(RuntimeError,))
    assert seen["compile"] == "off" and seen["device"] == "cpu"


def test_the_dask_tasks_objective_keeps_the_study_files_prune_at(tmp_path):
    # A Dask task builds its objective through guarded_finetune, as a worker does through
    # trial_objective, so [study] prune_at reaches it too (a copy of that assembly dropped it).
    from objectives.resume import Checkpoints
    from objectives.trial import TrainSettings, guarded_finetune

    guarded = guarded_finetune(None, {}, ModelSpec("test_resnet", False), TrainSettings(prune_at="epoch"),
                               Checkpoints(tmp_path, 3))
    assert guarded.objective.prune_at == "epoch"
