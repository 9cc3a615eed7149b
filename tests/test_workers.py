"""Workers: many on one study, a SIGKILLed one's trial retried from its checkpoint, CUDA OOM,
Ctrl-C, memory that stays flat, and a password that never shows."""
from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch

from objectives.judging import interrupted as is_interrupted
from objectives.trial_attrs import attrs_of
from search.running.stop import StopFlag
from search.running.supervisor import Slot, make_slots, parse_gpus, visible_device
from swipr_core.errors import SwiprError
from tests import pg
from tests.studykit import ROOT, SPACE, run_cli, swipr, write_study

THREE_EPOCHS = SPACE.replace("n_cycles = [1]", "n_cycles = [3]")
FAST_HEARTBEAT = {"study": "heartbeat_interval = 1\ngrace_period = 2\n"}


def _study(path):
    from search.study.open import open_study
    from search.studyfile import load_study_file

    return open_study(load_study_file(path), create=False)


def test_slots_from_workers_and_gpus():
    assert make_slots(None, None, None) == [Slot(0)]
    assert make_slots(3, None, None) == [Slot(0), Slot(1), Slot(2)]
    assert make_slots(None, "0,2", 2) == [Slot(0, 0), Slot(1, 0), Slot(2, 2), Slot(3, 2)]
    for bad in ("", "a", "0,0", "-1"):
        with pytest.raises(SwiprError, match="--gpus"):
            parse_gpus(bad)
    with pytest.raises(SwiprError, match="not both"):
        make_slots(2, "0", None)


def test_each_gpu_slot_sees_only_its_gpu():
    assert visible_device(1, None) == "1"
    assert visible_device(1, "4,6") == "6"   # --gpus counts the GPUs the user already selected
    assert visible_device(0, "GPU-3f2a,GPU-77aa") == "GPU-3f2a"


KILL_AFTER_EPOCH_1 = """
import os, signal, sys
import objectives.finetune as finetune
real = finetune.train

def train(*args, on_epoch=None, **kwargs):
    def hook(record):
        on_epoch(record)          # the epoch's checkpoint is already saved
        if record.epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, on_epoch=hook, **kwargs)

finetune.train = train
from search.running.worker import run_worker
from search.study.open import open_study
from search.studyfile import load_study_file
from swipr_core.data.dataset import prepare_data
study_file = load_study_file(sys.argv[1])
open_study(study_file, create=True)
run_worker(study_file, prepare_data(study_file.data), n_trials=1)
"""


@pytest.mark.slow
def test_sigkilled_trial_is_failed_and_retried_from_its_checkpoint(tmp_path, data_dir):
    path = write_study(tmp_path, data_dir, space=THREE_EPOCHS, pruner="none", extra=FAST_HEARTBEAT)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_1, str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _study(path).trials[0].state == optuna.trial.TrialState.RUNNING
    [checkpoint] = (tmp_path / ".swipr-cache" / "checkpoints").glob("t-*/trial-0/last.pth")   # <name>-<key>
    time.sleep(2.5)   # past the grace period

    # The next run fails the silent trial, retries it, and the retry resumes after epoch 1.
    result = run_cli("study", "run", path, "--n-trials", "1")
    assert result.returncode == 0, result.stderr
    first, retry = _study(path).trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert attrs_of(retry)["retry_of"] == 0
    assert attrs_of(retry)["resumed_from_epoch"] == 2
    assert sorted(retry.intermediate_values) == [0, 1, 2]
    assert retry.params == first.params
    assert attrs_of(retry)["seed"] == attrs_of(first)["seed"]   # shuffles as the original did
    assert not checkpoint.parent.exists()   # removed once the trial finished


