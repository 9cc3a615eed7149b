"""Two-stage trials on the search side (docs/stages.md): [space.stage2] read
and refused in one line, stage-2 params named stage2_<key> in both n_cycles modes, a study that
runs both stages, prunes at a stage-2 cycle end, resumes a killed trial in stage 2, and `swipr
fit` replaying a two-stage trial (or stage 1 alone, where that was its best schedule) exactly."""
from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from objectives.finetune import FinetuneObjective, config_from_trial, replay_config
from objectives.oom import OutOfMemoryGuard, shape_key
from objectives.space import drawn
from objectives.trial_attrs import attrs_of
from search.study.space_record import check_space, recorded_space
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from swipr_core.train.model import ModelSpec
from swipr_core.train.run import train
from tests.studykit import kill_then_retry, one_line_error, run_cli, space_toml, write_study

TINY = ModelSpec(arch="test_resnet", pretrained=False)
# Stage 1: 2 one-epoch cycles at 32 px (epochs 0, 1); stage 2 from its weights at 40 px, its own
# freeze and lr, and n_cycles a budget of 0 (stage 1's end), 1 or 2 cycles (epochs 2, 3).
STAGE1 = space_toml(n_cycles="2", batch_size="[16]")
STAGE2 = '[space.stage2]\nimage_size = 40\nfreeze = ["frozen"]\nlr = { low = 1e-3, high = 1e-2, log = true }\n' \
         'n_cycles = [0, 1, 2]\n'
STAGED = STAGE1 + STAGE2


class PruneFrom(optuna.pruners.BasePruner):
    """Prunes every trial asked at or after `step` (the judged epoch)."""

    def __init__(self, step: int):
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


def _study(tmp_path, data_dir, space: str = STAGED, **kwargs):
    """(study file path, StudyFile, a fresh study in its storage, its dataset)."""
    from search.study.data_record import prepare_study_data

    path = write_study(tmp_path, data_dir, space=space, **kwargs)
    study_file = load_study_file(path)
    study = optuna.create_study(study_name=study_file.study.name, storage=study_file.study.storage)
    return path, study_file, study, prepare_study_data(study_file)


# --- the study file ---------------------------------------------------------------------------

def test_a_stage2_table_holds_the_keys_it_gives_as_stage2_params(tmp_path, data_dir):
    space = load_study_file(write_study(tmp_path, data_dir, space=STAGED)).space
    assert {name for name in space if name.startswith("stage2_")} == \
        {"stage2_image_size", "stage2_freeze", "stage2_lr", "stage2_n_cycles"}
    assert space["stage2_n_cycles"].values == (0, 1, 2) and space["stage2_image_size"].values == (40,)
    assert space["image_size"].values == (32,)   # stage 1's as it was
    # No table: one stage.
    assert not any(name.startswith("stage2_") for name in load_study_file(write_study(tmp_path, data_dir)).space)


@pytest.mark.parametrize("table, message", [
    ("colour = 1\n", "unknown key 'colour' in [space.stage2]"),
    ('image_size = "big"\n', "[space.stage2] image_size value must be an integer, got 'big'"),
    ("batch_size = [1, 16]\n", "[space.stage2] batch_size must be 2 or more"),
    ('freeze = ["thawed"]\n', "[space.stage2] freeze must be one of frozen, unfrozen, frozen_then_unfrozen"),
    ("freeze = { low = 1, high = 2 }\n", "[space.stage2] freeze takes choices"),
    ("n_cycles = [0]\n", "[space.stage2] n_cycles offers only 0"),
    ("n_cycles = -1\n", "[space.stage2] n_cycles must be 0 (skip stage 2) or more, got -1"),
    ("n_cycles = { low = 0, high = 2, log = true }\n", "[space.stage2] n_cycles can't be on a log scale from 0"),
    ("lr = { low = 1e-2, high = 1e-3 }\n", "[space.stage2] lr low (0.01) is above high (0.001)"),
    ('lr = { finder = "valley" }\n', "[space.stage2] lr can't come from the finder"),
    ("image_size = 48\n", "[space.stage2] image_size goes up to 48, above [data] cache_px (40)"),
    ("cycle_mult = 2\nn_cycles = 10\n", "[space] and [space.stage2] allow a schedule too long: stage 2: "),
    ("", "[space.stage2] is empty"),
])
def test_a_bad_stage2_table_is_one_line_naming_the_key(tmp_path, data_dir, table, message):
    path = write_study(tmp_path, data_dir, space=STAGE1 + "[space.stage2]\n" + table)
    line = one_line_error(run_cli("study", "run", path))
    assert message in line and str(path) in line


