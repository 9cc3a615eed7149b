"""Terminal output of `swipr study run`: bars on a terminal, plain lines elsewhere, a summary table."""
from __future__ import annotations

import datetime
import io
import re
from types import SimpleNamespace

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.views import epoch_table
from search.views.progress import Budget, StudyProgress, budget_rows, hours_label, summary_table
from swipr_core.train.run import EpochRecord
from tests.studykit import finished_demo_study


class _Trial(SimpleNamespace):
    pass


def _events(progress: StudyProgress) -> None:
    trial = _Trial(number=7, params={"lr": 0.0123, "freeze": "unfrozen"})
    progress.on_start(trial, SimpleNamespace(epochs=2))
    for epoch in range(2):
        progress.on_epoch(trial, EpochRecord(epoch, "unfrozen", 0.5, 0.4, 0.75, 2.0, [], cycle_end=epoch == 1,
                                             images=240))
    progress.on_result(trial, None)
    frozen = create_trial(state=TrialState.COMPLETE, value=0.4, params={"lr": 0.0123},
                          distributions={"lr": FloatDistribution(1e-4, 1e-1)}, user_attrs={"epochs": 2})
    study = optuna.create_study()
    study.add_trial(frozen)
    frozen = study.trials[0]
    frozen.number = 7
    progress(study, frozen)
    progress.close()


def test_without_a_terminal_every_event_is_one_plain_line():
    out = io.StringIO()
    _events(StudyProgress(n_trials=3, stream=out))
    text = out.getvalue()
    assert "\r" not in text
    # fastai's table: a row an epoch, numbered from 0, with its time and speed (240 images in 2 s)
    assert text.splitlines() == [
        "trial 7  lr=0.0123 freeze=unfrozen: started, epochs 0-1",
        "trial  epoch  phase     train_loss  valid_loss  accuracy  train_time  images/s",
        "    7      0  unfrozen      0.5000      0.4000    0.7500       00:02     120.0",
        "    7      1  unfrozen      0.5000      0.4000    0.7500       00:02     120.0  cycle end",
        "trial 7 COMPLETE val_loss 0.4000 after 2 epochs  lr=0.0123",
    ]


def test_on_a_terminal_two_bars_name_the_trial_and_its_params():
    out = io.StringIO()
    progress = StudyProgress(n_trials=3, stream=out, bars=True)
    _events(progress)
    text = out.getvalue()
    assert "\r" in text                                    # redrawn in place
    assert "trial 7 0/2 epochs |" in text                  # the epoch bar, labelled with the trial...
    assert "| 00:00<?, lr=0.0123 freeze=unfrozen" in text  # ...and its params
    # fastai's table above the bars: each row written once, to stay on screen
    assert text.count("    7      1  unfrozen      0.5000      0.4000    0.7500       00:02     120.0") == 1
    assert "study 1/3 trials |" in text and "best 0.4000 (trial 0)" in text   # the trials bar
    assert "trial 7 COMPLETE val_loss 0.4000" in text      # each finished trial stays as a line
    assert progress.finished == [7]


def _timed(state, seconds, value=None, number=0):
    start = datetime.datetime(2026, 1, 1)
    trial = create_trial(state=state, value=value, params={"lr": 0.01},
                         distributions={"lr": FloatDistribution(1e-4, 1e-1)})
    trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=seconds)
    return trial


def test_summary_counts_states_and_adds_up_hours():
    study = optuna.create_study()
    study.add_trials([_timed(TrialState.COMPLETE, 1800, 0.3), _timed(TrialState.COMPLETE, 1800, 0.2),
                      _timed(TrialState.PRUNED, 900), _timed(TrialState.FAIL, 900)])
    table = summary_table(study, "cuda:0", this_run=[2, 3])
    rows = [" ".join(line.split()) for line in table.splitlines()]
    assert "best trial 1" in rows and "best val_loss 0.2000" in rows and "lr 0.01" in rows
    assert "4 (2 complete, 1 pruned, 1 failed)" in table
    assert "trial hours (GPU, wall clock) 1.5000 in the study, 0.5000 in this run (2 trials)" in rows
    assert hours_label("cpu") == "trial hours (CPU, wall clock)"
    assert "none completed yet" in summary_table(optuna.create_study(), "cpu")


def test_summary_puts_the_majority_baseline_beside_the_accuracy():
    study = optuna.create_study()
    study.set_user_attr("majority_accuracy", 0.806)
    study.set_user_attr("majority_class", "NO")
    trial = _timed(TrialState.COMPLETE, 60, 0.45)
    trial.user_attrs = {"val_accuracy": 0.806}
    study.add_trial(trial)
    rows = [" ".join(line.split()) for line in summary_table(study, "cpu").splitlines()]
    # 0.806 on 81% NO data is "always NO": the line says so
    assert "best val_accuracy 0.806 (majority baseline 0.806, always NO: no better than the baseline)" in rows


