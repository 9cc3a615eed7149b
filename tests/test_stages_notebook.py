"""The warm start as the notebook ran (one trial, stage 2 from stage 1's weights), and the
pictures and texts of two-stage trials."""
from __future__ import annotations

import io
import json
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from objectives.judging import BEST_EPOCH_ATTR, BEST_LOSS_ATTR, BEST_N_CYCLES_ATTR, STAGE2_FIRST_EPOCH_ATTR
from objectives.trial_attrs import attrs_of
from search.study.open import open_study
from search.study.warm_start import NOTEBOOK, enqueue_warm_start
from search.studyfile import load_study_file
from search.views.artifacts import curves_figure, lr_figure, stage_boundary, trial_note
from search.views.gains import gains_rows, search_gains
from search.views.progress import StudyProgress, summary_table
from search.views.report import render_report
from search.views.stages import STAGES_ATTR, RecordStages, StageSpan, spans_of, stage_spans, stages_text
from swipr_core.train.run import EpochRecord
from swipr_core.train.schedule import StageConfig, TrainConfig
from tests.studykit import ROOT, run_cli, space_toml, write_study

# The notebook's stage 1 (lr 1e-4, unfrozen, 3 cycles of 1, 2, 4 epochs) fits this space but
# for its batch size and image size.
NOTEBOOK_SPACE = space_toml(lr="{ low = 1e-4, high = 1e-2, log = true }", freeze='["unfrozen", "frozen"]',
                            n_cycles="[1, 3]", cycle_mult="[1, 2]")
SPANS = [StageSpan(1, 0, 3, 32, 16, "unfrozen", 1e-3), StageSpan(2, 3, 2, 40, 16, "frozen", 1e-2)]


def _stored(state, value=None, **attrs):
    return optuna.trial.create_trial(state=state, value=value, params={"lr": 0.01},
                                     distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1)},
                                     intermediate_values={0: value or 0.9}, user_attrs=attrs)


def _history(phases: str) -> list[EpochRecord]:
    """One record an epoch; phases as letters, f(rozen) or u(nfrozen)."""
    return [EpochRecord(epoch=i, phase="frozen" if p == "f" else "unfrozen", train_loss=0.7 - 0.05 * i,
                        valid_loss=0.8 - 0.05 * i, accuracy=0.6 + 0.02 * i, seconds=1.0,
                        lrs=[0.01 * (1 - j / 4) for j in range(4)]) for i, p in enumerate(phases)]


def _vlines(ax) -> list[tuple[float, str]]:
    """(x, label) of the figure's vertical lines across the whole axis."""
    return [(line.get_xdata()[0], line.get_label()) for line in ax.lines
            if len(set(line.get_xdata())) == 1 and list(line.get_ydata()) == [0, 1]]


def test_without_a_second_stage_the_notebook_is_one_trial_of_stage_1_and_says_so(tmp_path):
    study_file = load_study_file(write_study(tmp_path, tmp_path / "data", warm_start=True, space=NOTEBOOK_SPACE))
    study = optuna.create_study()
    lines = enqueue_warm_start(study, study_file)
    # one trial, the notebook's stage 1 values where the space offers them; n_cycles (several
    # values: the trial's budget) is planned, not a param
    assert len(study.trials) == 1 and len(lines) == 1
    trial = study.trials[0]
    assert attrs_of(trial)["warm_start"] == NOTEBOOK and attrs_of(trial)["warm_start_stages"] == 1
    assert trial.system_attrs["fixed_params"] == {"lr": 1e-4, "freeze": "unfrozen", "cycle_len": 1, "cycle_mult": 2}
    assert attrs_of(trial)["warm_start_changed"] == ["batch_size", "image_size"]
    assert "the space changed batch_size, image_size (the sampler picks them)" in lines[0]
    assert "stage 1 only: the space has no [space.stage2]" in lines[0]
    # a second run of the study enqueues nothing more
    assert enqueue_warm_start(study, study_file) == [] and len(study.trials) == 1


# A space with a second stage that takes the notebook's stage 2 but for its size and batch:
# stage 1 one cycle (the notebook's 3 is not offered), stage 2's n_cycles the trial's budget.
TWO_STAGE_SPACE = NOTEBOOK_SPACE.replace("n_cycles = [1, 3]", "n_cycles = [1]").replace(
    "batch_size = [16, 32]", "batch_size = [16]") + (
    '\n[space.stage2]\nlr = { low = 1e-4, high = 1e-2, log = true }\nimage_size = [40]\n'
    'freeze = ["frozen", "unfrozen"]\nn_cycles = [0, 3]\n')


