"""bench/lr_finder_vs_plain.py's equal-compute figures: each study's best within the smaller total."""
import math

import pytest

from tests.benchkit import bench_module


@pytest.fixture(scope="module")
def bench():
    with bench_module("lr_finder_vs_plain") as module:
        yield module


def test_equal_compute_counts_the_range_tests_and_stops_at_the_smaller_total(bench):
    T, O = bench.Trial, bench.Outcome
    plain = O(trials=[T(4, 0.0, 0.6), T(4, 0.0, 0.5), T(4, 0.0, 0.45)], train_epochs=12)              # 12 epochs
    finder = O(trials=[T(3, 4.0, 0.4), T(3, 0.0, None), T(3, 0.0, 0.3)], train_epochs=9, range_epochs=4.0)  # 13
    assert bench.equal_compute(plain, finder) == (12.0, 0.45, 0.4)   # the finder's 0.3 ends at 13 epochs
    assert bench.equal_compute(finder, plain)[0] == 12.0
    short = O(trials=[T(2, 6.0, 0.4)], train_epochs=2, range_epochs=6.0)                             # 8 epochs
    assert bench.equal_compute(plain, short) == (8.0, 0.5, 0.4)
    assert bench.best_within(short, 7.9) == math.inf and bench.loss_ratio(math.inf, 0.5) == math.inf
