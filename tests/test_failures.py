"""A trial that fails with an ordinary error fails alone; several in a row stop the run."""
from __future__ import annotations

import json

from optuna.trial import TrialState

import objectives.finetune as finetune
from tests.studykit import SPACE, one_line_error, run_cli, write_study


def test_a_failing_trial_is_recorded_and_the_run_goes_on(tmp_path, data_dir, monkeypatch):
    real, calls = finetune.train, []

    def train(dataset, config, *args, **kwargs):
        calls.append(config)
        if len(calls) == 2:   # fastai's combine_scheds assert: an error inside the run itself
            raise AssertionError("sum of pcts is not 1")
        return real(dataset, config, *args, **kwargs)

    monkeypatch.setattr(finetune, "train", train)
    study = write_study(tmp_path, data_dir, pruner="none")
    result = run_cli("study", "run", study, "--n-trials", "3")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if "failed: AssertionError" in line]
    assert len(failed) == 1 and "sum of pcts is not 1" in failed[0] and "study.errors.log" in failed[0]
    assert "3 (2 complete, 0 pruned, 1 failed)" in result.stdout
    log = (tmp_path / "study.errors.log").read_text()
    assert "Traceback" in log and "AssertionError: sum of pcts is not 1" in log
    status = run_cli("study", "status", study, "--json")
    assert '"FAIL"' in status.stdout


def test_a_trial_failed_as_stale_while_it_ran_costs_that_trial_not_the_worker(tmp_path, data_dir, monkeypatch):
    # A worker paused past [study] grace_period (Ctrl-Z, a suspended laptop, a swap storm) finds
    # on waking that another worker has failed its trial as stale and queued the retry: it drops
    # that trial and goes on, instead of stopping with Optuna's "Cannot tell a FAIL trial".
    from objectives.optuna_compat import storage_of, trial_id

    real = finetune.train

    def train(dataset, config, *args, on_epoch=None, **kwargs):
        def epoch_then_taken_over(record) -> None:
            trial = taken.pop() if taken else None
            if trial is not None:   # as fail_stale_trials in another worker does
                storage_of(trial.study).set_trial_state_values(trial_id(trial), TrialState.FAIL)
            on_epoch(record)
        return real(dataset, config, *args, on_epoch=epoch_then_taken_over, **kwargs)

    taken, start = [], finetune.FinetuneObjective.__call__

    def objective(self, trial):
        if trial.number == 0:
            taken.append(trial)   # trial 0 is taken over after its first epoch
        return start(self, trial)

    monkeypatch.setattr(finetune.FinetuneObjective, "__call__", objective)
    monkeypatch.setattr(finetune, "train", train)
    study = write_study(tmp_path, data_dir, pruner="none")
    result = run_cli("study", "run", study, "--n-trials", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "trial 0: another worker failed it as stale while it ran" in result.stdout
    states = json.loads(run_cli("study", "status", study, "--json").stdout)["trials"]
    assert [row["state"] for row in states] == ["FAIL", "COMPLETE", "COMPLETE"]


def test_failures_in_a_row_stop_the_run_with_one_line(tmp_path, data_dir, monkeypatch, capfd):
    def train(*args, **kwargs):
        raise ZeroDivisionError("always")

    monkeypatch.setattr(finetune, "train", train)
    study = write_study(tmp_path, data_dir, pruner="none", extra={"study": "max_failures_in_a_row = 2\n"})
    result = run_cli("study", "run", study, "--n-trials", "5")
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "2 trials in a row failed" in errors[0] and "ZeroDivisionError: always" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert "2 (0 complete, 0 pruned, 2 failed)" in result.stdout   # the summary still printed; no 3rd trial
    assert "failed" not in capfd.readouterr().err   # nor from Optuna's own logger, on the real stderr


def test_max_failures_in_a_row_must_be_positive(tmp_path, data_dir):
    study = write_study(tmp_path, data_dir, extra={"study": "max_failures_in_a_row = 0\n"})
    result = run_cli("study", "run", study)
    assert result.returncode == 2 and "[study] max_failures_in_a_row must be 1 or more" in result.stderr


def test_a_space_optuna_cant_take_is_refused_before_any_trial(tmp_path, data_dir):
    six = SPACE.replace("n_cycles = [1]", "n_cycles = [1, 6]")
    study = write_study(tmp_path, data_dir, pruner="none", space=six)
    assert run_cli("study", "run", study, "--n-trials", "1").returncode == 0
    database = tmp_path / "study.db"
    before = database.read_bytes()
    study.write_text(study.read_text().replace("n_cycles = [1, 6]", "n_cycles = [1, 4]"))
    error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert "[space] n_cycles is [1, 4]" in error and "ran on [1, 6]" in error and "new [study] name" in error
    assert database.read_bytes() == before   # nothing ran, nothing written


def test_a_wider_range_goes_on_and_says_so(tmp_path, data_dir):
    study = write_study(tmp_path, data_dir, pruner="none")
    assert run_cli("study", "run", study, "--n-trials", "1").returncode == 0
    study.write_text(study.read_text().replace("lr = { low = 1e-3, high = 3e-2", "lr = { low = 1e-4, high = 5e-2"))
    result = run_cli("study", "run", study, "--n-trials", "1")
    assert result.returncode == 0, result.stderr
    assert "note: [space] lr changed from numbers 0.001..0.03, log to numbers 0.0001..0.05, log" in result.stdout
    assert "2 (2 complete" in result.stdout
