"""Pause and promote (`[study] scheduler = "promote"`, docs/promotion.md): a trial pauses at each
cycle end, keeps its checkpoint and continues later from it exactly; one Optuna trial per
configuration, finished once; the scheduler's rules; status shows the pause; fit replays it."""
from __future__ import annotations

import argparse
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives.judging import CYCLE_ENDS_ATTR, LOSSES_ATTR
from objectives.pausing import PAUSED_ATTR, PROMOTED_ATTR, paused_after
from objectives.record import record_of
from objectives.trial_attrs import attrs_of
from search.running.promotion import Turn, next_turn, promotable, score
from search.running.worker import run_worker
from search.study.data_record import prepare_study_data
from search.study.open import open_study
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from tests.studykit import SPACE, write_study

NESTED = SPACE.replace("n_cycles = [1]", "n_cycles = [1, 2, 3]")   # 1-epoch cycles: ends at epochs 0, 1, 2
PROMOTE = {"study": 'scheduler = "promote"\n'}


class Kept:
    """An objective hook keeping each finished run's weights and validation predictions."""

    def __init__(self):
        self.runs: dict[int, dict] = {}

    def on_result(self, trial, result) -> None:
        self.runs[trial.number] = {"weights": {k: v.clone() for k, v in result.model.state_dict().items()},
                                   "probs": result.valid_probs.copy(), "epochs": len(result.history)}


def _study(tmp_path, data_dir, name: str, space: str = NESTED, **kwargs):
    folder = tmp_path / name
    folder.mkdir()
    path = write_study(folder, data_dir, space=space, pruner="none", **kwargs)
    study_file = load_study_file(path)
    open_study(study_file, create=True)
    return path, study_file, prepare_study_data(study_file)


def _trials(study_file) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study_file.study.name, storage=study_file.study.storage).trials


def test_a_trial_paused_after_cycle_1_and_promoted_twice_is_the_uninterrupted_run_bit_for_bit(tmp_path, data_dir):
    _, whole_file, dataset = _study(tmp_path, data_dir, "whole")
    whole_kept = Kept()
    run_worker(whole_file, dataset, n_trials=1, device="cpu", hooks=[whole_kept])
    _, paused_file, dataset = _study(tmp_path, data_dir, "paused", extra=PROMOTE)
    paused_kept, pauses = Kept(), []
    # One configuration: it pauses after cycle 1; with no new configurations left the best of
    # each rung goes on, so it is promoted twice and finishes its 3 cycles.
    run_worker(paused_file, dataset, n_trials=1, device="cpu", hooks=[paused_kept],
               callbacks=[lambda study, trial: pauses.append(trial.state)])
    [whole], [paused] = _trials(whole_file), _trials(paused_file)
    assert paused.params == whole.params and paused.state == whole.state == TrialState.COMPLETE
    assert pauses == [TrialState.COMPLETE]   # study callbacks see it finish once, not at its pauses
    ours, theirs = attrs_of(paused), attrs_of(whole)
    assert ours[PROMOTED_ATTR] == 2 and ours[PAUSED_ATTR] is None
    assert ours[LOSSES_ATTR] == theirs[LOSSES_ATTR] and len(ours[LOSSES_ATTR]) == 3
    assert paused.intermediate_values == whole.intermediate_values
    assert sorted(paused.intermediate_values) == ours[CYCLE_ENDS_ATTR] == [0, 1, 2]
    assert paused.value == whole.value == min(ours[LOSSES_ATTR])
    assert record_of(paused).result == record_of(whole).result
    assert ours["epochs"] == 3 and paused_kept.runs[0]["epochs"] == 3   # each epoch trained once
    a, b = paused_kept.runs[0], whole_kept.runs[0]
    assert (a["probs"] == b["probs"]).all()
    assert all(torch.equal(a["weights"][key], b["weights"][key]) for key in b["weights"])


def test_a_two_stage_trial_pauses_in_both_stages_and_equals_the_uninterrupted_run(tmp_path, data_dir):
    from tests.studykit import space_toml

    # Stage 1: 2 one-epoch cycles at 32 px (epochs 0, 1); stage 2 at 40 px, 0 to 2 cycles (epochs 2, 3).
    staged = space_toml(n_cycles="2", batch_size="[16]") + \
        '[space.stage2]\nimage_size = 40\nfreeze = ["frozen"]\nlr = 5e-3\nn_cycles = [0, 1, 2]\n'
    _, whole_file, dataset = _study(tmp_path, data_dir, "whole", space=staged)
    whole_kept = Kept()
    run_worker(whole_file, dataset, n_trials=1, device="cpu", hooks=[whole_kept])
    _, paused_file, dataset = _study(tmp_path, data_dir, "paused", space=staged, extra=PROMOTE)
    paused_kept = Kept()
    run_worker(paused_file, dataset, n_trials=1, device="cpu", hooks=[paused_kept])
    [whole], [paused] = _trials(whole_file), _trials(paused_file)
    assert paused.state == whole.state == TrialState.COMPLETE and paused.params == whole.params
    assert attrs_of(paused)[PROMOTED_ATTR] == 3   # after epochs 0, 1 (stage 1's end) and 2 (in stage 2)
    assert attrs_of(paused)[LOSSES_ATTR] == attrs_of(whole)[LOSSES_ATTR] and len(attrs_of(paused)[LOSSES_ATTR]) == 4
    assert paused.value == whole.value and record_of(paused).result == record_of(whole).result
    a, b = paused_kept.runs[0], whole_kept.runs[0]
    assert (a["probs"] == b["probs"]).all()
    assert all(torch.equal(a["weights"][key], b["weights"][key]) for key in b["weights"])


