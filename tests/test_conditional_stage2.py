"""Stage 2's params are drawn only when a trial reaches stage 2 (objectives.space.conditional): a
trial the pruner stops at stage 1's end has no stage2_* params, so the sampler and the parameter
importances learn stage 2's params only from trials that trained with them."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from objectives.finetune import FinetuneObjective
from objectives.record import record_of
from objectives.trial_attrs import attrs_of
from search.studyfile import load_study_file
from search.views.stages import STAGES_ATTR, RecordStages
from swipr_core.train.model import ModelSpec
from tests.studykit import space_toml, write_study

TINY = ModelSpec(arch="test_resnet", pretrained=False)
# stage 1: 2 one-epoch cycles (epochs 0, 1); stage 2 at 40 px, its lr and freeze drawn, a budget of
# 0 (stage 1's end), 1 or 2 cycles (epochs 2, 3)
STAGED = space_toml(n_cycles="2", batch_size="[16]") + \
    '[space.stage2]\nimage_size = 40\nfreeze = ["frozen", "unfrozen"]\nlr = { low = 1e-3, high = 1e-2, log = true }\n' \
    'n_cycles = [0, 1, 2]\n'


class PruneAt(optuna.pruners.BasePruner):
    """Prunes every trial judged at `step`."""

    def __init__(self, step: int):
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step == self.step


def _run(tmp_path, data_dir, pruner) -> optuna.trial.FrozenTrial:
    from search.study.data_record import prepare_study_data

    study_file = load_study_file(write_study(tmp_path, data_dir, space=STAGED, pruner="none"))
    study = optuna.create_study(study_name=study_file.study.name, storage=study_file.study.storage, pruner=pruner)
    objective = FinetuneObjective(prepare_study_data(study_file), study_file.space, TINY, device="cpu",
                                  hooks=[RecordStages()])
    study.optimize(objective, n_trials=1)
    return study.trials[0]


def test_a_trial_stopped_at_stage_1s_end_draws_no_stage_2_param(tmp_path, data_dir):
    trial = _run(tmp_path, data_dir, PruneAt(1))   # judged at stage 1's end, a finished schedule
    assert trial.state == TrialState.COMPLETE and attrs_of(trial)["epochs"] == 2
    assert not [name for name in trial.params if name.startswith("stage2_")]
    assert STAGES_ATTR not in attrs_of(trial)   # no stage 2 to show: its params were never drawn
    record = record_of(trial)
    assert not record.plan.stage2_drawn and record.result.stage == 1
    assert record.replay_config().stage2 is None


def test_a_trial_that_reaches_stage_2_draws_its_params_there_and_its_plan_says_them(tmp_path, data_dir):
    trial = _run(tmp_path, data_dir, optuna.pruners.NopPruner())
    assert attrs_of(trial)["epochs"] == 4
    assert {"stage2_lr", "stage2_freeze"} <= set(trial.params)
    plan = record_of(trial).plan
    assert plan.stage2_drawn and plan.config.stage2.lr == trial.params["stage2_lr"]
    assert plan.config.stage2.freeze == trial.params["stage2_freeze"]
    assert attrs_of(trial)[STAGES_ATTR][1]["lr"] == trial.params["stage2_lr"]
    assert attrs_of(trial)["planned_epochs"] == plan.epochs == 4


def test_the_reports_importances_rank_only_params_every_finished_trial_drew():
    from optuna.distributions import FloatDistribution

    from search.views.report import importance_params, left_out_of_importances

    study = optuna.create_study()
    lr, lr2 = FloatDistribution(1e-4, 1e-1, log=True), FloatDistribution(1e-4, 1e-1, log=True)
    for value, params in ((0.3, {"lr": 1e-3}), (0.4, {"lr": 1e-2, "stage2_lr": 1e-3}), (0.5, {"lr": 3e-2})):
        dists = {"lr": lr, **({"stage2_lr": lr2} if "stage2_lr" in params else {})}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    assert importance_params(study) == ["lr"]
    assert "stage2_lr (1 of 3)" in left_out_of_importances(study)
