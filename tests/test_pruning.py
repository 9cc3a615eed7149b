"""Schedule-aware pruning: recorded learning curves fed to real Optuna studies, in memory.

No training here: a curve is (raw val loss per epoch, which epochs end an SGDR cycle), and
objectives.judging.replay_curve reports it exactly as the live objective reports a run.
"""
import math
import random

import optuna
import pytest
from optuna.trial import TrialState

from objectives.judging import (
    AGAINST_ATTR,
    DIVERGED_ATTR,
    JUDGED_ATTR,
    LOSSES_ATTR,
    PRUNE_AT,
    Step,
    judge,
    replay_curve,
    report_epoch,
)
from objectives.trial_attrs import attrs_of
from search.study.pruners import make_pruner, pruner_for
from search.studyfile.sections import PRUNERS, StudySection
from search.views.format import describe_trial
from tests.studykit import one_line_error, run_cli, write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ends(n_epochs: int, cycle_ends: list[int]) -> list[bool]:
    return [epoch in cycle_ends for epoch in range(n_epochs)]


# Short cycles: cycle_len 1, cycle_mult 1 -> every epoch ends a cycle; the loss creeps down.
SHORT = ([0.60, 0.55, 0.52, 0.50, 0.49, 0.48, 0.47, 0.46], ends(8, list(range(8))))
# Long cycles: cycle_len 4, n_cycles 2 -> ends at epochs 3 and 7; awful mid-cycle, best at the end.
LONG = ([0.90, 0.80, 0.70, 0.45, 0.90, 0.80, 0.60, 0.30], ends(8, [3, 7]))


class Spy(optuna.pruners.BasePruner):
    """Delegates to a real pruner; remembers the step of every decision, per trial."""

    def __init__(self, pruner: optuna.pruners.BasePruner):
        self.pruner, self.asked = pruner, {}

    def prune(self, study, trial) -> bool:
        self.asked.setdefault(trial.number, []).append(trial.last_step)
        return self.pruner.prune(study, trial)


def pruner(name: str, prune_at: str = "cycle_end", startup: int = 3, warmup: int = 1):
    return make_pruner(StudySection(pruner=name, pruner_startup_trials=startup, pruner_warmup_epochs=warmup,
                                    prune_at=prune_at), max_epochs=8)   # the longest curve here


def run(curves, study_pruner, prune_at: str) -> optuna.Study:
    """One trial per curve, in order, on an in-memory study."""
    # one study name: Hyperband puts a trial in its bracket by a hash of study name and number
    study = optuna.create_study(study_name="s", pruner=study_pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    queue = list(curves)
    study.optimize(lambda trial: replay_curve(trial, *queue[trial.number], prune_at), n_trials=len(queue))
    return study


def test_judge_reports_the_best_cycle_end_loss_and_asks_only_at_cycle_ends():
    losses, flags = [0.9, 0.5, 0.7, 0.6, 0.4], [False, True, False, True, False]
    steps = [judge(losses[:n], flags[:n], "cycle_end") for n in range(1, 6)]
    # nothing before the first cycle end; then the best cycle-end loss, carried forward
    assert steps == [Step(None, False), Step(0.5, True), Step(0.5, False), Step(0.5, True), Step(0.5, False)]


def test_no_decision_at_the_last_epoch_where_pruning_saves_nothing():
    assert judge([0.9, 0.5], [True, True], "cycle_end", planned=3).ask
    assert not judge([0.9, 0.5, 0.4], [True, True, True], "cycle_end", planned=3).ask
    assert judge([0.9, 0.5, 0.4], [True, True, True], "epoch", planned=3).ask   # judged every epoch


def test_judge_per_epoch_is_the_raw_loss_every_epoch():
    assert judge([0.9, 0.7], [False, False], "epoch") == Step(0.7, True)


def test_judge_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="prune_at must be one of cycle_end, epoch, but got prune_at='sometimes'"):
        judge([0.5], [True], "sometimes")


