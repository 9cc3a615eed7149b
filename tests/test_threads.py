"""Torch CPU threads per trial: chosen for the machine's cores and the trials sharing them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from objectives.trial_attrs import attrs_of
from search.study.open import open_study
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from swipr_core.train.threads import cpu_threads
from tests.studykit import ROOT, write_study

NO_SETTING: dict[str, str] = {}


def test_a_trial_leaves_a_core_to_the_loader_and_shares_the_rest():
    assert cpu_threads(1, NO_SETTING, cores=2) == 1    # a loaded 2-core machine
    assert cpu_threads(1, NO_SETTING, cores=16) == 15
    assert cpu_threads(4, NO_SETTING, cores=16) == 3
    assert cpu_threads(3, NO_SETTING, cores=2) == 1    # never none
    assert cpu_threads(1, NO_SETTING, cores=1) == 1


def test_set_by_hand_swipr_cpu_threads_wins_then_omp_num_threads():
    assert cpu_threads(4, {"SWIPR_CPU_THREADS": "6", "OMP_NUM_THREADS": "2"}, cores=16) == 6
    assert cpu_threads(4, {"OMP_NUM_THREADS": "2"}, cores=16) == 2
    assert cpu_threads(1, {"OMP_NUM_THREADS": "many"}, cores=16) == 15   # torch ignores that too


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_swipr_cpu_threads_is_refused_by_name(bad):
    with pytest.raises(SwiprError, match=f"SWIPR_CPU_THREADS must be a whole number.*{bad}"):
        cpu_threads(1, {"SWIPR_CPU_THREADS": bad})


def _unset_threads() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("SWIPR_CPU_THREADS", "OMP_NUM_THREADS")}


def _trial_threads(path) -> list[int]:
    study = open_study(load_study_file(path), create=False)
    return [attrs_of(trial)["cpu_threads"] for trial in study.trials]


def _run(path, *args, env) -> None:
    """`swipr study run` of one trial, in the environment given (not this one with more on top)."""
    result = subprocess.run([sys.executable, "-m", "search.cli", "study", "run", str(path), "--n-trials", "1",
                             *args], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_a_study_run_here_trains_with_the_chosen_thread_count(tmp_path, data_dir):
    # torch's default would be one thread a core
    path = write_study(tmp_path, data_dir)
    _run(path, env=_unset_threads())
    assert _trial_threads(path) == [cpu_threads(1, NO_SETTING)]


@pytest.mark.slow
def test_each_worker_process_trains_with_the_thread_count_set_by_hand(tmp_path, data_dir):
    path = write_study(tmp_path, data_dir)
    _run(path, "--workers", "2", env={**_unset_threads(), "SWIPR_CPU_THREADS": "3"})
    assert _trial_threads(path) == [3]
