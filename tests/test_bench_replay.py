"""bench/search_efficiency.py's replay: real Optuna studies over recorded curves, pruned as live trials are."""

import pytest

from tests.benchkit import bench_module


@pytest.fixture(scope="module")
def bench():
    with bench_module("search_efficiency") as module:
        yield module


GRID = {"lr": (0.001, 0.01), "cycle_len": (1, 2)}


def curves():
    """cycle_len 1: 4 cycles of 1 epoch; cycle_len 2: 2 cycles of 2. lr 0.01 is good, 0.001 bad."""
    table = {}
    for lr in GRID["lr"]:
        for cycle_len in GRID["cycle_len"]:
            base = 0.3 if lr == 0.01 else 0.8
            losses = [base + 0.1 * (4 - e) + (0.3 if cycle_len == 2 and e % 2 == 0 else 0) for e in range(4)]
            flags = [True] * 4 if cycle_len == 1 else [False, True, False, True]
            table[(lr, cycle_len)] = {"val_loss": losses, "cycle_end": flags}
    return table


def test_the_replay_stops_where_the_pruner_says_and_only_at_cycle_ends(bench):
    table = curves()
    strategy = ("t", "random", "median", "cycle_end", 1)
    rows = bench.replay_study(table, GRID, strategy, seed=0, cap=200)
    pruned = [row for row in rows if row["state"] == "PRUNED"]
    assert pruned, "lr 0.001 runs should be pruned once 3 trials have finished"
    for row in pruned:
        assert row["key"][0] == 0.001 and row["epochs"] < 4
        assert table[row["key"]]["cycle_end"][row["epochs"] - 1]
    assert sum(row["epochs"] for row in rows) >= 200 > sum(row["epochs"] for row in rows[:-1])


def test_without_a_pruner_every_trial_runs_its_whole_curve(bench):
    rows = bench.replay_study(curves(), GRID, ("t", "random", "none", "epoch", 1), seed=0, cap=40)
    assert all(row["state"] == "COMPLETE" and row["epochs"] == 4 for row in rows)


def test_score_counts_epochs_to_target_budget_and_pruned_top_configs(bench):
    rows = [{"key": "a", "state": "COMPLETE", "value": 0.9, "epochs": 4},
            {"key": "top", "state": "PRUNED", "value": None, "epochs": 1},
            {"key": "b", "state": "COMPLETE", "value": 0.5, "epochs": 4},
            {"key": "top", "state": "COMPLETE", "value": 0.4, "epochs": 4}]
    # target 0.51 reached by the third trial, after 4 + 1 + 4 epochs; within 5 epochs only 0.9
    assert bench.score(rows, target=0.51, budget=5, top=["top", "b"]) == {
        "epochs_to_target": 9, "best_at_budget": 0.9, "top_sampled": 3, "top_pruned": 1,
        "best_sampled": 2, "best_pruned": 1}


NESTED_GRID = {"lr": (0.001, 0.01), "freeze": ("unfrozen",), "n_cycles": (1, 2), "cycle_len": (1,), "cycle_mult": (1,)}


def nested_table():
    """1-epoch cycles: the 2-cycle curve starts with the 1-cycle one, as recorded runs do."""
    table = {}
    for lr in NESTED_GRID["lr"]:
        two = [0.5, 0.45] if lr == 0.01 else [0.6, 0.9]
        for n in NESTED_GRID["n_cycles"]:
            table[(lr, "unfrozen", n, 1, 1)] = {"val_loss": two[:n], "cycle_end": [True] * n}
    return table


def test_nested_trials_plan_the_longest_run_and_keep_their_best_finished_schedule(bench):
    rows = bench.replay_study(nested_table(), NESTED_GRID, ("t", "random", "none", "cycle_end", 1, "budget"),
                              seed=0, cap=12)
    assert all(len(row["key"]) == 4 and row["epochs"] == 2 for row in rows)   # n_cycles is no param
    for row in rows:
        # lr 0.001 is best after 1 cycle (0.6, then 0.9): its value is that, not its last loss
        assert row["value"] == (0.45 if row["key"][0] == 0.01 else 0.6)
        assert row["covers"] == {(row["key"][0], "unfrozen", n, 1, 1) for n in (1, 2)}


def test_the_one_epoch_baseline_screens_at_the_first_cycle_end_and_finishes_the_best(bench):
    rows = bench.replay_study(nested_table(), NESTED_GRID, ("t", "random", "none", "cycle_end", 0, "one_epoch"),
                              seed=0, cap=20)
    screen = rows[:bench.ONE_EPOCH_SCREEN]
    assert all(row["epochs"] == 1 and row["state"] in ("PRUNED", "SCREENED") for row in screen)
    kept = rows[bench.ONE_EPOCH_SCREEN:bench.ONE_EPOCH_SCREEN + bench.ONE_EPOCH_KEEP]
    assert [row["state"] for row in kept] == ["COMPLETE"] * bench.ONE_EPOCH_KEEP
    assert all(row["key"][0] == 0.01 and row["value"] == 0.45 and row["epochs"] == 1 for row in kept)


def test_promote_pauses_at_each_cycle_end_draws_each_configuration_once_and_drains(bench):
    rows = bench.replay_study(nested_table(), NESTED_GRID, ("t", "tpe", "none", "cycle_end", 0, "promote:asha"),
                              seed=0, cap=12)
    # Each of the two configurations is drawn once (TPE's distinct draws) and pauses at its first cycle end. With none
    # left to draw, the rung's best (ceil(2/3) = 1: the better lr) goes on to its end, with its
    # best finished schedule (2 cycles: 0.45) as its value; the other stays paused, and the
    # study ends there, below the cap.
    assert [row["epochs"] for row in rows] == [1, 1, 1]
    assert sorted(row["key"][0] for row in rows[:2]) == [0.001, 0.01] and rows[0]["trial"] != rows[1]["trial"]
    assert rows[2]["key"][0] == 0.01 and rows[2]["state"] == "COMPLETE" and rows[2]["value"] == 0.45