def test_a_diverged_cycle_end_is_the_worst_not_ignored():
    assert judge([float("nan")], [True], "cycle_end").value != judge([float("nan")], [True], "cycle_end").value
    assert judge([float("nan"), 0.7], [True, True], "cycle_end").value == 0.7


def random_curves(n: int, seed: int = 0) -> list:
    """Curves of mixed schedules: every-epoch, cycle_mult 2 (ends 0, 2, 6), long (3, 7),
    frozen_then_unfrozen with cycle_len 2 (ends 0, 2, 4)."""
    rng = random.Random(seed)
    schedules = [ends(4, [0, 1, 2, 3]), ends(7, [0, 2, 6]), ends(8, [3, 7]), ends(5, [0, 2, 4])]
    curves = []
    for _ in range(n):
        flags = rng.choice(schedules)
        curves.append(([rng.uniform(0.3, 1.0) for _ in flags], flags))
    return curves


@pytest.mark.parametrize("name", [p for p in PRUNERS if p != "none"])
def test_no_decision_mid_cycle_for_any_pruner(name):
    curves = random_curves(40)
    spy = Spy(pruner(name, startup=2, warmup=0))
    study = run(curves, spy, "cycle_end")
    assert any(t.state == TrialState.PRUNED for t in study.trials), "the test needs some pruning to mean anything"
    for trial in study.trials:
        losses, flags = curves[trial.number]
        # every decision, and every epoch a trial stopped at, is one of its cycle ends
        assert all(flags[step] for step in spy.asked.get(trial.number, [])), (name, trial.number)
        assert flags[attrs_of(trial)["epochs"] - 1]
        assert attrs_of(trial)[JUDGED_ATTR] == spy.asked.get(trial.number, [])
        assert attrs_of(trial)[LOSSES_ATTR] == losses[:attrs_of(trial)["epochs"]]


@pytest.mark.parametrize("name", ["median", "percentile", "successive_halving"])
def test_a_long_cycle_trial_that_ends_best_survives_short_cycle_trials(name):
    # Judged mid-cycle at epoch 1, the long trial (0.80) loses to the short ones (0.55) and is
    # cut; judged at its cycle ends on the best-so-far curve it wins (0.45 < 0.50 at epoch 3).
    per_epoch = run([SHORT] * 3 + [LONG], pruner(name, "epoch"), "epoch")
    assert per_epoch.trials[3].state == TrialState.PRUNED
    at_cycle_ends = run([SHORT] * 3 + [LONG], pruner(name), "cycle_end")
    assert at_cycle_ends.trials[3].state == TrialState.COMPLETE
    assert at_cycle_ends.best_trial.number == 3


def test_short_cycles_are_compared_with_what_long_cycles_reached_within_the_same_epochs():
    # A short-cycle trial judged at epoch 5 meets the long trials' best-at-epoch-3 (0.45),
    # carried forward: its 0.48 loses, though the long trials' raw loss at epoch 5 is 0.80.
    study = run([LONG] * 3 + [SHORT], pruner("median"), "cycle_end")
    short = study.trials[3]
    assert short.state == TrialState.PRUNED and attrs_of(short)["epochs"] == 4
    assert attrs_of(short)[AGAINST_ATTR] == {"epoch": 3, "value": 0.50, "n_completed": 3, "median": 0.45,
                                              "best": 0.45, "worst": 0.45}