def test_the_notebook_trial_runs_both_stages_with_the_notebooks_values_where_the_space_allows(tmp_path):
    study_path = write_study(tmp_path, tmp_path / "data", warm_start=True, pruner="none", space=TWO_STAGE_SPACE)
    study = optuna.create_study()
    lines = enqueue_warm_start(study, load_study_file(study_path))
    assert len(study.trials) == 1 and len(lines) == 1
    queued = study.trials[0]
    # stage 2's lr and freeze are the notebook's; its n_cycles (0 or 3) is the budget: planned, not a param
    assert queued.system_attrs["fixed_params"] == {"lr": 1e-4, "freeze": "unfrozen", "cycle_len": 1, "cycle_mult": 2,
                                                   "stage2_lr": 1e-3, "stage2_freeze": "frozen"}
    assert attrs_of(queued)["warm_start_stages"] == 2
    assert "the space changed batch_size, image_size, n_cycles, stage2_image_size (the sampler picks them)" in lines[0]
    assert "stage 2 runs stage 1's batch_size ([space.stage2] leaves it out)" in lines[0]

    result = run_cli("study", "run", study_path, "--n-trials", "1")
    assert result.returncode == 0, result.stderr
    trial = open_study(load_study_file(study_path), create=False).trials[0]
    assert attrs_of(trial)["warm_start"] == NOTEBOOK and trial.params["stage2_lr"] == pytest.approx(1e-3)
    # stage 1: one epoch at 32 px; stage 2 from its weights: 1 + 2 + 4 epochs at 40 px, frozen
    assert attrs_of(trial)["epochs"] == 8
    assert spans_of(attrs_of(trial)) == [StageSpan(1, 0, 1, 32, 16, "unfrozen", pytest.approx(1e-4)),
                                          StageSpan(2, 1, 7, 40, 16, "frozen", pytest.approx(1e-3))]
    assert "-- stage 2 from stage 1's weights, epochs 1-7: 40 px, batch 16, frozen, lr 0.001 --" in result.stdout
    summary = " ".join(result.stdout.split())
    assert "vs notebook notebook (trial 0; both stages; the space's batch_size, image_size, n_cycles, " \
           "stage2_batch_size, stage2_image_size) is the best trial itself" in summary
    assert "best stages stage 1 epoch 0 (32 px, batch 16, unfrozen, lr 0.0001); stage 2 epochs 1-7" in summary
    best = json.loads(run_cli("study", "best", study_path, "--json").stdout)
    assert [row["name"] for row in best["vs_notebook"]] == [NOTEBOOK] and best["vs_notebook"][0]["stages"] == 2


def test_the_real_studys_notebook_trial_is_the_notebook_exactly():
    # studies/swipr_resnext50.toml offers every value of both of the notebook's runs
    study = optuna.create_study()
    line = enqueue_warm_start(study, load_study_file(ROOT / "studies" / "swipr_resnext50.toml"))[0]
    assert "changed" not in line and "stage 1 only" not in line
    queued = study.trials[0]
    assert attrs_of(queued)["warm_start_changed"] == [] and attrs_of(queued)["warm_start_stages"] == 2
    # stage 2's n_cycles (0-3) is the budget: it plans the notebook's 3, so it is no param
    assert queued.system_attrs["fixed_params"] == {
        "lr": 1e-4, "batch_size": 24, "image_size": 224, "freeze": "unfrozen", "n_cycles": 3, "cycle_len": 1,
        "cycle_mult": 2, "stage2_lr": 1e-3, "stage2_image_size": 229, "stage2_freeze": "frozen"}


def test_a_budget_without_the_notebooks_cycle_count_is_planned_and_says_so(tmp_path):
    # stage 2's n_cycles offers 0, 1, 2: the trial's budget, so it plans 2 where the notebook ran 3
    space = TWO_STAGE_SPACE.replace("n_cycles = [0, 3]", "n_cycles = [0, 1, 2]")
    study_file = load_study_file(write_study(tmp_path, tmp_path / "data", warm_start=True, space=space))
    study = optuna.create_study()
    line = enqueue_warm_start(study, study_file)[0]
    assert "the space changed batch_size, image_size, n_cycles, stage2_image_size (the sampler picks them); " \
           "stage2_n_cycles is the trial's budget: it plans 2 cycles" in line
    assert "stage2_n_cycles" not in study.trials[0].system_attrs["fixed_params"]