def test_each_trial_process_prints_its_per_epoch_rows(tmp_path, data_dir):
    # under --workers each trial process's per-epoch table reaches the terminal
    import re

    path = write_study(tmp_path, data_dir, space=THREE_EPOCHS, pruner="none")
    result = swipr("study", "run", path, "--workers", "2", "--n-trials", "2")
    assert result.returncode == 0, result.stderr
    for number in (0, 1):   # every epoch of each trial, a row that starts with the trial's number
        rows = re.findall(rf"^\s+{number}\s+(\d)\s+unfrozen\s+\d+\.\d{{4}}\s+\d+\.\d{{4}}\s", result.stdout, re.M)
        assert sorted(rows) == ["0", "1", "2"], result.stdout
        assert re.search(rf"^trial {number}  .*lr=.*: started, epochs 0-2", result.stdout, re.M), result.stdout


def _fake_result(val_loss: float):
    import numpy as np

    from swipr_core.train.run import TrainResult

    return TrainResult(history=[], metrics={"val_loss": val_loss, "epochs": 1}, valid_probs=np.zeros(1),
                       valid_targets=np.zeros(1), model=None)


def test_out_of_memory_fails_the_trial_and_the_worker_goes_on(tmp_path, data_dir, monkeypatch):
    import objectives.finetune as finetune
    from search.running.worker import run_worker
    from search.study.open import open_study
    from search.studyfile import load_study_file
    from swipr_core.data.dataset import prepare_data

    def train(dataset, config, *args, **kwargs):
        if config.batch_size >= 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return _fake_result(0.5)

    monkeypatch.setattr(finetune, "train", train)
    study_file = load_study_file(write_study(tmp_path, data_dir))
    study = open_study(study_file, create=True)
    for batch_size in (32, 16, 32, 16):
        study.enqueue_trial({"batch_size": batch_size, "lr": 0.01})
    run_worker(study_file, prepare_data(study_file.data), n_trials=4)

    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "PRUNED", "COMPLETE"]
    assert "out of GPU memory at freeze=unfrozen batch_size=32 image_size=32" in attrs_of(study.trials[0])["fail_reason"]
    assert "ran out of GPU memory" in attrs_of(study.trials[2])["refused"]   # refused before it ran
    assert study.user_attrs["oom:unfrozen:32x32"] == 0


def test_memory_stays_flat_from_trial_to_trial(tmp_path, data_dir):
    # The in-process worker: no tensor or module outlives its trial (GPU memory is held by
    # tensors only, and the cache is emptied after every trial).
    from search.running.worker import run_worker
    from search.study.open import open_study
    from search.studyfile import load_study_file
    from swipr_core.data.dataset import prepare_data

    study_file = load_study_file(write_study(tmp_path, data_dir, pruner="none"))
    open_study(study_file, create=True)
    counts = []

    def count(study, trial) -> None:
        gc.collect()
        live = [o for o in gc.get_objects() if isinstance(o, (torch.Tensor, torch.nn.Module))]
        counts.append(len(live))

    run_worker(study_file, prepare_data(study_file.data), n_trials=4, callbacks=[count])
    assert len(counts) == 4
    assert counts[1] == counts[2] == counts[3], counts


def _sigterm(stop: StopFlag) -> None:
    """What a trial process's SIGTERM handler runs, at a moment the test picks."""
    stop.on_signal(signal.SIGTERM, None)


class StopDuringAsk(StopFlag):
    """Not stopped when the worker asks Optuna for a trial, stopped once it has one: a stop
    that lands while Optuna hands the trial out."""

    def __init__(self):
        self.reads = 0
        super().__init__()

    @property
    def requested(self) -> bool:
        self.reads += 1
        return self.reads > 1

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def _worker(tmp_path, data_dir, monkeypatch):
    """An in-process worker (SQLite, heartbeats on) whose training returns at once."""
    import objectives.finetune as finetune
    from search.running.worker import run_worker
    from search.study.open import open_study
    from search.studyfile import load_study_file
    from swipr_core.data.dataset import prepare_data

    monkeypatch.setattr(finetune, "train", lambda *args, **kwargs: _fake_result(0.5))
    study_file = load_study_file(write_study(tmp_path, data_dir, pruner="none", extra=FAST_HEARTBEAT))
    study = open_study(study_file, create=True)
    dataset = prepare_data(study_file.data)
    return study, lambda stop: run_worker(study_file, dataset, n_trials=1, stop=stop)


