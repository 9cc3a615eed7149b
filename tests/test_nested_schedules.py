"""Nested schedules: n_cycles as a trial's budget. The k-cycle prefix of an n-cycle run
is the k-cycle run, a trial's value is its best finished schedule and `swipr fit` replays exactly
that many cycles, a study whose trials sampled n_cycles (no mode recorded) goes on that way, and a retry resumes mid-budget."""
from __future__ import annotations

import math
import re

import optuna
import pytest

from objectives.finetune import FinetuneObjective, config_from_trial, replay_config
from objectives.judging import ScheduleCut, replay_curve
from objectives.space import Choices, cycle_budget, drawn
from objectives.trial_attrs import attrs_of
from swipr_core.errors import FieldError, SwiprError
from swipr_core.train.model import ModelSpec
from swipr_core.train.run import train
from swipr_core.train.schedule import TrainConfig
from tests.studykit import SPACE, kill_then_retry, prepared_demo, write_study

TINY = ModelSpec(arch="test_resnet", pretrained=False)
NESTED = SPACE.replace("n_cycles = [1]", "n_cycles = [1, 2, 3]")   # 1-epoch cycles: ends at epochs 0, 1, 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return prepared_demo(tmp_path_factory.mktemp("data"))


def config(**overrides) -> TrainConfig:
    values = dict(lr=1e-2, batch_size=16, image_size=32, freeze="unfrozen", n_cycles=2, cycle_len=1, cycle_mult=2)
    return TrainConfig(**{**values, **overrides})


# --- the schedule model ----------------------------------------------------------------------

def test_the_schedule_marks_each_finished_k_cycle_run_and_the_warm_up_is_no_cycle():
    schedule = config(freeze="frozen_then_unfrozen", n_cycles=3, finish_at=(2, 3)).schedule()
    # head epoch 0, then cycles of 1, 2 and 4 epochs: ends after epochs 0, 1, 3, 7
    assert [(e.epoch, e.phase, e.cycle, e.finished) for e in schedule.ends] == [
        (0, "frozen", 0, False), (1, "unfrozen", 1, False), (3, "unfrozen", 2, True), (7, "unfrozen", 3, True)]
    assert [p.first_epoch for p in schedule.phases] == [0, 1] and schedule.epochs == 8
    assert [e.epoch for e in schedule.finished()] == [3, 7]
    # Without finish_at only the run's own end is finished: one schedule, not nested ones.
    assert [e.epoch for e in config(n_cycles=3).schedule().finished()] == [6]


def test_finished_run_is_the_shorter_run_and_refuses_a_length_not_on_the_way():
    budget = config(n_cycles=3, finish_at=(1, 3))
    assert budget.finished_run(1) == config(n_cycles=1)
    with pytest.raises(FieldError, match="2 is not a finished schedule"):
        budget.finished_run(2)
    with pytest.raises(FieldError, match="at most n_cycles"):
        config(n_cycles=2, finish_at=(3,))


@pytest.mark.parametrize("freeze, cycle_mult", [("unfrozen", 2), ("frozen_then_unfrozen", 1)])
def test_the_k_cycle_prefix_of_an_n_cycle_run_is_the_k_cycle_run(dataset, freeze, cycle_mult):
    # Same seed: every learning rate and loss of the 2-cycle run is, bit for bit, the 3-cycle run's
    # first epochs, so a nested trial's 2-cycle result IS the 2-cycle trial.
    short = train(dataset, config(freeze=freeze, cycle_mult=cycle_mult), TINY, device="cpu").history
    long = train(dataset, config(freeze=freeze, cycle_mult=cycle_mult, n_cycles=3, finish_at=(2, 3)), TINY,
                 device="cpu").history
    assert len(long) > len(short)
    for a, b in zip(short, long[:len(short)], strict=True):
        assert a.lrs == b.lrs
        assert (a.train_loss, a.valid_loss, a.accuracy) == (b.train_loss, b.valid_loss, b.accuracy)
    assert long[len(short) - 1].finishes == 2 and short[-1].finishes == 2 and long[-1].finishes == 3


# --- a trial's value --------------------------------------------------------------------------

class PruneFrom(optuna.pruners.BasePruner):
    def __init__(self, step: int):
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