def test_the_summary_compares_with_the_notebook_trial_and_reads_an_older_studys_two_runs():
    study = optuna.create_study()
    study.add_trials([
        _stored(TrialState.COMPLETE, 0.50, warm_start=NOTEBOOK, warm_start_stages=2, val_accuracy=0.80,
                warm_start_changed=["batch_size", "stage2_image_size"], best_stage=2),
        _stored(TrialState.COMPLETE, 0.40, val_accuracy=0.85, **{STAGES_ATTR: [vars(s) for s in SPANS]}),
    ])
    rows = dict(gains_rows(study, search_gains(study)))
    assert rows["vs notebook"] == ("notebook (trial 0; both stages; the space's batch_size, stage2_image_size): "
                                   "val_loss 0.5000 -> best 0.4000 (20.0% lower), accuracy 0.800 -> 0.850 "
                                   "(+5.0 points)")
    # the best trial has two stages: the summary says where each ran and on what
    assert rows["best stages"] == ("stage 1 epochs 0-2 (32 px, batch 16, unfrozen, lr 0.001); stage 2 epochs 3-4 "
                                   "(40 px, batch 16, frozen, lr 0.01), from stage 1's weights")
    assert "best stages" in summary_table(study, "cpu")
    assert "<th>best stages</th><td>stage 1 epochs 0-2 (32 px" in render_report(study)
    # a best trial whose value is stage 1's end: its stage 2 is shown as planned, not as its result
    skipped = optuna.create_study()
    skipped.add_trials([_stored(TrialState.COMPLETE, 0.40, best_stage=1, **{STAGES_ATTR: [vars(s) for s in SPANS]})])
    rows = dict(gains_rows(skipped, search_gains(skipped)))
    assert "best stages" not in rows
    assert rows["planned stages"].endswith("from stage 1's weights; its best schedule ends with stage 1")

    older = optuna.create_study()
    older.add_trials([_stored(TrialState.COMPLETE, 0.45, warm_start="notebook run 1"),
                      _stored(TrialState.COMPLETE, 0.50, warm_start="notebook run 2")])
    lines = [text for label, text in gains_rows(older, search_gains(older)) if label == "vs notebook"]
    assert lines[0] == "notebook run 1 (trial 0) is the best trial itself"
    assert lines[1].startswith("notebook run 2 (trial 1; an older warm start: run 2 alone from the starting weights")
    assert "best stages" not in dict(gains_rows(older, search_gains(older)))


def test_a_notebook_trial_whose_best_schedule_or_sampler_skips_stage_2_says_so():
    study = optuna.create_study()
    study.add_trials([_stored(TrialState.COMPLETE, 0.30, warm_start=NOTEBOOK, warm_start_stages=2, best_stage=1,
                              warm_start_changed=[], planned_epochs=5, stage2_first_epoch=3),
                      _stored(TrialState.COMPLETE, 0.20)])
    line = dict(gains_rows(study, search_gains(study)))["vs notebook"]
    assert line.startswith("notebook (trial 0; both stages; its best schedule skips stage 2): val_loss 0.3000")
    # a best trial whose best finished schedule is stage 1's end: the summary says which stage it ends in
    nested = {"n_cycles_budget": 2, BEST_N_CYCLES_ATTR: 3, BEST_EPOCH_ATTR: 6, BEST_LOSS_ATTR: 0.2,
              STAGE2_FIRST_EPOCH_ATTR: 7}
    study.add_trials([_stored(TrialState.COMPLETE, 0.10, best_stage=1, **nested),
                      _stored(TrialState.COMPLETE, 0.05, best_stage=2, **{**nested, BEST_N_CYCLES_ATTR: 2})])
    rows = gains_rows(study, search_gains(study))
    texts = [text for label, text in rows if label == "best schedule"]
    assert texts == ["trial 3's stage 1, then stage 2's 2-cycle schedule (val_loss 0.2000 after epoch 6; it planned 2)"]
    study.add_trials([_stored(TrialState.COMPLETE, 0.01, best_stage=1, **nested)])
    assert dict(gains_rows(study, search_gains(study)))["best schedule"] == (
        "trial 4's stage 1 alone, stage 2 skipped (val_loss 0.2000 after epoch 6; it planned stage 2's 2 cycles)")
    # n_cycles sampled, 0 offered and not the notebook's 3: the trial ran one stage, and says why
    study = optuna.create_study()
    study.add_trials([_stored(TrialState.COMPLETE, 0.30, warm_start=NOTEBOOK, warm_start_stages=2,
                              warm_start_changed=["stage2_n_cycles"], planned_epochs=3)])
    line = dict(gains_rows(study, search_gains(study)))["vs notebook"]
    assert line.startswith("notebook (trial 0; stage 2 skipped: the sampler drew stage2_n_cycles 0; the space's "
                           "stage2_n_cycles) is the best trial itself")