def test_only_stage_2_may_offer_0_cycles(tmp_path, data_dir):
    line = one_line_error(run_cli("study", "run", write_study(tmp_path, data_dir, space=space_toml(n_cycles="[0, 1]"))))
    assert "[space] n_cycles must be 1 or more, got 0" in line
    space = load_study_file(write_study(tmp_path, data_dir, space=STAGE1 + "[space.stage2]\nn_cycles = [0, 1]\n")).space
    assert space["stage2_n_cycles"].values == (0, 1)


def test_the_longest_run_spans_both_stages(tmp_path, data_dir):
    from search.studyfile.space import longest_run

    # stage 1: 999 one-epoch cycles; stage 2's 2 more pass the cap only together
    space = space_toml(n_cycles="999") + "[space.stage2]\nn_cycles = [0, 2]\n"
    line = one_line_error(run_cli("study", "run", write_study(tmp_path, data_dir, space=space)))
    assert "1001" in line and "at most 1000" in line
    assert longest_run(load_study_file(write_study(tmp_path, data_dir, space=STAGED)).space, 1) == 4


def test_the_recorded_space_holds_stage_2_and_a_change_optuna_cant_mix_is_refused(tmp_path, data_dir):
    study_file = load_study_file(write_study(tmp_path, data_dir, space=STAGED))
    study = optuna.create_study()
    assert check_space(study, study_file) == []
    assert (recorded_space(study) or {})["stage2_freeze"]["attributes"]["choices"] == ["frozen"]
    study.add_trial(optuna.trial.create_trial(value=0.5))
    other = load_study_file(write_study(tmp_path, data_dir, space=STAGED.replace('["frozen"]', '["unfrozen"]')))
    with pytest.raises(SwiprError, match=r"\[space.stage2\] freeze is \[\"unfrozen\"\], but study .* ran on "
                                         r"\[\"frozen\"\].*put \[space.stage2\] freeze back"):
        check_space(study, other)
    # Two stages where the study's trials ran one (or the other way) is another pipeline: refused.
    with pytest.raises(SwiprError, match=r"has no \[space.stage2\] table, but study .* ran its trials with two"):
        check_space(study, load_study_file(write_study(tmp_path, data_dir, space=STAGE1)))


def test_the_docs_example_is_a_valid_space(tmp_path, data_dir):
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "stages.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    text = write_study(tmp_path, data_dir).read_text().replace("cache_px = 40", "cache_px = 229")
    path = tmp_path / "notebook.toml"
    path.write_text(text.split("[space]")[0] + example)
    space = load_study_file(path).space
    assert space["image_size"].values == (224,) and space["stage2_image_size"].values == (229,)
    assert space["stage2_n_cycles"].values == (0, 1, 2, 3)


# --- a trial's params -------------------------------------------------------------------------

def test_budget_mode_plans_stage_2s_largest_and_draws_stage_1s_n_cycles(tmp_path, data_dir):
    space = load_study_file(write_study(tmp_path, data_dir, space=STAGE1 + STAGE2.replace("[0, 1, 2]", "[0, 2]")
                                        .replace("n_cycles", "cycle_len = [1, 2]\nn_cycles"))).space
    trial = optuna.create_study().ask()
    config = config_from_trial(trial, space, head_epochs=1, seed=7, n_cycles_mode="budget")
    assert set(trial.params) == {"lr", "batch_size", "image_size", "freeze", "n_cycles", "cycle_len", "cycle_mult",
                                 "stage2_lr", "stage2_image_size", "stage2_freeze", "stage2_cycle_len"}
    assert config.stage2 is not None and config.finish_at == (0, 2) and config.stage2.n_cycles == 2
    assert (config.stage2.image_size, config.stage2.freeze, config.stage2.lr) == \
        (40, "frozen", trial.params["stage2_lr"])
    # keys stage 2 leaves out keep the trial's stage-1 values, not drawn again
    assert (config.stage2.batch_size, config.stage2.cycle_mult) == (config.batch_size, config.cycle_mult)
    assert "stage2_n_cycles" not in drawn(space, "budget") and "n_cycles" in drawn(space, "budget")