def test_the_value_is_the_best_finished_schedule_and_a_cut_after_one_is_complete():
    study = optuna.create_study(pruner=PruneFrom(3))
    losses, ends = [0.9, 0.5, 0.7, 0.6, 0.8, 0.4], [False, True, False, True, False, True]
    finishes = [0, 1, 0, 2, 0, 3]
    # Runs to its end: its value is the best of the three finished schedules, not the last epoch's loss.
    unpruned = optuna.create_study()
    unpruned.optimize(lambda t: replay_curve(t, losses, ends, "cycle_end", finishes), n_trials=1)
    [whole] = unpruned.trials
    assert whole.value == 0.4 and attrs_of(whole)["best_n_cycles"] == 3
    # Cut at its 2nd cycle end (epoch 3): it keeps its 1-cycle schedule, 0.5 after epoch 1.
    study.optimize(lambda t: replay_curve(t, losses, ends, "cycle_end", finishes), n_trials=1)
    [cut] = study.trials
    assert cut.state == optuna.trial.TrialState.COMPLETE and cut.value == 0.5
    assert (attrs_of(cut)["best_n_cycles"], attrs_of(cut)["best_cycle_end_loss"],
            attrs_of(cut)["best_cycle_end_epoch"], attrs_of(cut)["cut_after_epoch"]) == (1, 0.5, 1, 3)
    # Cut before any finished schedule: PRUNED, as always.
    early = optuna.create_study(pruner=PruneFrom(1))
    early.optimize(lambda t: replay_curve(t, losses, ends, "cycle_end", [0, 0, 0, 2, 0, 3]), n_trials=1)
    assert early.trials[0].state == optuna.trial.TrialState.PRUNED
    assert issubclass(ScheduleCut, optuna.TrialPruned)


def test_a_budget_is_no_param_and_plans_the_largest_value():
    space = {"n_cycles": Choices((3, 2)), "lr": Choices((0.01,))}
    assert cycle_budget(space, "budget") == (2, 3) and cycle_budget(space, "sampled") is None
    assert "n_cycles" not in drawn(space, "budget") and "n_cycles" in drawn(space, "sampled")
    assert cycle_budget({"n_cycles": Choices((3,))}, "budget") is None   # one value: nothing nested
    full = {"lr": Choices((0.01,)), "batch_size": Choices((16,)), "image_size": Choices((32,)),
            "freeze": Choices(("unfrozen",)), "n_cycles": Choices((2, 3)), "cycle_len": Choices((1,)),
            "cycle_mult": Choices((1,))}
    trial = optuna.create_study().ask()
    made = config_from_trial(trial, full, head_epochs=1, seed=0, n_cycles_mode="budget")
    assert (made.n_cycles, made.finish_at) == (3, (2, 3)) and "n_cycles" not in trial.params


def _nested_study(tmp_path, data_dir, pruner):
    from search.study.data_record import prepare_study_data
    from search.studyfile import load_study_file

    path = write_study(tmp_path, data_dir, space=NESTED)
    study_file = load_study_file(path)
    study = optuna.create_study(study_name=study_file.study.name, storage=study_file.study.storage, pruner=pruner)
    return path, study_file, study, prepare_study_data(study_file)


def test_fit_replays_exactly_the_best_finished_schedule(tmp_path, data_dir):
    from search.fit.replay import fit

    path, study_file, study, dataset = _nested_study(tmp_path, data_dir, PruneFrom(1))
    objective = FinetuneObjective(dataset, study_file.space, TINY, device="cpu", n_cycles_mode="budget")
    study.optimize(objective, n_trials=1)
    [trial] = study.trials
    # Planned 3 cycles, cut at its 2nd cycle end (epoch 1), after its 2-cycle schedule finished.
    assert trial.state == optuna.trial.TrialState.COMPLETE and "n_cycles" not in trial.params
    assert attrs_of(trial)["planned_epochs"] == 3 and attrs_of(trial)["epochs"] == 2
    losses = attrs_of(trial)["val_loss_by_epoch"]
    assert trial.value == min(losses[:2]) == attrs_of(trial)["best_cycle_end_loss"]
    k = attrs_of(trial)["best_n_cycles"]
    assert replay_config(trial, 1).n_cycles == k
    lines = []
    outcome = fit(path, tmp_path / "bundle", echo=lines.append)
    assert outcome.trial_number == 0 and outcome.manifest["epochs"] == k
    epoch_rows = [line for line in lines if re.match(r"\s*\d+\s+\d+\s+(un)?frozen\b", line)]   # the epoch table's
    assert len(epoch_rows) == k   # exactly that many cycles trained
    assert outcome.replay_value == trial.value and outcome.matched


# --- the old way, and retries -----------------------------------------------------------------

