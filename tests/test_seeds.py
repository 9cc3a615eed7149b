"""Sampler seeds: a lone worker draws the same params on any machine, workers sharing a study
(and a study continued later) never draw the same, and QMC keeps one sequence for the study."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import optuna
import pytest

from objectives.optuna_compat import put_back
from search.study.samplers import make_sampler, trial_seed
from tests.studykit import ROOT, write_study

# What a lone `swipr study run` does before it trains: the study opened as the run does, the
# worker's study opened as a worker does, each trial's params drawn as the objective draws them.
LONE_WORKER = """
import json, math, socket, sys
import optuna
from objectives.space import draw_all
from search.study.open import open_study, open_worker_study, quiet_optuna
from search.study.schedule_record import n_cycles_mode
from search.studyfile import load_study_file

quiet_optuna()
study_file = load_study_file(sys.argv[1])
open_study(study_file, create=True)
study = open_worker_study(study_file, on_stale=lambda study, trial: None)
mode = n_cycles_mode(study, study_file)

def objective(trial):
    params = draw_all(trial, study_file.space, mode)
    return abs(math.log(params["lr"]) + 4.5) + params["batch_size"] / 100   # TPE gets a shape to follow

study.optimize(objective, n_trials=8)   # 5 random start-up trials, then TPE's own
print(json.dumps({"host": socket.gethostname(), "params": [t.params for t in study.trials]}))
"""


def _on_host(host: str, study_path) -> dict:
    """The lone worker's draws in a process whose host name is `host` (its own UTS namespace)."""
    inner = f"hostname {host} && exec {sys.executable} -c {_quoted(LONE_WORKER)} {study_path}"
    result = subprocess.run(["unshare", "--uts", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                              "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _can_set_host_name() -> str | None:
    """Why this machine can't run a process under another host name, or None if it can."""
    if shutil.which("unshare") is None:
        return "no `unshare` command (util-linux) on this machine"
    probe = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname swipr-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"a new UTS namespace is not allowed here (needs root or CAP_SYS_ADMIN): {probe.stderr.strip()}"
    return None


def test_a_lone_worker_draws_the_same_params_on_two_host_names(tmp_path):
    reason = _can_set_host_name()
    if reason:
        pytest.skip(reason)
    runs = {}
    for host in ("alpha", "beta"):
        folder = tmp_path / host
        folder.mkdir()
        runs[host] = _on_host(host, write_study(folder, tmp_path / "data"))
    assert (runs["alpha"]["host"], runs["beta"]["host"]) == ("alpha", "beta")
    assert len(runs["alpha"]["params"]) == 8
    assert runs["alpha"]["params"] == runs["beta"]["params"]


def _draw(study: optuna.Study) -> float:
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    study.tell(trial, x)
    return x


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_workers_with_the_study_seed_draw_different_params(name):
    # Two workers, both with the study's seed, taking turns on one study: no draw repeats.
    study = optuna.create_study()
    workers = [make_sampler(name, 0), make_sampler(name, 0)]
    draws = []
    for turn in range(12):
        study.sampler = workers[turn % 2]
        draws.append(_draw(study))
    assert len(set(draws)) == 12


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_a_continued_study_does_not_repeat_its_first_draws(name):
    # The second run is a new process: a new sampler with the same seed on the stored study.
    study = optuna.create_study(sampler=make_sampler(name, 0))
    first = [_draw(study) for _ in range(4)]
    study.sampler = make_sampler(name, 0)
    later = [_draw(study) for _ in range(4)]
    assert not set(first) & set(later)


def test_the_same_seed_and_history_draw_the_same_params():
    # Two studies run the same way draw the same: what makes a lone worker reproducible.
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler("tpe", 7))
        runs.append([_draw(study) for _ in range(8)])
    assert runs[0] == runs[1]
    assert trial_seed(7, 3) == trial_seed(7, 3) != trial_seed(7, 4) != trial_seed(8, 4)


def test_a_put_back_trial_and_the_next_one_draw_different_params():
    # A worker stops as it is handed trial 0 and puts it back untried; the next worker on its
    # slot takes it, the one after that gets a new trial: the two must not draw the same.
    study = optuna.create_study(sampler=make_sampler("random", 0))
    put_back(study.ask())
    taken = []
    for _ in range(2):
        study.sampler = make_sampler("random", 0)   # a fresh worker process
        taken.append(_draw(study))
    assert [t.number for t in study.trials] == [0, 1]
    assert taken[0] != taken[1]


def test_qmc_workers_share_one_sequence():
    # Optuna's rule for QMC: every worker the same seed, so two workers taking turns draw the
    # points one worker would have.
    alone = optuna.create_study(sampler=make_sampler("qmc", 0))
    expected = [_draw(alone) for _ in range(6)]
    shared = optuna.create_study()
    workers = [make_sampler("qmc", 0), make_sampler("qmc", 0)]
    draws = []
    for turn in range(6):
        shared.sampler = workers[turn % 2]
        draws.append(_draw(shared))
    assert draws == expected and len(set(draws)) == 6
