"""A --workers trial process trains on the data the driver prepared and checked, once a run."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import optuna
import pytest

from search.study.open import open_study
from search.studyfile import load_study_file
from tests.studykit import ROOT, write_study

# The driver's part (prepare the data, record its fingerprint on the study), then every photo
# removed: a trial process that prepared the data again would find none and fail.
DRIVER_THEN_TRIAL = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    from search.running.stop import StopFlag
    from search.running.worker import run_trial_process
    from search.study.data_record import check_fingerprint, prepare_study_data
    from search.study.open import open_study
    from search.studyfile import load_study_file

    study_file = load_study_file(sys.argv[1])
    dataset = prepare_study_data(study_file)
    check_fingerprint(open_study(study_file, create=True), dataset, study_file)
    for folder in sys.argv[2:]:
        shutil.rmtree(folder)
    sys.exit(run_trial_process(study_file, "worker 0", 0, "cpu", StopFlag(), verified=dataset))
""")


@pytest.mark.slow
def test_a_trial_process_trains_on_the_drivers_data_without_preparing_it_again(tmp_path, data_dir):
    data = shutil.copytree(data_dir, tmp_path / "data")
    path = write_study(tmp_path, data)
    photos = [str(data / top) for top in ("insta", "Tinder", "misc")]
    result = subprocess.run([sys.executable, "-c", DRIVER_THEN_TRIAL, str(path), *photos], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    study = open_study(load_study_file(path), create=False)
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE]