def test_sampled_mode_draws_stage2_n_cycles_and_a_0_draws_no_other_stage2_param(tmp_path, data_dir):
    space = load_study_file(write_study(tmp_path, data_dir, space=STAGED)).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        config = config_from_trial(trial, space, head_epochs=1, seed=0, n_cycles_mode="sampled")
        k = trial.params["stage2_n_cycles"]
        seen.add(k)
        stage2_params = {name for name in trial.params if name.startswith("stage2_")}
        if k == 0:
            assert config.stage2 is None and stage2_params == {"stage2_n_cycles"}
        else:
            assert config.stage2.n_cycles == k and config.finish_at == ()
            assert stage2_params == {"stage2_n_cycles", "stage2_lr", "stage2_image_size", "stage2_freeze"}
        study.tell(trial, 0.5)
    assert seen == {0, 1, 2}


class Submitted:
    """A stand-in for a Dask client: keeps each task the driver submits (nothing runs)."""

    def __init__(self):
        self.tasks = []

    def submit(self, function, task, **options):
        self.tasks.append(task)
        return object()


def test_the_dask_driver_submits_trials_with_stage_2s_params_fixed(tmp_path, data_dir):
    from search.running.dask_driver import Driver

    path = write_study(tmp_path, data_dir, space=STAGED, extra={"study": 'n_cycles = "sampled"\n'})
    study_file = load_study_file(path)
    study = optuna.create_study(study_name=study_file.study.name, storage=study_file.study.storage,
                                sampler=optuna.samplers.RandomSampler(seed=2))
    driver = Driver(Submitted(), study, study_file, "unused", "cpu")
    for _ in range(8):
        driver.submit()
    trials = study.get_trials()
    assert len(trials) == len(driver.client.tasks) == 8
    skipped = [t for t in trials if t.params["stage2_n_cycles"] == 0]
    assert skipped and len(skipped) < 8   # both kinds drawn
    for trial in trials:
        # stage 2's other params are drawn where the trial reaches stage 2: the driver's sampler
        # drew them, kept as fixed params that the task's suggest calls get back
        assert {name for name in trial.params if name.startswith("stage2_")} == {"stage2_n_cycles"}
        fixed = trial.system_attrs.get("fixed_params", {})
        assert set(fixed) == (set() if trial in skipped else {"stage2_lr", "stage2_image_size", "stage2_freeze"})
        if fixed:
            task = optuna.trial.FixedTrial({**trial.params, **fixed})
            config = config_from_trial(task, study_file.space, head_epochs=1, seed=0, n_cycles_mode="sampled")
            assert config.stage2.lr == fixed["stage2_lr"]


def test_a_stage_2_shape_that_ran_out_of_memory_refuses_stage_2(tmp_path, data_dir):
    # Stage 2's shape is known once the run reaches it: refused there, the trial keeps stage 1's
    # end (a finished schedule: the budget offers 0) and trains nothing at stage 2's shape.
    _, study_file, study, dataset = _study(tmp_path, data_dir, pruner="none")
    study.set_user_attr(shape_key("frozen", 16, 40), 0)   # stage 2's shape, not stage 1's (unfrozen, 32 px)
    objective = FinetuneObjective(dataset, study_file.space, TINY, device="cpu")
    study.optimize(OutOfMemoryGuard(objective, study_file.space, "budget"), n_trials=1)
    [trial] = study.trials
    assert trial.state == TrialState.COMPLETE and attrs_of(trial)["epochs"] == 2
    assert "image_size=40" in attrs_of(trial)["refused"]
    assert trial.value == attrs_of(trial)["val_loss_by_epoch"][1]


# --- a study that runs both stages ------------------------------------------------------------

