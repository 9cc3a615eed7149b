"""bench/peers.py's accounting: best-so-far within a budget of epochs, and the study-file variants."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "bench" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_a_trial_counts_only_once_its_epochs_are_spent(peers):
    trials = [peers.Finished(7, 0.6, [(3, 0.7), (7, 0.6)]), peers.Finished(2, None, []),
              peers.Finished(4, 0.4, [(4, 0.4)])]
    assert peers.best_at(trials, 6) is None            # the first trial is still running
    assert peers.best_at(trials, 7) == 0.6
    assert peers.best_at(trials, 12) == 0.6            # the third ends after 13 epochs
    assert peers.best_at(trials, 13) == 0.4


def test_on_the_way_counts_a_schedule_finished_inside_a_running_trial(peers):
    trials = [peers.Finished(7, 0.6, [(3, 0.7), (7, 0.6)]), peers.Finished(4, 0.4, [(4, 0.4)])]
    assert peers.best_at(trials, 2, on_the_way=True) is None
    assert peers.best_at(trials, 3, on_the_way=True) == 0.7
    assert peers.best_at(trials, 10, on_the_way=True) == 0.6
    assert peers.best_at(trials, 11, on_the_way=True) == 0.4


def test_compare_takes_the_worst_ratio_over_the_budgets(peers):
    plain = [peers.Finished(4, 0.5, [(4, 0.5)]), peers.Finished(4, 0.45, [(4, 0.45)])]   # 8 epochs
    swipr = [peers.Finished(3, 0.55, [(3, 0.55)]), peers.Finished(5, 0.3, [(5, 0.3)])]
    rows, worst = peers.compare(swipr, plain)
    # at 2 epochs neither has a result (left out), at 4: 0.55 / 0.5, at 8: 0.3 / 0.45
    assert math.isnan(rows[0][4])
    assert worst == pytest.approx(0.55 / 0.5)
    assert rows[-1][4] == pytest.approx(0.3 / 0.45)


def test_a_variant_replaces_the_shipped_study_lines(peers, tmp_path):
    file = peers.study_file(tmp_path, tmp_path / "data", 3, 5, "pruner_warmup_epochs = 1; warm_start = false")
    study = file.read_text().split("[data]")[0]
    assert study.count("pruner_warmup_epochs") == 1 and "pruner_warmup_epochs = 1" in study
    assert "warm_start = false" in study
    assert "seed = 3" in study and "n_trials = 5" in study
    with pytest.raises(SystemExit):
        peers.variant_lines("warm_start false")