def test_a_run_stopped_with_a_trial_paused_leaves_it_waiting_and_the_next_run_continues_it(
        tmp_path, data_dir, capsys):
    from search.commands.study import status

    path, study_file, dataset = _study(tmp_path, data_dir, "stopped", extra=PROMOTE)
    run_worker(study_file, dataset, n_trials=1, device="cpu", timeout=1e-3)   # one turn, then time is up
    [trial] = _trials(study_file)
    assert trial.state == TrialState.WAITING and paused_after(trial) == 1 and trial.value is None
    assert sorted(trial.intermediate_values) == [0] and record_of(trial).result is not None
    capsys.readouterr()
    status(argparse.Namespace(study_file=path, json=False))
    out = capsys.readouterr().out
    assert "1 paused" in out and "PAUSED" in out and "paused after cycle 1" in out
    run_worker(study_file, dataset, n_trials=0, device="cpu")   # no new configurations: only promotions
    [trial] = _trials(study_file)
    assert trial.state == TrialState.COMPLETE and attrs_of(trial)[PROMOTED_ATTR] == 2
    assert attrs_of(trial)["epochs"] == 3 and not math.isnan(trial.value)


def test_a_promoted_trial_killed_mid_cycle_is_retried_from_its_checkpoint_exactly(tmp_path, data_dir, monkeypatch):
    import objectives.finetune as finetune

    space = NESTED.replace("cycle_len = [1]", "cycle_len = [2]")   # cycle ends at epochs 1, 3, 5
    _, whole_file, dataset = _study(tmp_path, data_dir, "whole", space=space)
    run_worker(whole_file, dataset, n_trials=1, device="cpu")
    _, study_file, dataset = _study(tmp_path, data_dir, "killed", space=space, extra=PROMOTE)
    real = finetune.train

    def killed_at_epoch_2(*args, on_epoch, **kwargs):   # inside its first promotion, mid-cycle
        def report(record):
            on_epoch(record)
            if record.epoch == 2:
                raise KeyboardInterrupt
        return real(*args, on_epoch=report, **kwargs)

    monkeypatch.setattr(finetune, "train", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_worker(study_file, dataset, n_trials=1, device="cpu")
    monkeypatch.setattr(finetune, "train", real)
    run_worker(study_file, dataset, n_trials=0, device="cpu")   # the retry first, then its promotions
    [whole], (first, retry) = _trials(whole_file), _trials(study_file)
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert attrs_of(retry)["resumed_from_epoch"] == 3 and attrs_of(retry)["epochs"] == 6
    assert attrs_of(retry)[LOSSES_ATTR] == attrs_of(whole)[LOSSES_ATTR] and retry.value == whole.value


def test_fit_replays_a_promoted_trials_best_schedule_exactly(tmp_path, data_dir):
    from search.fit.replay import fit

    path, study_file, dataset = _study(tmp_path, data_dir, "fit", extra=PROMOTE)
    run_worker(study_file, dataset, n_trials=1, device="cpu")
    [trial] = _trials(study_file)
    assert attrs_of(trial)[PROMOTED_ATTR] == 2
    outcome = fit(path, tmp_path / "bundle", echo=lambda line: None)
    assert outcome.trial_number == 0 and outcome.manifest["epochs"] == attrs_of(trial)["best_n_cycles"]
    assert outcome.replay_value == trial.value and outcome.matched


def test_two_workers_pause_and_promote_and_finish_each_configuration_once(tmp_path, data_dir):
    from tests.studykit import swipr

    path = write_study(tmp_path, data_dir, space=NESTED, pruner="none", extra=PROMOTE)
    result = swipr("study", "run", path, "--workers", "2", "--n-trials", "2")
    assert result.returncode == 0, result.stderr
    trials = _trials(load_study_file(path))
    # Two configurations, one cycle each; then, with none left to start, the better one goes on
    # to its 3rd cycle and the other stays paused: no third trial, none finished twice.
    assert len(trials) == 2 and result.stdout.count("PAUSED after cycle") >= 3
    assert "1 complete, 0 pruned, 0 failed, 1 paused" in result.stdout
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    waiting = [t for t in trials if paused_after(t) == 1]
    assert len(done) == 1 and len(waiting) == 1 and attrs_of(done[0])[PROMOTED_ATTR] == 2
    assert attrs_of(done[0])[LOSSES_ATTR][0] <= attrs_of(waiting[0])[LOSSES_ATTR][0]
    assert attrs_of(done[0])["epochs"] == 3


# --- the scheduler's rules, on trials made by hand -------------------------------------------

def _trial(number: int, losses: list[float], state=TrialState.WAITING, paused: bool = True):
    attrs = {LOSSES_ATTR: losses, CYCLE_ENDS_ATTR: list(range(len(losses)))}
    if paused and state == TrialState.WAITING:
        attrs[PAUSED_ATTR] = len(losses)
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0, system_attrs={
        f"swipr:{key}": value for key, value in attrs.items()})
    trial.number, trial.state = number, state
    return trial


