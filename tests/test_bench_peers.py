"""bench/peers.py's accounting: best-so-far within a budget of epochs, and the study-file variants."""
import math

import pytest

from tests.benchkit import bench_module


@pytest.fixture(scope="module")
def peers():
    with bench_module("peers") as module:
        yield module


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


def test_the_study_keeps_the_demos_stage_2_unless_one_stage_and_pretrained_loads_the_weights(peers, tmp_path):
    shipped = peers.study_file(tmp_path, tmp_path / "data", 0, 5).read_text()
    assert "[space.stage2]" in shipped and shipped.endswith(peers.DEMO.read_text().split("\n[space]\n", 1)[1])
    assert 'lr = { finder = "valley"' in shipped and "pretrained = false" in shipped
    one = peers.study_file(tmp_path, tmp_path / "data", 0, 5, form=peers.Form(one_stage=True)).read_text()
    assert "[space]" in one and "[space.stage2]" not in one and "n_cycles = [0, 1, 2]" not in one
    pre = peers.study_file(tmp_path, tmp_path / "data", 0, 5, form=peers.Form(pretrained=True))
    assert f'pretrained = true\nweights = "{peers.WEIGHTS}"' in pre.read_text() and pre.name.endswith("-pretrained.toml")


def test_the_plain_scripts_space_is_the_demos_but_for_stage_1s_range_test(peers):
    import tomllib

    space = tomllib.loads(peers.DEMO.read_text())["space"]
    second = space.pop("stage2")
    assert "finder" in space.pop("lr")   # the plain script has no range test: the range it replaced
    assert {k: v for k, v in space.items() if k != "cycle_len"} == {k: v for k, v in peers.PLAIN_SPACE.items() if k != "lr"}
    assert space["cycle_len"] == 1       # the plain script's fit_sgdr(.., cycle_len=1, ..)
    assert (second.pop("lr")["low"], peers.PLAIN_STAGE2["lr"][1]) == (peers.PLAIN_STAGE2["lr"][0], 0.05)
    assert second == {k: v for k, v in peers.PLAIN_STAGE2.items() if k != "lr"}


def test_a_plain_run_is_cut_at_the_trial_that_reaches_the_epochs(peers):
    trials = [peers.Finished(3, 0.5), peers.Finished(1, None), peers.Finished(4, 0.4), peers.Finished(2, 0.3)]
    assert peers.up_to(trials, 4) == trials[:2]
    assert peers.up_to(trials, 4.5) == trials[:3]      # the trial that passes the total is kept
    assert peers.up_to(trials, 100) == trials


def test_budgets_are_shares_of_the_larger_total(peers):
    swipr = [peers.Finished(2, 0.6, [(2, 0.6)]), peers.Finished(8, 0.3, [(8, 0.3)])]   # 10 epochs
    plain = [peers.Finished(4, 0.5, [(4, 0.5)])]
    rows, worst = peers.compare(swipr, plain)
    assert [row[1] for row in rows] == [2.5, 5.0, 7.5, 10.0]
    assert rows[0][2:] == (0.6, None, 0.0)   # only swipr has finished: ratio 0
    assert rows[-1][4] == pytest.approx(0.6) and worst == pytest.approx(1.2)


def test_a_cached_plain_run_too_short_for_the_comparison_is_made_again(peers, tmp_path, capsys):
    runs = []

    def contender():
        runs.append(1)
        return [peers.Finished(3 * len(runs), 0.5, [(3, 0.5)])]

    made = {"made_by": "bench/peers.py", "code": {}, "settings": {"seed": 0}}
    peers.cached(tmp_path, "plain-0", contender, lambda: made)
    trials, _ = peers.cached(tmp_path, "plain-0", contender, lambda: made, enough=lambda t: t[0].epochs >= 5)
    assert len(runs) == 2 and trials[0].epochs == 6
    assert "fewer than this comparison needs; training it again" in capsys.readouterr().out
    assert peers.cached(tmp_path, "plain-0", contender, lambda: made, run=False,
                        enough=lambda t: t[0].epochs >= 9) is None and len(runs) == 2


def test_the_spread_line_names_min_median_and_max(peers):
    assert peers.spread([1.2, 0.8, 0.9]) == "0.900 (min 0.800, median 0.900, max 1.200)"