def old_objective(curve):
    """The schedule-blind objective: raw loss reported and judged every epoch."""
    def objective(trial):
        losses, _ = curve[trial.number]
        for epoch, loss in enumerate(losses):
            trial.report(loss, step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return losses[-1]
    return objective


@pytest.mark.parametrize("name", ["median", "percentile", "hyperband", "successive_halving"])
def test_prune_at_epoch_reproduces_the_old_behaviour(name):
    curves = random_curves(40, seed=1)
    old = optuna.create_study(study_name="s", pruner=pruner(name, "epoch"), sampler=optuna.samplers.RandomSampler(seed=0))
    old.optimize(old_objective(curves), n_trials=len(curves))
    new = run(curves, pruner(name, "epoch"), "epoch")
    assert [t.state for t in new.trials] == [t.state for t in old.trials]
    assert [t.intermediate_values for t in new.trials] == [t.intermediate_values for t in old.trials]
    assert any(t.state == TrialState.PRUNED for t in new.trials)


def test_a_retry_re_reports_its_saved_epochs_as_the_objective_did():
    # Epochs 0-4 re-reported without asking (epoch 3 was judged when it ran), then the run goes
    # on to its last epoch (never judged): the stored curve is the uninterrupted one's.
    losses, flags = LONG
    whole = run([LONG], optuna.pruners.NopPruner(), "cycle_end").trials[0]

    def resumed(trial):
        for epoch in range(5):
            report_epoch(trial, epoch, losses[epoch], flags[epoch], "cycle_end", ask=False)
        for epoch in range(5, 8):
            report_epoch(trial, epoch, losses[epoch], flags[epoch], "cycle_end", planned=8)
        return losses[-1]

    study = optuna.create_study()
    study.optimize(resumed, n_trials=1)
    retry = study.trials[0]
    assert retry.intermediate_values == whole.intermediate_values == {3: 0.45, 4: 0.45, 5: 0.45, 6: 0.45, 7: 0.30}
    assert attrs_of(retry)[LOSSES_ATTR] == losses
    assert JUDGED_ATTR not in attrs_of(retry) and attrs_of(whole)[JUDGED_ATTR] == [3]


def test_prune_at_defaults_to_cycle_end_and_a_bad_value_is_one_line(tmp_path):
    from search.studyfile import load_study_file

    good = write_study(tmp_path, tmp_path / "data")
    assert load_study_file(good).study.prune_at == "cycle_end"
    bad = write_study(tmp_path, tmp_path / "data", filename="bad.toml", extra={"study": 'prune_at = "sometimes"\n'})
    line = one_line_error(run_cli("study", "status", bad))
    assert str(bad) in line and "[study] prune_at must be one of cycle_end, epoch, got 'sometimes'" in line


def _done(state, value=None, **attrs):
    return optuna.trial.create_trial(state=state, value=value, params={"lr": 0.01},
                                     distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1)},
                                     intermediate_values={0: value or 0.9}, user_attrs=attrs)


def gains_study() -> optuna.Study:
    study = optuna.create_study()
    study.add_trials([
        _done(TrialState.COMPLETE, 0.50, warm_start="notebook", warm_start_stages=2, val_accuracy=0.80, epochs=7,
              planned_epochs=7, stage2_first_epoch=3),
        _done(TrialState.PRUNED, epochs=2, planned_epochs=7),
        _done(TrialState.COMPLETE, 0.40, val_accuracy=0.85, epochs=3, planned_epochs=3),
        _done(TrialState.PRUNED, epochs=1, planned_epochs=6),
    ])
    return study


def test_the_summary_compares_the_best_with_the_notebook_and_counts_epochs_saved():
    from search.views.progress import summary_table

    table = " ".join(summary_table(gains_study(), "cpu").split())
    # best 0.40 vs the notebook's 0.50: 20% lower, 5 accuracy points; 5 + 5 epochs not run
    assert ("vs notebook notebook (trial 0; both stages): val_loss 0.5000 -> best 0.4000 (20.0% lower), "
            "accuracy 0.800 -> 0.850 (+5.0 points)") in table
    assert table.count("vs notebook") == 1   # one trial is the notebook's pipeline
    assert "pruning saved 10 epochs (43% of 23): 2 trials pruned, 13 epochs run" in table