def test_asha_promotes_the_top_third_of_a_rung_and_otherwise_starts_a_new_configuration():
    rung = [_trial(n, [loss]) for n, loss in enumerate([0.5, 0.3, 0.9, 0.4, 0.7, 0.8])]
    assert promotable(rung[:2], eta=3, rule="asha") == []   # 2 // 3: nobody yet
    assert next_turn(rung[:2], 3, "asha", may_start_new=True) == Turn("new")
    assert promotable(rung, eta=3, rule="asha") == [1, 3]   # the best two of six
    assert next_turn(rung, 3, "asha", may_start_new=True) == Turn("promote", 1)
    # A higher rung goes first; one already promoted from rung 1 counts there, and is not paused.
    # Rung 1 of nine: its top three are 1 and 6 (gone on) and 3; rung 2's two promote nobody.
    higher = [*rung[:1], _trial(1, [0.3, 0.2]), *rung[2:], _trial(6, [0.35, 0.1], TrialState.COMPLETE),
              _trial(7, [0.95]), _trial(8, [0.99])]
    assert promotable(higher, eta=3, rule="asha") == [3]
    assert promotable([_trial(1, [0.3, 0.2]), _trial(6, [0.35, 0.1], TrialState.COMPLETE)], 2, "asha") == []


def test_with_no_configurations_left_a_rungs_best_goes_on_and_then_the_run_ends():
    two = [_trial(0, [0.5]), _trial(1, [0.3])]
    assert next_turn(two, 3, "asha", may_start_new=False) == Turn("promote", 1)
    done = [_trial(0, [0.5]), _trial(1, [0.3, 0.2, 0.1], TrialState.COMPLETE)]
    assert next_turn(done, 3, "asha", may_start_new=False) is None


def test_queued_trials_and_retries_go_before_promotions():
    rung = [_trial(n, [loss]) for n, loss in enumerate([0.5, 0.3, 0.9])]
    queued = _trial(3, [], paused=False)
    assert next_turn([*rung, queued], 3, "asha", may_start_new=True) == Turn("queued")
    assert next_turn([*rung, queued], 3, "asha", may_start_new=False) == Turn("promote", 1)
    queued.system_attrs["failed_trial"] = 0   # a retry resumes paid-for epochs, budget or not
    assert next_turn([*rung, queued], 3, "asha", may_start_new=False) == Turn("retry")
    # A trial handed to a worker that has not taken it yet is no one else's turn (nor is it
    # anyone else's place in the rung's top third).
    assert next_turn(rung, 3, "asha", may_start_new=False) == Turn("promote", 1)
    assert next_turn(rung, 3, "asha", may_start_new=False, busy=frozenset({1})) is None


def test_the_curve_rule_ranks_by_the_extrapolated_loss():
    # At rung 2, trial 0 is ahead on its loss, trial 1 on its slope; rung 4 has been reached.
    trials = [_trial(0, [0.5, 0.40]), _trial(1, [0.8, 0.45]), _trial(2, [0.6, 0.5, 0.45, 0.44], TrialState.COMPLETE)]
    assert score([0.5, 0.40], 2, "curve", 4) == pytest.approx(0.2)
    assert score([0.8, 0.45], 2, "curve", 4) == pytest.approx(-0.25)
    assert score([0.5, 0.6], 2, "curve", 4) == 0.6   # a rising curve is not carried on
    assert promotable(trials, eta=3, rule="asha") == [0]
    assert promotable(trials, eta=3, rule="curve") == [1]