def test_a_study_started_the_old_way_goes_on_the_old_way(tmp_path, data_dir):
    from search.study.schedule_record import n_cycles_mode, settle_n_cycles_mode
    from search.studyfile import load_study_file

    path, study_file, study, dataset = _nested_study(tmp_path, data_dir, optuna.pruners.NopPruner())
    # A trial of a study that recorded no mode: n_cycles a param.
    study.add_trial(optuna.trial.create_trial(
        params={"n_cycles": 2}, distributions={"n_cycles": optuna.distributions.CategoricalDistribution([1, 2, 3])},
        value=0.5))
    assert n_cycles_mode(study, study_file) == "sampled"
    [note] = settle_n_cycles_mode(study, study_file)
    assert "goes on that way" in note and study.user_attrs["n_cycles_mode"] == "sampled"
    FinetuneObjective(dataset, study_file.space, TINY, device="cpu",
                      n_cycles_mode=n_cycles_mode(study, study_file))(study.ask())
    assert "n_cycles" in study.trials[-1].params   # sampled, as the study began
    # Asking for the other meaning outright is refused in one line.
    path.write_text(path.read_text().replace('[study]\n', '[study]\nn_cycles = "budget"\n', 1))
    with pytest.raises(SwiprError, match='n_cycles is "budget", but study .t. ran with n_cycles "sampled"'):
        settle_n_cycles_mode(study, load_study_file(path))


def test_a_bad_n_cycles_mode_is_one_line(tmp_path, data_dir):
    from search.studyfile import load_study_file

    path = write_study(tmp_path, data_dir, extra={"study": 'n_cycles = "nested"\n'})
    with pytest.raises(SwiprError, match=r"\[study\] n_cycles must be one of budget, sampled, got 'nested'"):
        load_study_file(path)


def test_a_retried_nested_trial_resumes_mid_budget(tmp_path, data_dir, monkeypatch):
    path, study_file, study, dataset = _nested_study(tmp_path, data_dir, optuna.pruners.NopPruner())
    kill_then_retry(monkeypatch, study_file, dataset, after_epoch=1)
    first, retry = study.trials
    assert first.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    # Two of the 3 planned cycles were saved: the retry trains only the third, and its value is
    # still the best of all three finished schedules, the saved two included.
    assert attrs_of(retry)["resumed_from_epoch"] == 2 and attrs_of(retry)["epochs"] == 3
    assert "n_cycles" not in retry.params and attrs_of(retry)["n_cycles_budget"] == 3
    losses = attrs_of(retry)["val_loss_by_epoch"]
    assert losses[:2] == attrs_of(first)["val_loss_by_epoch"]
    assert retry.value == min(losses) and not math.isnan(retry.value)
    assert attrs_of(retry)["finished_schedules"] == [[0, 1], [1, 2], [2, 3]]
    assert losses[attrs_of(retry)["best_cycle_end_epoch"]] == retry.value


def test_the_summary_says_what_pruning_and_nesting_saved_and_which_schedule_is_best():
    from optuna.trial import TrialState

    from search.views.gains import gains_rows, search_gains

    def nested(state, value, epochs, finished, **attrs):
        return optuna.trial.create_trial(
            state=state, value=value, params={"lr": 0.01},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1)},
            user_attrs={"planned_epochs": 7, "epochs": epochs, "n_cycles_budget": 3, "finished_schedules": finished,
                        **attrs})

    study = optuna.create_study()
    study.add_trials([
        # 1 + 2 + 4 epoch cycles, 2 and 3 finished: ran all 7, its 2-cycle run (3 epochs) came free
        nested(TrialState.COMPLETE, 0.5, 7, [[2, 2], [6, 3]], best_n_cycles=3, best_cycle_end_epoch=6,
               best_cycle_end_loss=0.5),
        # cut after its 2-cycle schedule: 4 epochs saved, and it is the best trial
        nested(TrialState.COMPLETE, 0.4, 3, [[2, 2]], best_n_cycles=2, best_cycle_end_epoch=2,
               best_cycle_end_loss=0.4, cut_after_epoch=2),
        nested(TrialState.PRUNED, None, 1, []),   # 6 saved
    ])
    gains = search_gains(study)
    assert (gains["epochs_run"], gains["epochs_saved"], gains["pruned"], gains["cut"], gains["nesting_saved"]) == \
        (11, 10, 1, 1, 3)
    rows = dict(gains_rows(study, gains))
    assert rows["pruning saved"] == ("10 epochs (48% of 21): 1 trial pruned, 1 stopped after a finished shorter "
                                     "schedule, 11 epochs run")
    assert rows["nesting saved"].startswith("3 epochs")
    assert rows["best schedule"].startswith("trial 1's 2-cycle schedule (val_loss 0.4000 after epoch 2")