def _states(study):
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_a_stopping_worker_fails_no_trial_it_had_not_started(tmp_path, data_dir, monkeypatch):
    # The race behind Ctrl-C leaving a FAIL without its own retry: worker A is interrupted in
    # training and queues its retry; worker B, asked to stop a moment later, still asked
    # Optuna for a trial, took that retry and failed it at once.
    import objectives.finetune as finetune

    study, run = _worker(tmp_path, data_dir, monkeypatch)
    fake = finetune.train
    stop = StopFlag()

    def train_until_stopped(*args, **kwargs):
        _sigterm(stop)   # in the trial: raises KeyboardInterrupt, as in a trial process
        return fake(*args, **kwargs)

    monkeypatch.setattr(finetune, "train", train_until_stopped)
    with pytest.raises(KeyboardInterrupt):
        run(stop)   # A: the stop lands in training: FAIL, and its retry queued
    assert _states(study) == ["FAIL", "WAITING"]
    queued = study.get_trials(deepcopy=False)[1]
    assert (queued.system_attrs["failed_trial"], queued.system_attrs["retry_history"]) == (0, [0])

    with pytest.raises(KeyboardInterrupt):
        run(stop)   # B: asked to stop before it asks for a trial: it takes none
    assert _states(study) == ["FAIL", "WAITING"]

    with pytest.raises(KeyboardInterrupt):
        run(StopDuringAsk())   # C: the stop lands while Optuna hands it the queued retry: given back as it was
    assert _states(study) == ["FAIL", "WAITING"]
    given_back = study.get_trials(deepcopy=False)[1]
    assert (given_back.system_attrs, given_back.params) == (queued.system_attrs, queued.params)

    monkeypatch.setattr(finetune, "train", fake)
    run(StopFlag())   # the next run takes the retry, once
    assert _states(study) == ["FAIL", "COMPLETE"]
    assert study.get_trials(deepcopy=False)[1].user_attrs["retry_of"] == 0


def test_a_fresh_trial_taken_as_the_stop_lands_goes_back_to_the_queue(tmp_path, data_dir, monkeypatch):
    study, run = _worker(tmp_path, data_dir, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(StopDuringAsk())
    assert _states(study) == ["WAITING"]   # not FAIL, not left RUNNING: the next run takes it


def test_a_stop_while_a_trial_process_starts_waits_until_it_can_be_stopped():
    from search.running.supervisor import stop_held

    def on_term(signum, frame):
        raise KeyboardInterrupt   # as the supervisor's handler does

    previous = signal.signal(signal.SIGTERM, on_term)
    started = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with stop_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)   # the handler runs here, and holds the stop
                started.append("registered")
        assert started == ["registered"]
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_workers_on_postgres_stop_on_ctrl_c_then_finish_every_trial_once(tmp_path, data_dir, pg_url, monkeypatch):
    path = write_study(tmp_path, data_dir, space=THREE_EPOCHS, sampler="random", pruner="none")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWIPR_STORAGE": pg_url}
    process = subprocess.Popen([sys.executable, "-m", "search.cli", "study", "run", str(path), "--workers", "2",
                                "--n-trials", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env=env, preexec_fn=_ctrl_c_acts)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            t.state == optuna.trial.TrialState.RUNNING for t in _trials_or_none(path, pg_url)):
        time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)   # what the terminal does on Ctrl-C
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    trials = _trials_or_none(path, pg_url)
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states
    interrupted = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert interrupted, states
    # each interrupted trial waits to be retried (from its checkpoint) by the next run, once;
    # a trial a worker took as the stop landed, before it began, is back in the queue untried
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    retries = [t for t in waiting if "failed_trial" in t.system_attrs]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == sorted(interrupted)
    assert all(t.params == {} and not t.intermediate_values for t in waiting if t not in retries)

    # The next run takes the retries first; every trial is recorded once, none left running.
    result = swipr("study", "run", path, "--workers", "2", "--n-trials", "3", env={"SWIPR_STORAGE": pg_url})
    monkeypatch.setenv("SWIPR_STORAGE", pg_url)
    status = run_cli("study", "status", path)
    assert result.returncode == 0, result.stderr
    for output in (out, err, result.stdout, result.stderr, status.stdout, status.stderr):
        assert pg.PASSWORD not in output
    assert "swipr:***@127.0.0.1" in result.stdout
    trials = _trials_or_none(path, pg_url)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    retries = [t for t in trials if "retry_of" in attrs_of(t)]
    assert sorted(attrs_of(t)["retry_of"] for t in retries) == sorted(interrupted)
    fresh = [t.params["lr"] for t in trials if "failed_trial" not in t.system_attrs and "lr" in t.params]
    assert len(set(fresh)) == len(fresh)   # no configuration proposed twice


