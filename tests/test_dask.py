"""`swipr study run --dask`: a real scheduler and two workers, each its own process on 127.0.0.1.

Trials spread over both workers; a worker SIGKILLed mid-trial costs one FAIL, whose single retry
resumes from the checkpoint on the other worker; wrong addresses and clusters fail in one line.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest

from objectives.judging import interrupted as is_interrupted
from objectives.trial_attrs import attrs_of
from tests.daskkit import Cluster
from tests.studykit import ROOT, SPACE, one_line_error, run_cli, write_study

pytest.importorskip("distributed", reason="the dask extra is not installed: pip install '.[dask]'")

THREE_EPOCHS = SPACE.replace("n_cycles = [1]", "n_cycles = [3]")
TrialState = optuna.trial.TrialState


def _open(path):
    from search.study.open import open_study
    from search.studyfile import load_study_file

    try:
        return open_study(load_study_file(path), create=False)
    except Exception:   # not created yet
        return None


def _trials(path):
    study = _open(path)
    return study.get_trials(deepcopy=False) if study else []


def _run_in_background(path, address, *args):
    return subprocess.Popen([sys.executable, "-m", "search.cli", "study", "run", str(path), "--dask", address,
                             *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            preexec_fn=_ctrl_c_acts)


def _ctrl_c_acts() -> None:
    # A job started in the background inherits SIGINT ignored; the test's Ctrl-C must reach it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    study = None
    while time.monotonic() < deadline:
        study = study or _open(path)   # opened once: a poll is then one query, not a new engine
        found = [t for t in (study.get_trials(deepcopy=False) if study else []) if condition(t)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("timed out waiting for a trial")


# How the driver learns of a lost worker: with allowed-failures 0 (the README's setting) the
# task fails with KilledWorker; with Dask's default the scheduler re-runs the task on another
# worker, which finds its trial already begun and hands it back as lost.
LOST_WORKER = {"0": "its task ended with KilledWorker", "3": "its worker was lost (Dask re-ran the task)"}


@pytest.mark.slow
@pytest.mark.parametrize("allowed_failures", sorted(LOST_WORKER))
def test_a_killed_worker_costs_one_fail_and_its_retry_resumes_on_the_other(tmp_path, data_dir, allowed_failures):
    path = write_study(tmp_path, data_dir, space=THREE_EPOCHS, pruner="none")
    with Cluster(workers=2, preload="tests.dask_slow_epochs",
                 env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": allowed_failures}) as cluster:
        run = _run_in_background(path, cluster.address, "--n-trials", 3)
        # after epoch 1 of some trial (checkpoint saved and reported), its worker's machine goes
        victim = _wait_for(lambda t: t.state == TrialState.RUNNING and 1 in t.intermediate_values, path)
        victim_worker = attrs_of(victim)["worker"]
        cluster.kill(cluster.workers[int(victim_worker[1:])])
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, out + err + cluster.logs()

    trials = _trials(path)
    assert all(t.state.is_finished() for t in trials), [t.state.name for t in trials]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [victim.number]   # failed once
    retries = [t for t in trials if "retry_of" in attrs_of(t)]
    assert len(retries) == 1 and attrs_of(retries[0])["retry_of"] == victim.number   # retried once
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    # epochs 0 and 1 (or, if the kill landed late on a loaded machine, 0 to 2) came from the checkpoint
    assert attrs_of(retry)["resumed_from_epoch"] in (2, 3)
    assert sorted(retry.intermediate_values) == [0, 1, 2]
    assert retry.params == victim.params
    assert attrs_of(retry)["worker"] != victim_worker
    # every trial asked for finished exactly once: 3 complete, the lost one through its retry
    assert list(_each_finished_once(trials)) == [victim.number]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4
    assert {attrs_of(t)["worker"] for t in trials} == {"w0", "w1"}   # both workers ran trials
    assert all(attrs_of(t)["host"] == socket.gethostname() for t in trials)
    assert not list((tmp_path / ".swipr-cache" / "checkpoints").glob(f"t-*/trial-{victim.number}"))   # removed once done
    assert f"trial {victim.number}: {LOST_WORKER[allowed_failures]}" in err

    status = run_cli("study", "status", path)
    assert status.returncode == 0 and "w0" in status.stdout and "w1" in status.stdout, status.stdout


@pytest.fixture(scope="module")
def cpu_cluster():
    with Cluster(workers=1) as cluster:
        yield cluster


def test_a_gpu_study_on_a_cluster_without_gpu_slots_is_one_line(tmp_path, data_dir, cpu_cluster):
    path = write_study(tmp_path, data_dir, extra={"train": ""})
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "cuda"'))
    line = one_line_error(run_cli("study", "run", path, "--dask", cpu_cluster.address))
    assert "no worker of the Dask cluster" in line and "--resources GPU=1" in line
    assert not _trials(path)   # refused before the study was touched


def test_the_per_epoch_rows_reach_the_drivers_terminal(tmp_path, data_dir, cpu_cluster):
    # under Dask the trials' per-epoch table reaches the driver's terminal, not only the workers' logs
    import re

    path = write_study(tmp_path, data_dir, space=THREE_EPOCHS, pruner="none")
    result = run_cli("study", "run", path, "--dask", cpu_cluster.address, "--n-trials", "1")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\s+0\s+(\d)\s+unfrozen\s+\d+\.\d{4}\s+\d+\.\d{4}\s", result.stdout, re.M)
    assert rows == ["0", "1", "2"], result.stdout   # trial 0's three epochs, each a row starting with the trial
    assert re.search(r"^trial 0  .*lr=.*: started, epochs 0-2", result.stdout, re.M), result.stdout


def test_a_wrong_scheduler_address_fails_fast_in_one_line(tmp_path, data_dir):
    with socket.socket() as s:   # a port on loopback where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_study(tmp_path, data_dir)
    started = time.monotonic()
    result = run_cli("study", "run", path, "--dask", f"tcp://127.0.0.1:{port}")
    line = one_line_error(result)
    assert f"Dask scheduler tcp://127.0.0.1:{port}: can't connect" in line
    assert time.monotonic() - started < 30   # the 5 s connect timeout plus the CLI's start-up


def _each_finished_once(trials) -> dict:
    """Every trial asked for ended COMPLETE exactly once (itself or through its retries), each FAIL
    has exactly one direct retry, and nothing is left running or waiting. {failed: its retry}"""
    assert all(t.state.is_finished() for t in trials), [t.state.name for t in trials]
    retry_of = {t.system_attrs["retry_history"][-1]: t for t in trials if "retry_history" in t.system_attrs}
    assert sorted(retry_of) == sorted(t.number for t in trials if t.state == TrialState.FAIL)
    originals = [t.number for t in trials if "failed_trial" not in t.system_attrs]
    complete = [t.system_attrs.get("failed_trial", t.number) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(originals)
    return retry_of


@pytest.mark.slow
def test_ctrl_c_then_driver_death_then_a_rerun_finishes_every_trial_once(tmp_path, data_dir):
    path = write_study(tmp_path, data_dir, space=THREE_EPOCHS, pruner="none", sampler="random")
    with Cluster(workers=2, preload="tests.dask_slow_epochs") as cluster:
        # Ctrl-C: both running trials stop after their next epoch, FAIL, each with a retry queued
        run = _run_in_background(path, cluster.address, "--n-trials", 2)
        _wait_for(lambda t: t.state == TrialState.RUNNING and 0 in t.intermediate_values, path)
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 130, out + err
        trials = _trials(path)
        assert TrialState.RUNNING not in [t.state for t in trials]
        interrupted = [t for t in trials if t.state == TrialState.FAIL]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        assert interrupted and sorted(t.system_attrs["failed_trial"] for t in waiting) == [
            t.number for t in interrupted]
        assert all(is_interrupted(t) for t in interrupted) and not any(is_interrupted(t) for t in waiting)

        # The head node goes mid-trial: the driver and the trial's worker SIGKILLed together (a
        # worker that lives on records its trial itself). The trial stays RUNNING until the
        # next run fails it and retries it from its checkpoint on the other worker.
        run = _run_in_background(path, cluster.address, "--n-trials", 1)
        orphan = _wait_for(lambda t: t.state == TrialState.RUNNING and 1 in t.intermediate_values, path)
        os.killpg(run.pid, signal.SIGKILL)
        cluster.kill(cluster.workers[int(attrs_of(orphan)["worker"][1:])])
        run.wait(timeout=30)
        result = run_cli("study", "run", path, "--dask", cluster.address, "--n-trials", 3)
        assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
        assert f"trial {orphan.number}: left running by a driver that stopped" in result.stdout

    trials = _trials(path)
    retry_of = _each_finished_once(trials)
    assert sorted(retry_of) == sorted([*(t.number for t in interrupted), orphan.number])
    assert all(attrs_of(retry)["resumed_from_epoch"] >= 1 for retry in retry_of.values())
    # seen after epoch 1, killed before or, on a loaded machine, after epoch 2's checkpoint
    assert attrs_of(retry_of[orphan.number])["resumed_from_epoch"] in (2, 3)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 3


def test_a_driver_s_fixed_distributions_are_what_the_worker_s_suggest_calls_give_back():
    from objectives.optuna_compat import attach, trial_id
    from objectives.space import Choices, Range, distribution, suggest

    space = {"lr": Range(1e-3, 3e-2, log=True), "batch_size": Range(16, 64, step=16, is_int=True),
             "freeze": Choices(("frozen", "unfrozen"))}
    study = optuna.create_study()
    asked = study.ask({name: distribution(spec) for name, spec in space.items()})
    on_worker = attach(study, trial_id(asked))   # as the task builds it
    assert {name: suggest(on_worker, name, spec) for name, spec in space.items()} == asked.params


def test_the_cluster_section_and_swipr_dask(tmp_path, data_dir, monkeypatch):
    from search.studyfile import load_study_file

    path = write_study(tmp_path, data_dir)
    path.write_text(path.read_text().replace("[space]", '[cluster]\ndask = "tcp://127.0.0.1:8786"\n'
                                                        'checkpoint_dir = "shared/ckpt"\n\n[space]'))
    cluster = load_study_file(path).cluster
    assert (cluster.dask, cluster.checkpoint_dir) == ("tcp://127.0.0.1:8786", tmp_path / "shared" / "ckpt")
    monkeypatch.setenv("SWIPR_DASK", "tcp://127.0.0.1:9999")
    assert load_study_file(path).cluster.dask == "tcp://127.0.0.1:9999"