@pytest.fixture(scope="module")
def staged_study(tmp_path_factory, data_dir):
    """Two unpruned trials of the two-stage space through `swipr study run`."""
    folder = tmp_path_factory.mktemp("staged")
    path = write_study(folder, data_dir, space=STAGED, pruner="none")
    result = run_cli("study", "run", path, "--n-trials", "2")
    assert result.returncode == 0, result.stderr
    return path, result.stdout


def _trials(path):
    from search.study.open import open_study

    return open_study(load_study_file(path), create=False).get_trials()


def test_a_two_stage_study_runs_both_stages_on_one_epoch_counter(staged_study):
    path, _ = staged_study
    trials = _trials(path)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        attrs = attrs_of(trial)
        assert {"stage2_lr", "stage2_image_size", "stage2_freeze"} <= set(trial.params)
        assert "stage2_n_cycles" not in trial.params and trial.params["n_cycles"] == 2   # budget: stage 2's
        assert attrs["planned_epochs"] == attrs["epochs"] == 4 and attrs["stage2_first_epoch"] == 2
        assert len(attrs["val_loss_by_epoch"]) == 4 and attrs["cycle_end_epochs"] == [0, 1, 2, 3]
        # stage 1's end (0 cycles of stage 2) and each stage-2 cycle end are finished schedules
        assert attrs["finished_schedules"] == [[1, 2], [2, 1], [3, 2]]
        assert attrs["n_cycles_budget"] == 2 and attrs["finish_at"] == [0, 1, 2]
        best = attrs["best_cycle_end_epoch"]
        assert attrs["best_stage"] == (2 if best >= 2 else 1)
        assert trial.value == attrs["val_loss_by_epoch"][best] == min(attrs["val_loss_by_epoch"][1:])


def test_fit_replays_a_two_stage_trial_exactly_at_stage_2s_size(staged_study, tmp_path):
    from search.fit.replay import fit

    path, _ = staged_study
    best = min(_trials(path), key=lambda t: t.value)
    expected = replay_config(best, 1)
    lines: list[str] = []
    outcome = fit(path, tmp_path / "bundle", echo=lines.append)
    assert outcome.trial_number == best.number
    assert outcome.replay_value == best.value and outcome.matched
    assert outcome.manifest["epochs"] == attrs_of(best)["best_cycle_end_epoch"] + 1 == expected.epochs
    assert outcome.manifest["image_size"] == (40 if expected.stage2 is not None else 32)
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["image_size"] == \
        expected.final_image_size
    # A trial whose record doesn't match its plan is not replayed as some other run.
    for changed in ({"best_cycle_end_epoch": 0}, {"best_stage": 3 - attrs_of(best)["best_stage"]}):
        odd = optuna.trial.create_trial(params=best.params, distributions=best.distributions, value=best.value,
                                        user_attrs={**attrs_of(best), **changed})
        with pytest.raises(SwiprError, match="can't replay it"):
            replay_config(odd, 1)


# --- pruning, resuming --------------------------------------------------------------------------

def test_pruned_at_a_stage_2_cycle_end_and_a_cut_after_a_finished_schedule_stays_complete(tmp_path, data_dir):
    # stage 2 of one length (2 cycles): its first cycle end (epoch 2) finishes no schedule
    path, study_file, study, dataset = _study(tmp_path, data_dir, STAGE1 + STAGE2.replace("[0, 1, 2]", "2"))
    study.pruner = PruneFrom(2)
    study.optimize(FinetuneObjective(dataset, study_file.space, TINY, device="cpu"), n_trials=1)
    [pruned] = study.trials
    assert pruned.state == TrialState.PRUNED and attrs_of(pruned)["judged_epochs"] == [0, 1, 2]
    assert attrs_of(pruned)["epochs"] == 3 and attrs_of(pruned)["stage2_first_epoch"] == 2
    # budget 0, 1, 2: stage 1's end (epoch 1) and stage 2's 1st cycle end (epoch 2) are finished
    # schedules, so a cut at epoch 2 keeps the best of them: COMPLETE with its value
    (tmp_path / "b").mkdir()
    path, study_file, study, dataset = _study(tmp_path / "b", data_dir, STAGED)
    study.pruner = PruneFrom(2)
    study.optimize(FinetuneObjective(dataset, study_file.space, TINY, device="cpu"), n_trials=1)
    [cut] = study.trials
    losses = attrs_of(cut)["val_loss_by_epoch"]
    assert cut.state == TrialState.COMPLETE and attrs_of(cut)["cut_after_epoch"] == 2 and len(losses) == 3
    assert cut.value == min(losses[1:3]) == attrs_of(cut)["best_cycle_end_loss"]
    assert attrs_of(cut)["best_stage"] == (1 if attrs_of(cut)["best_cycle_end_epoch"] == 1 else 2)