def _ctrl_c_acts() -> None:
    # A job that a script starts in the background inherits SIGINT ignored, and Python keeps it
    # so: under such a test runner the run would never see this test's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _trials_or_none(path, url):
    os.environ["SWIPR_STORAGE"] = url
    try:
        return _study(path).get_trials(deepcopy=False)
    except Exception:
        return []
    finally:
        del os.environ["SWIPR_STORAGE"]


def test_an_interrupted_trials_retry_runs_before_fresh_queued_trials(tmp_path, data_dir, monkeypatch):
    import objectives.finetune as finetune

    study, run = _worker(tmp_path, data_dir, monkeypatch)
    study.enqueue_trial({"lr": 0.01})
    study.enqueue_trial({"lr": 0.02})
    fake, stop = finetune.train, StopFlag()

    def train_until_stopped(*args, **kwargs):
        _sigterm(stop)
        return fake(*args, **kwargs)

    monkeypatch.setattr(finetune, "train", train_until_stopped)
    with pytest.raises(KeyboardInterrupt):
        run(stop)   # takes trial 0 (lr 0.01) and is interrupted: its retry, trial 2, is queued
    assert _states(study) == ["FAIL", "WAITING", "WAITING"]
    # FAIL for Optuna, but marked as what it was: interrupted; its retry is not.
    assert [is_interrupted(t) for t in study.get_trials(deepcopy=False)] == [True, False, False]
    monkeypatch.setattr(finetune, "train", fake)
    run(StopFlag())   # one trial: the retry, though trial 1 was queued before it
    assert _states(study) == ["FAIL", "WAITING", "COMPLETE"]
    assert study.get_trials(deepcopy=False)[2].user_attrs["retry_of"] == 0
    assert not is_interrupted(study.get_trials(deepcopy=False)[2])


def _beat_then_hang(url: str) -> None:
    from search.study.storage import Heartbeat, open_storage

    storage = open_storage(url, create=False, heartbeat=Heartbeat(interval=1, grace_period=2))
    optuna.load_study(study_name="t", storage=storage).optimize(lambda trial: time.sleep(600), n_trials=1)


def test_status_shows_a_dead_workers_trial_as_stale(tmp_path, data_dir):
    import multiprocessing

    from search.study.open import open_study
    from search.studyfile import load_study_file
    from tests.studykit import run_cli

    path = write_study(tmp_path, data_dir, extra=FAST_HEARTBEAT)
    study_file = load_study_file(path)
    study = open_study(study_file, create=True)
    worker = multiprocessing.get_context("spawn").Process(target=_beat_then_hang, args=(study_file.study.storage,))
    worker.start()
    deadline = time.monotonic() + 60
    while not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
        time.sleep(0.2)

    def states_within(seconds: float, wanted: list[str]) -> list[str]:
        # A loaded machine can delay a heartbeat past the short grace period: poll, don't sleep once.
        deadline = time.monotonic() + seconds
        while True:
            states = [row["state"] for row in json.loads(run_cli("study", "status", path, "--json").stdout)["trials"]]
            if states == wanted or time.monotonic() > deadline:
                return states
            time.sleep(0.5)

    assert states_within(30, ["RUNNING"]) == ["RUNNING"]   # alive and beating
    worker.kill()   # the worker dies; its trial stays RUNNING in the storage
    worker.join()
    assert states_within(30, ["STALE"]) == ["STALE"]   # past the grace period of 2 s
    assert "STALE" in run_cli("study", "status", path).stdout