def test_best_as_json_carries_the_gains():
    from search.views.gains import search_gains

    gains = search_gains(gains_study())
    assert gains["epochs_saved"] == 10 and gains["epochs_run"] == 13
    first = gains["vs_notebook"][0]
    assert len(gains["vs_notebook"]) == 1 and first["name"] == "notebook" and first["stages"] == 2
    assert first["loss_change_pct"] == pytest.approx(-20.0)
    assert first["accuracy_change_points"] == pytest.approx(5.0)


def test_the_warm_start_tags_the_notebook_trials(tmp_path):
    from search.study.warm_start import enqueue_warm_start
    from search.studyfile import load_study_file

    study_file = load_study_file(write_study(tmp_path, tmp_path / "data", warm_start=True))
    study = optuna.create_study()
    lines = enqueue_warm_start(study, study_file)
    # one trial, the notebook's pipeline: here stage 1 only, the space has no [space.stage2]
    assert len(lines) == 1 and lines[0].startswith("warm start: notebook keeps the notebook's freeze=unfrozen cycle_len=1;")
    assert [attrs_of(t)["warm_start"] for t in study.trials] == ["notebook"]


def test_a_warm_start_trial_says_what_it_kept_and_none_is_tagged_when_nothing_fits(tmp_path):
    from search.study.warm_start import enqueue_warm_start
    from search.studyfile import load_study_file
    from search.views.gains import gains_rows, search_gains

    # batch 32, 40 px, frozen_then_unfrozen: of the notebook's stage 1, only lr and the cycles fit
    space = ('[space]\nlr = { low = 1e-4, high = 1e-2, log = true }\nbatch_size = [32]\nimage_size = [40]\n'
             'freeze = ["frozen_then_unfrozen"]\nn_cycles = [3]\ncycle_len = [1]\ncycle_mult = [2]\n')
    study_file = load_study_file(write_study(tmp_path, tmp_path / "data", warm_start=True, space=space))
    study = optuna.create_study()
    lines = enqueue_warm_start(study, study_file)
    assert "the space changed batch_size, image_size, freeze (the sampler picks them)" in lines[0]
    waiting = study.trials[0]
    assert attrs_of(waiting)["warm_start_kept"] == ["cycle_len", "cycle_mult", "lr", "n_cycles"]
    assert attrs_of(waiting)["warm_start_changed"] == ["batch_size", "freeze", "image_size"]
    rows = dict(gains_rows(study, search_gains(study))[:1])
    assert "notebook (trial 0; stage 1 only: the space has no [space.stage2]; the space's batch_size, freeze, " \
           "image_size): WAITING" in rows["vs notebook"]

    # a space none of the notebook's values fit: no trial is named after the notebook
    nothing = ('[space]\nlr = { low = 0.3, high = 0.5 }\nbatch_size = [32]\nimage_size = [40]\n'
               'freeze = ["frozen_then_unfrozen"]\nn_cycles = [1]\ncycle_len = [2]\ncycle_mult = [1]\n')
    study_file = load_study_file(write_study(tmp_path, tmp_path / "data", filename="none.toml", warm_start=True,
                                             space=nothing))
    study = optuna.create_study()
    lines = enqueue_warm_start(study, study_file)
    assert study.trials == [] and len(lines) == 1 and "skipped: none of its values" in lines[0]


def test_the_curves_picture_marks_where_a_pruned_trial_was_judged_and_against_what(tmp_path):
    from types import SimpleNamespace

    from search.views.artifacts import judging_marks, plot_curves

    losses, flags = LONG
    history = [SimpleNamespace(epoch=e, phase="unfrozen", train_loss=0.5, valid_loss=loss, accuracy=0.8,
                               cycle_end=flag, lrs=[]) for e, (loss, flag) in enumerate(zip(losses[:4], flags[:4], strict=True))]
    against = {"epoch": 3, "value": 0.45, "n_completed": 3, "median": 0.40, "best": 0.35, "worst": 0.50}
    trial = SimpleNamespace(user_attrs={"prune_at": "cycle_end", JUDGED_ATTR: [3], AGAINST_ATTR: against})
    marks = judging_marks(trial, history)
    assert marks["reported"] == [None, None, None, 0.45] and marks["judged"] == [3] and marks["against"] == against
    plain = plot_curves(history, tmp_path / "plain.png", "t").read_bytes()
    marked = plot_curves(history, tmp_path / "marked.png", "t", marks=marks).read_bytes()
    assert marked.startswith(b"\x89PNG") and marked != plain