def test_a_killed_trial_resumes_in_stage_2_from_its_checkpoint(tmp_path, data_dir, monkeypatch):
    path, study_file, study, dataset = _study(tmp_path, data_dir, pruner="none")
    resumed_at = []
    kill_then_retry(monkeypatch, study_file, dataset, after_epoch=2,   # stage 2's first epoch
                    on_retry_epoch=lambda record: resumed_at.append(record.epoch))
    first, retry = study.trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert attrs_of(retry)["resumed_from_epoch"] == 3 and resumed_at == [3]   # only stage 2's last epoch trained
    assert retry.params == first.params and "stage2_lr" in retry.params
    losses = attrs_of(retry)["val_loss_by_epoch"]
    assert losses[:3] == attrs_of(first)["val_loss_by_epoch"] and len(losses) == 4
    assert retry.value == min(losses[1:]) and attrs_of(retry)["best_stage"] in (1, 2)
    # its record's result is its best finished schedule, whether that was before the kill or after
    from objectives.record import record_of

    result = record_of(retry).result
    assert result.val_loss == retry.value and losses[result.epoch] == retry.value and result.roc_auc is not None
    # the resumed run is the uninterrupted one: the trial's whole plan, run again, gives the same numbers
    planned = config_from_trial(optuna.trial.FixedTrial(retry.params), study_file.space, head_epochs=1,
                                seed=attrs_of(retry)["seed"])
    assert planned.stage2 is not None and planned.epochs == 4
    assert [r.valid_loss for r in train(dataset, planned, TINY, device="cpu").history] == losses


def test_a_trial_whose_best_is_stage_1s_end_replays_without_stage_2(tmp_path, data_dir):
    from search.fit.replay import fit

    # stage 2 at an lr no model survives: its cycle end is worse than stage 1's end (0 cycles)
    space = STAGE1.replace("lr = { low = 1e-3, high = 3e-2, log = true }", "lr = 1e-2") + \
        '[space.stage2]\nlr = 0.9\nn_cycles = [0, 1, 2]\n'
    path, study_file, study, dataset = _study(tmp_path, data_dir, space, pruner="none")
    study.optimize(FinetuneObjective(dataset, study_file.space, TINY, device="cpu"), n_trials=1)
    [trial] = study.trials
    assert trial.state == TrialState.COMPLETE and attrs_of(trial)["epochs"] == 4
    assert attrs_of(trial)["best_stage"] == 1 and attrs_of(trial)["best_cycle_end_epoch"] == 1
    config = replay_config(trial, 1)
    assert config.stage2 is None and config.epochs == 2 and config.finish_at == ()
    outcome = fit(path, tmp_path / "bundle", echo=lambda line: None)
    assert outcome.replay_value == trial.value and outcome.matched
    assert outcome.manifest["epochs"] == 2 and outcome.manifest["image_size"] == 32


@pytest.mark.slow
def test_dask_trials_run_both_stages_with_the_params_the_driver_fixed(tmp_path, data_dir):
    pytest.importorskip("distributed", reason="the dask extra is not installed: pip install '.[dask]'")
    from tests.daskkit import Cluster

    path = write_study(tmp_path, data_dir, space=STAGED, pruner="none",
                       extra={"study": 'n_cycles = "sampled"\n'})
    with Cluster(workers=1) as cluster:
        result = run_cli("study", "run", path, "--dask", cluster.address, "--n-trials", "3", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    trials = _trials(path)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        k = trial.params["stage2_n_cycles"]
        assert ("stage2_lr" in trial.params) == (k > 0)
        assert attrs_of(trial)["epochs"] == 2 + k and ("stage2_first_epoch" in attrs_of(trial)) == (k > 0)
