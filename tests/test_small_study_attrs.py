"""A study's user attrs stay small and human: the bulky records (range-test curves, the recorded
search space, the excluded rows) are study system attrs, so `optuna studies` prints readable rows;
older studies, which kept them as user attrs, still read."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna

from objectives.lr_record import add_finding, new_record, recorded_findings
from search.study.data_record import EXCLUDED_ATTR, check_fingerprint, data_summary
from search.study.space_record import check_space
from search.studyfile import load_study_file
from swipr_core.train.lr_finding import LRFinding
from tests.studykit import write_study

EXCLUDED = {"invalid_flag": 18, "invalid_label": 18, "outside_dirs": 24, "missing_file": 12, "undecodable": 12,
            "outside_root": 1, "duplicate_path": 1, "conflicting_labels": 2}


def fake_dataset() -> SimpleNamespace:
    """What check_fingerprint reads of a dataset: the demo's counts and exclusions."""
    split = SimpleNamespace(counts=lambda: {"YES": 99, "NO": 417, "valid": 103}, meta={"excluded": EXCLUDED},
                            targets=lambda: [0] * 83 + [1] * 20, is_valid=[True] * 103)
    return SimpleNamespace(fingerprint="91e365685de95bd5", split=split)


def test_optuna_studies_prints_rows_of_400_characters_at_most(tmp_path):
    # The demo's study attrs: data record, search space, six range tests (each ~2 kB of curve).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'demo.db'}"
    study = optuna.create_study(study_name="demo", storage=storage)
    check_fingerprint(study, fake_dataset(), None)   # type: ignore[arg-type]
    study.set_user_attr("n_cycles_mode", "budget")
    check_space(study, load_study_file(write_study(tmp_path, tmp_path / "data")))
    for size in (16, 32):
        for px in (32, 40):
            curve = LRFinding("unfrozen", size, px, lrs=tuple(np.logspace(-7, 1, 100)),
                              losses=tuple(np.linspace(0.9, 3, 100)), suggestions={"valley": 0.019, "slide": 0.069})
            add_finding(study, new_record(curve, 100, "91e365685de95bd5", None, "search", 0))
    printed = subprocess.run([str(Path(sys.executable).parent / "optuna"), "studies", "--storage", storage],
                             capture_output=True, text=True, check=True).stdout
    assert max(len(line) for line in printed.splitlines()) <= 400, printed
    assert "'data_fingerprint': '91e365685de95bd5'" in printed   # the human attrs are still there
    assert len(recorded_findings(study)[0]) == 4 and data_summary(study)["excluded"] == EXCLUDED


def test_an_older_studys_excluded_rows_still_read():
    study = optuna.create_study()
    study.set_user_attr(EXCLUDED_ATTR, {"missing_file": 5})
    assert data_summary(study)["excluded"] == {"missing_file": 5}