LONG_SPACE = """[space]
lr = 0.01
batch_size = 16
image_size = 32
freeze = ["frozen", "frozen_then_unfrozen"]
n_cycles = {low = 1, high = 3}
cycle_len = [1, 2]
cycle_mult = [1, 2]
"""


def test_hyperband_spans_the_longest_run_the_space_allows(tmp_path, monkeypatch):
    # Optuna's "auto" takes the first finished trial's length, here anything from 1 to 16
    # epochs; the space's longest run is known before any trial: head 2 + 2 * (1 + 2 + 4).
    from search.studyfile import load_study_file
    from search.studyfile.space import longest_run

    made = {}

    class Recorded(optuna.pruners.HyperbandPruner):
        def __init__(self, **kwargs):
            made.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(optuna.pruners, "HyperbandPruner", Recorded)
    study_file = load_study_file(write_study(tmp_path, tmp_path / "data", space=LONG_SPACE, pruner="hyperband",
                                             extra={"train": "head_epochs = 2\n"}))
    assert longest_run(study_file.space, study_file.train.head_epochs) == 16
    assert isinstance(pruner_for(study_file), Recorded) and made["max_resource"] == 16
    without_warm_up = load_study_file(write_study(tmp_path, tmp_path / "data", filename="b.toml",
                                                  space=LONG_SPACE.replace('"frozen_then_unfrozen"', '"unfrozen"')))
    assert longest_run(without_warm_up.space, 2) == 14


@pytest.mark.parametrize("prune_at", PRUNE_AT)
@pytest.mark.parametrize("losses", [[0.6, 0.5, float("nan"), float("nan")], [0.6, float("nan")]])
def test_a_diverged_run_is_pruned_at_its_first_nan_whatever_the_pruner(prune_at, losses):
    # nan weights stay nan: the rest of the run is wasted, and a nan final loss as a FAIL with
    # no reason would tell TPE nothing about the learning rate that caused it.
    curve = (losses, [True] * len(losses))
    study = run([SHORT, curve], optuna.pruners.NopPruner(), prune_at)
    diverged = study.trials[1]
    first_nan = losses.index(next(v for v in losses if v != v))
    assert diverged.state == TrialState.PRUNED and attrs_of(diverged)[DIVERGED_ATTR] == first_nan
    assert max(diverged.intermediate_values) == first_nan and math.isnan(diverged.intermediate_values[first_nan])
    assert len(attrs_of(diverged)[LOSSES_ATTR]) == first_nan + 1   # stopped there
    assert "(diverged: val_loss nan)" in describe_trial(diverged)
    assert "diverged" not in describe_trial(study.trials[0])


def test_the_summary_says_what_trials_left_paused_have_not_spent():
    from search.views.progress import summary_table

    study = gains_study()
    # scheduler = "promote": a trial paused after its first cycle end (epoch 0) of a 7-epoch plan
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params={"lr": 0.02},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1)},
        user_attrs={"epochs": 1, "planned_epochs": 7, "paused_after_cycle": 1}))
    table = " ".join(summary_table(study, "cpu").split())
    assert ("left paused 1 trial at a cycle end, not promoted: 6 epochs of their plans unspent "
            "(20% of 30 planned in all); the next `swipr study run` may promote them") in table
    assert "pruning saved 10 epochs (42% of 24): 2 trials pruned, 14 epochs run" in table   # its epoch counts as run
    assert "left paused" not in " ".join(summary_table(gains_study(), "cpu").split())