def test_summary_says_a_timeout_cut_the_run_short_and_what_waits():
    study = optuna.create_study()
    study.add_trial(_timed(TrialState.COMPLETE, 60, 0.45))
    study.enqueue_trial({"lr": 0.01}, user_attrs={"warm_start": "notebook", "warm_start_kept": ["lr"],
                                                  "warm_start_changed": [], "warm_start_stages": 2})
    rows = [" ".join(line.split()) for line in
            summary_table(study, "cpu", this_run=[0], budget=Budget(3, 60.0)).splitlines()]
    assert "stopped early --timeout 60 s reached: 1 of the 3 trials asked for ran" in rows
    assert "trials 2 (1 complete, 0 pruned, 0 failed, 1 waiting)" in rows
    assert ("vs notebook notebook (trial 1; both stages): WAITING, not run yet; the next `swipr study run` runs "
            "it first") in rows
    # all trials asked for ran: nothing was cut short, whatever the timeout
    assert "stopped early" not in summary_table(study, "cpu", this_run=[0], budget=Budget(1, 60.0))


def test_study_run_in_a_pipe_prints_lines_and_the_summary(tmp_path_factory):
    _, out = finished_demo_study(tmp_path_factory)   # `swipr study run --n-trials 4`, stdout a pipe
    assert "\r" not in out
    assert re.search(r"^trial  epoch  phase     train_loss  valid_loss  accuracy  train_time  images/s$", out, re.M)
    # trial 0's first epoch, its time and images/s measured
    assert re.search(r"^    0      0  (un)?frozen\s+\d\.\d{4}\s+\d\.\d{4}\s+[01]\.\d{4}\s+\d\d:\d\d\s+\d+\.\d(  cycle end)?$", out, re.M), out
    assert re.search(r"^trial 3 (COMPLETE|PRUNED) ", out, re.M)
    rows = [" ".join(line.split()) for line in out.splitlines()]
    assert any(re.fullmatch(r"trials 4 \(\d complete, \d pruned, 0 failed\)", row) for row in rows), out
    assert any(re.fullmatch(r"trial hours \(CPU, wall clock\) [0-9.]+ in the study, [0-9.]+ in this run \(4 trials\)", row) for row in rows), out


def test_the_summarys_rule_line_fits_the_terminal(monkeypatch):
    study = optuna.create_study()
    study.add_trial(_timed(TrialState.COMPLETE, 60, 0.45))
    monkeypatch.setenv("COLUMNS", "72")
    lines = summary_table(study, "cpu").splitlines()
    assert lines[1] == "-" * 72 == lines[-1]


def test_one_of_a_thing_is_said_in_the_singular():
    from search.views.format import count
    from search.views.gains import gains_rows

    assert (count(1, "trial"), count(0, "trial"), count(2, "epoch"), count(1, "box", "boxes")) == (
        "1 trial", "0 trials", "2 epochs", "1 box")
    study = optuna.create_study()
    study.add_trial(_timed(TrialState.COMPLETE, 60, 0.45))
    rows = [" ".join(line.split()) for line in
            summary_table(study, "cpu", this_run=[0], budget=Budget(1, 60.0)).splitlines()]
    assert any(row.endswith("in this run (1 trial)") for row in rows), rows
    assert budget_rows(Budget(3, 60.0), 1) == [("stopped early", "--timeout 60 s reached: 1 of the 3 trials asked for ran")]
    gains = {"vs_notebook": [], "epochs_run": 1, "epochs_saved": 1, "pruned": 1}
    assert ("pruning saved", "1 epoch (50% of 2): 1 trial pruned, 1 epoch run") in gains_rows(study, gains)


def test_a_long_task_gets_a_bar_on_a_terminal_and_a_few_lines_in_a_pipe():
    from search.views.progress import Steps

    out = io.StringIO()
    steps = Steps(8, "range test", "batches", stream=out)   # a StringIO is no terminal
    for i in range(8):
        steps.update(f"loss {i}")
    steps.close()
    assert out.getvalue().splitlines() == [f"range test: {n} batches of 8, loss {n - 1}" for n in (2, 4, 6, 8)]
    out = io.StringIO()
    steps = Steps(3, "replay", "epochs", lines=0, stream=out, bars=True)
    above = steps.above(lambda line: print(line, file=out))
    steps.update()
    above("a row of the table")
    steps.update()
    steps.close()
    text = out.getvalue()
    assert "\r" in text and "replay 1/3 epochs |" in text and "replay 2/3 epochs |" in text
    assert text.count("a row of the table") == 1
    lines = io.StringIO()
    quiet = Steps(3, "replay", "epochs", lines=0, stream=lines)
    quiet.update()
    assert lines.getvalue() == ""   # lines=0: the caller prints its own line a step


def test_a_trial_beside_others_prints_its_rows_as_lines_through_echo():
    from search.views.progress import trial_lines

    seen: list[str] = []
    hook = trial_lines(seen.append)
    trial = _Trial(number=4, params={"lr": 0.01})
    hook.on_start(trial, SimpleNamespace(epochs=1))
    hook.on_epoch(trial, EpochRecord(0, "frozen", 0.5, 0.4, 0.75, 2.0, [], images=240))
    hook.on_result(trial, None)
    assert seen == ["trial 4  lr=0.01: started, epoch 0", epoch_table.header(),
                    "    4      0  frozen        0.5000      0.4000    0.7500       00:02     120.0"]
    assert not hook.bars