def test_the_pictures_mark_where_stage_2_starts_with_what_it_trains():
    history = _history("uuuff")
    trial = _stored(TrialState.COMPLETE, 0.5, **{STAGES_ATTR: [vars(s) for s in SPANS]})
    boundary = stage_boundary(trial, history)
    assert boundary == SPANS[1]
    curves = curves_figure(history, "t", boundary=boundary)
    for ax in curves.axes:   # loss and accuracy: a line between epochs 2 and 3, named after stage 2
        assert (2.5, "stage 2: 40 px, batch 16, frozen") in _vlines(ax)
    assert (2.5, "stage 2: 40 px, batch 16, frozen") in _vlines(lr_figure(history, "t", boundary).axes[0])
    # a trial pruned before stage 2, and a one-stage trial, have no boundary to draw
    assert stage_boundary(trial, history[:3]) is None
    assert stage_boundary(_stored(TrialState.COMPLETE, 0.5), history) is None
    assert _vlines(curves_figure(history, "t").axes[1]) == []


def test_frozen_epochs_in_both_stages_are_two_bands_not_one_across_the_unfrozen_ones():
    figure = curves_figure(_history("fuuff"), "t")
    bands = [(patch.get_x(), patch.get_x() + patch.get_width()) for patch in figure.axes[0].patches]
    assert bands == [(-0.5, 0.5), (2.5, 4.5)]


def test_recorded_spans_read_back_and_a_foreign_record_reads_as_none():
    attrs = {STAGES_ATTR: [vars(s) for s in SPANS]}
    assert spans_of(attrs) == SPANS and spans_of({}) == []
    assert spans_of({STAGES_ATTR: [{"stage": 1, "size": 3}]}) == []
    assert stages_text(SPANS[:1]) == "stage 1 epochs 0-2 (32 px, batch 16, unfrozen, lr 0.001)"
    # the trial's note says its stages above its params; a one-stage trial's says nothing of them
    assert "Stages: stage 1 epochs 0-2 (32 px" in trial_note(0, "COMPLETE", {"lr": 0.01}, {}, stages=SPANS)
    assert "Stages" not in trial_note(0, "COMPLETE", {"lr": 0.01}, {})


def test_a_two_stage_trial_records_its_spans_and_the_table_announces_stage_2():
    config = TrainConfig(lr=1e-3, batch_size=16, image_size=32, freeze="frozen_then_unfrozen", n_cycles=1,
                         cycle_len=1, cycle_mult=1, head_epochs=1,
                         stage2=StageConfig(lr=1e-2, batch_size=8, image_size=40, freeze="frozen", n_cycles=2,
                                            cycle_len=1, cycle_mult=1))
    # stage 1: the head's warm-up epoch, then one unfrozen cycle; stage 2: two cycles
    assert stage_spans(config) == [StageSpan(1, 0, 2, 32, 16, "frozen_then_unfrozen", 1e-3),
                                   StageSpan(2, 2, 2, 40, 8, "frozen", 1e-2)]
    assert stage_spans(replace(config, stage2=None)) == []
    study = optuna.create_study()
    trial = study.ask()
    RecordStages().on_start(trial, config)   # stage 2's params are not drawn yet: nothing to record
    assert spans_of(attrs_of(study.trials[0])) == []
    RecordStages().on_stage2(trial, config)   # as the run reaches stage 2
    assert spans_of(attrs_of(study.trials[0])) == stage_spans(config)

    out = io.StringIO()
    progress = StudyProgress(1, stream=out, bars=False)
    progress.on_start(trial, config)
    for record in _history("fuff"):
        if record.epoch == 2:
            progress.on_stage2(trial, config)
        progress.on_epoch(trial, record)
    lines = out.getvalue().splitlines()
    assert "started, epochs 0-3 (stage 1 epochs 0-1, stage 2 epochs 2-3)" in lines[0]
    # the announcement comes once, right before stage 2's first row
    announced = [n for n, line in enumerate(lines) if line.startswith("-- stage 2 from stage 1's weights")]
    assert len(announced) == 1 and lines[announced[0] + 1].split()[1] == "2"
