"""A run's study file is fixed when the run starts: editing it during a `--workers` run
changes no trial, every trial records the [model] and cache_px it trained with, and `swipr fit`
replays those, whatever the file says later."""
from __future__ import annotations

import hashlib
import pickle

import optuna
import pytest

import search.running.driver
from objectives.trial_attrs import attrs_of
from search.running.supervisor import Slot, Task
from search.studyfile import load_study_file
from search.studyfile.trained_with import as_trained, trained_with
from swipr_core.errors import SwiprError
from tests.studykit import run_cli, write_study

LR_LINE = "lr = { low = 1e-3, high = 3e-2, log = true }"
ARCH_LINE = 'arch = "test_resnet"'


def edited(text: str) -> str:
    assert LR_LINE in text and ARCH_LINE in text
    return text.replace(LR_LINE, "lr = { low = 0.5, high = 0.9 }").replace(ARCH_LINE, 'arch = "test_efficientnet"')


def _study(path):
    from search.study.open import open_study

    return open_study(load_study_file(path), create=False)


@pytest.mark.slow
def test_an_edit_during_a_workers_run_changes_no_trial_and_fit_replays_the_trial(tmp_path, data_dir, monkeypatch):
    from search.fit.replay import fit

    path = write_study(tmp_path, data_dir, pruner="none")
    original = path.read_text()
    real_supervise = search.running.driver.supervise

    def edit_then_supervise(*args, **kwargs):
        path.write_text(edited(original))   # the user edits the file as the run starts its trials
        return real_supervise(*args, **kwargs)

    monkeypatch.setattr(search.running.driver, "supervise", edit_then_supervise)
    result = run_cli("study", "run", path, "--workers", "1", "--n-trials", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    trials = _study(path).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:   # the study as the run started: its lr range, its network
        assert 1e-3 <= trial.params["lr"] <= 3e-2
        assert attrs_of(trial)["model"] == {"arch": "test_resnet", "pretrained": False, "weights": None}
        assert attrs_of(trial)["cache_px"] == 40
        assert attrs_of(trial)["study_file_sha256"] == hashlib.sha256(original.encode()).hexdigest()
    # The file now names another network; the fit replays the one trial 1 trained.
    lines: list[str] = []
    outcome = fit(path, tmp_path / "model", trial_number=1, echo=lines.append)
    assert outcome.manifest["arch"] == "test_resnet" and outcome.matched
    assert f"trial 1 trained with [model] arch = 'test_resnet'; {path} now says 'test_efficientnet': " \
           f"replaying the trial's" in lines


def test_a_trial_process_gets_the_study_file_as_parsed(tmp_path, data_dir):
    path = write_study(tmp_path, data_dir)
    study_file = load_study_file(path)
    path.write_text(edited(path.read_text()))
    sent = pickle.loads(pickle.dumps(Task(study_file, Slot(0), None)))   # what the process receives
    assert sent.study_file == study_file and sent.study_file.model.arch == "test_resnet"
    assert study_file.sha256 != load_study_file(path).sha256


def test_fit_takes_the_recorded_model_and_pixels(tmp_path, data_dir):
    path = write_study(tmp_path, data_dir)
    then = load_study_file(path)
    attrs = trained_with(then)
    path.write_text(edited(path.read_text()).replace("cache_px = 40", "cache_px = 48"))
    now = load_study_file(path)
    lines: list[str] = []
    replayed = as_trained(now, attrs, "trial 4", lines.append)
    assert replayed.model == then.model and replayed.data.cache_px == 40 and replayed.space == now.space
    assert [line.split(";")[0] for line in lines] == ["trial 4 trained with [model] arch = 'test_resnet'",
                                                       "trial 4 trained with [data] cache_px = 40"]
    # A trial from before these records: the file's settings, said so.
    assert as_trained(now, {"seed": 1}, "trial 0", lines.append) is now
    assert lines[-1] == "trial 0 recorded no [model] or cache_px (run by an older swipr); using the study file's"


def test_a_study_file_read_again_must_be_the_run_s_version(tmp_path, data_dir):
    # A Dask worker reads its own copy of the file: an edited one is refused, naming the file.
    from search.studyfile.trained_with import check_same_version

    path = write_study(tmp_path, data_dir)
    run_sha256 = load_study_file(path).sha256
    check_same_version(load_study_file(path), run_sha256)
    check_same_version(load_study_file(path), "")   # a task from before the check: nothing to compare
    path.write_text(edited(path.read_text()))
    with pytest.raises(SwiprError, match=f"{path}: changed since the run started .* put it back, or stop the run"):
        check_same_version(load_study_file(path), run_sha256)


@pytest.mark.slow
def test_a_dask_run_refuses_a_study_file_edited_under_it(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("distributed", reason="the dask extra is not installed: pip install '.[dask]'")
    from tests.daskkit import Cluster

    path = write_study(tmp_path, data_dir, pruner="none")
    original = path.read_text()
    real_run_on_dask = search.running.driver.run_on_dask

    def edit_then_run(*args, **kwargs):
        path.write_text(edited(original))   # edited after the driver read it; the worker reads its own copy
        return real_run_on_dask(*args, **kwargs)

    with Cluster(workers=1) as cluster:
        first = run_cli("study", "run", path, "--dask", cluster.address, "--n-trials", "1")
        assert first.returncode == 0, first.stdout + first.stderr + cluster.logs()
        monkeypatch.setattr(search.running.driver, "run_on_dask", edit_then_run)
        second = run_cli("study", "run", path, "--dask", cluster.address, "--n-trials", "1")
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"{path}: changed since the run started" in second.stderr and "Traceback" not in second.stderr
    trials = _study(path).trials
    assert attrs_of(trials[0])["model"]["arch"] == "test_resnet" and attrs_of(trials[0])["cache_px"] == 40
    # The refused trial trained nothing: back in the queue, untouched.
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING]