@pytest.mark.parametrize("key, value, message", [
    ("scheduler", '"asha"', "scheduler must be one of pruner, promote, got 'asha'"),
    ("promotion", '"best"', "promotion must be one of asha, curve, got 'best'"),
    ("promotion_eta", "1", "promotion_eta must be 2 or more, got 1"),
])
def test_a_bad_scheduler_key_is_one_line(tmp_path, data_dir, key, value, message):
    path = write_study(tmp_path, data_dir, extra={"study": f"{key} = {value}\n"})
    with pytest.raises(SwiprError, match=message):
        load_study_file(path)


def test_promote_on_dask_is_refused_in_one_line_for_now(tmp_path, data_dir):
    from tests.studykit import one_line_error, run_cli

    path = write_study(tmp_path, data_dir, extra=PROMOTE)
    line = one_line_error(run_cli("study", "run", path, "--dask", "tcp://127.0.0.1:1"))
    assert 'scheduler = "promote" does not run on Dask yet' in line


# --- the sampler under promote: paused trials seen as stopped at a cycle end ----------------

GRID = {"a": optuna.distributions.CategoricalDistribution([1, 2, 3]),
        "b": optuna.distributions.CategoricalDistribution(["x", "y"])}


def _paused_study(losses: list[float], distinct: bool = False) -> optuna.Study:
    """A study of one trial per loss, each paused after its first cycle end (epoch 0) with that loss."""
    from objectives.pausing import TrialPaused, pause
    from objectives.trial_attrs import set_attr
    from search.study.samplers import make_sampler

    study = optuna.create_study(sampler=make_sampler("tpe", 3, distinct))
    for loss in losses:
        trial = _new(study)
        trial.report(loss, 0)
        set_attr(trial, LOSSES_ATTR, [loss])
        set_attr(trial, CYCLE_ENDS_ATTR, [0])
        pause(trial, TrialPaused(1, 1))
    return study


def _new(study: optuna.Study) -> optuna.Trial:
    """A new configuration's trial (a "new" turn: Optuna samples, the queue's paused trials stay)."""
    from objectives.optuna_compat import order_queue
    from search.running.promotion import queue_for

    order_queue(study, queue_for(Turn("new")))
    trial = study.ask()
    for name, distribution in GRID.items():
        trial.suggest_categorical(name, distribution.choices)
    return trial


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    from objectives.optuna_compat import stored_trial

    return stored_trial(trial)


def test_tpe_sees_a_paused_trial_as_pruned_at_its_cycle_end_and_the_study_stays_as_stored():
    from objectives.optuna_compat import set_study_system_attr
    from search.study.samplers import LEARNED_SYSTEM_ATTR

    study = _paused_study([0.4, 0.2])
    # [study] learn_from's three: one fades for each trial of the study's own seen (paused ones too)
    set_study_system_attr(study, LEARNED_SYSTEM_ATTR, {"observations": [
        {"study": "old", "trial": i, "params": {"a": 3}, "q": i / 2} for i in range(3)]})
    stored = study.get_trials()
    drawn = _new(study)
    view = study.sampler.view(study, _frozen(drawn), "a", GRID["a"])
    seen = view.get_trials()
    # the earlier study's observation first (COMPLETE), then the paused trials, PRUNED, values kept
    assert [t.state for t in seen] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert seen[0].params == {"a": 3}
    assert [(t.params, t.intermediate_values) for t in seen[1:]] == [(t.params, {0: v}) for t, v in
                                                                     zip(stored, [0.4, 0.2], strict=True)]
    # nothing written to the stored study: its trials are still WAITING, paused, as they were
    after = study.get_trials()[:2]
    assert [(t.state, t.intermediate_values, paused_after(t)) for t in after] == \
        [(TrialState.WAITING, {0: 0.4}, 1), (TrialState.WAITING, {0: 0.2}, 1)]
    assert len(study.get_trials()) == 3


def test_without_paused_trials_or_observations_tpe_draws_on_the_study_itself():
    from search.study.samplers import make_sampler

    study = optuna.create_study(sampler=make_sampler("tpe", 3))
    study.add_trial(optuna.trial.create_trial(params={"a": 1}, distributions={"a": GRID["a"]}, value=0.5))
    drawn = study.ask()
    assert study.sampler.view(study, _frozen(drawn), "a", GRID["a"]) is None


def test_a_promote_study_draws_each_configuration_of_a_discrete_space_once_then_starts_none():
    from search.study.samplers import configurations_left

    study = _paused_study([0.5, 0.1, 0.3, 0.2, 0.4, 0.6], distinct=True)   # 6 = every configuration of GRID
    held = [(t.params["a"], t.params["b"]) for t in study.get_trials()]
    assert sorted(held) == sorted((a, b) for a in (1, 2, 3) for b in ("x", "y")), held
    assert not configurations_left(study.get_trials())
    # the scheduler starts no new configuration: it promotes (budget left or not) and ends
    assert next_turn(study.get_trials(), 3, "asha", may_start_new=True) == Turn("promote", 1)
    assert configurations_left(study.get_trials()[:5])
