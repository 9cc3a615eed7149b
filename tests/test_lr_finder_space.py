"""[space] lr = { finder = "valley", factor = ... }: a trial trains at the range test's suggestion
for its freeze, batch size and image size times its lr_factor; the range test runs once per
combination and is kept on the study, and `swipr fit` replays such a trial."""
from __future__ import annotations

import json
import re

import pytest

from objectives.lr_record import FINDER_LR_ATTR, FINDING_ATTR, LR_ATTR
from objectives.lr_record import add_finding, new_record, range_test_cost, recorded_findings
from objectives.space import FINDER_SUGGESTIONS, Choices, FinderLR, Range
from objectives.trial_attrs import attrs_of
from search.study.data_record import check_fingerprint, prepare_study_data
from search.study.open import open_study
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from swipr_core.train.lr_find import SUGGESTIONS
from swipr_core.train.lr_finding import LRFinding
from tests.studykit import one_line_error, run_cli, space_toml, write_study


def finder_space(factor: str = "{ low = 0.3, high = 3, log = true }") -> str:
    return space_toml(lr=f'{{ finder = "valley", factor = {factor} }}', batch_size="[16]")


def test_the_finder_form_reads_into_a_finder_and_a_factor(tmp_path, data_dir):
    space = load_study_file(write_study(tmp_path, data_dir, space=finder_space())).space
    assert space["lr"] == FinderLR("valley", Range(0.3, 3, log=True, is_int=False))
    one = load_study_file(write_study(tmp_path, data_dir, "one.toml", space=finder_space("[0.5, 1, 2]"))).space
    assert one["lr"] == FinderLR("valley", Choices((0.5, 1.0, 2.0)))
    assert FINDER_SUGGESTIONS == tuple(SUGGESTIONS)   # the study file's names are the core's


@pytest.mark.parametrize("lr, expected", [
    ('{ finder = "best" }', "[space] lr finder must be one of valley, slide, minimum, steep, got 'best'"),
    ('{ finder = "valley", factor = { low = 0, high = 3 } }', "[space] lr factor must be a positive number, got 0"),
    ('{ finder = "valley", factor = { low = 3, high = 1 } }', "[space] lr_factor low (3) is above high (1)"),
    ('{ finder = "valley", by = 2 }', "unknown key 'by' in [space] lr (known with finder: finder, factor)"),
    ('{ finder = "valley", factor = [] }', "[space] lr factor has no choices"),
    # no range test suggests below 1e-7: a factor of 1e7 or more can only make an lr of 1 or more
    ('{ finder = "valley", factor = { low = 1, high = 1e8, log = true } }', "[space] lr factor goes up to 1e+08"),
    ('{ finder = "minimum", factor = [2, 2e7] }', "[space] lr factor goes up to 2e+07"),
])
def test_a_bad_finder_form_names_what_is_wrong(tmp_path, data_dir, lr, expected):
    space = finder_space().replace('{ finder = "valley", factor = { low = 0.3, high = 3, log = true } }', lr)
    with pytest.raises(SwiprError) as error:
        load_study_file(write_study(tmp_path, data_dir, space=space))
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, data_dir):
    """Two trials of one combination, no range test on the study beforehand; then a fit."""
    folder = tmp_path_factory.mktemp("finder-study")
    study = write_study(folder, data_dir, space=finder_space())
    ran = run_cli("study", "run", study, "--n-trials", 2)
    assert ran.returncode == 0, ran.stderr
    fit = run_cli("fit", study, "--out", folder / "bundle")
    assert fit.returncode == 0, fit.stderr
    return study, folder / "bundle", ran


def test_one_range_test_serves_every_trial_of_its_combination(searched):
    study_path, _, _ = searched
    study = open_study(load_study_file(study_path), create=False)
    records = [r for r in recorded_findings(study)[0] if r["cost"]["by"] == "search"]   # not the lr-find test's below
    assert len(records) == 1 and len(records[0]["lrs"]) == 100
    valley = records[0]["suggestions"]["valley"]
    for trial in study.trials:
        assert "lr" not in trial.params and 0.3 <= trial.params["lr_factor"] <= 3
        assert attrs_of(trial)[FINDER_LR_ATTR] == valley
        assert attrs_of(trial)[LR_ATTR] == pytest.approx(valley * trial.params["lr_factor"])
        # the finding it trained with, by version
        assert attrs_of(trial)[FINDING_ATTR] == {"key": "unfrozen:bs16:px32", "version": 1, "finder": "valley",
                                                  "suggestion": valley, "factor": trial.params["lr_factor"],
                                                  "lr": attrs_of(trial)[LR_ATTR]}


def test_the_searchs_range_test_says_what_it_cost(searched):
    study_path, _, ran = searched
    lines = [line for line in ran.stdout.splitlines() if "range test unfrozen:bs16:px32" in line]
    assert len(lines) == 1, ran.stdout   # one test, run by trial 0, served both trials
    assert re.fullmatch(r"trial 0: range test unfrozen:bs16:px32 v1: valley \d\.\de-\d\d, \d+\.\d s "
                        r"≈ \d+\.\d epochs \(100 batches\)", lines[0]), lines[0]
    study = open_study(load_study_file(study_path), create=False)
    records, _ = recorded_findings(study)   # v1; and v2 where the lr-find test below ran first
    record = records[0]
    assert record["version"] == 1 and record["cost"]["by"] == "search" and record["cost"]["trial"] == 0 and record["cost"]["seconds"] > 0
    dataset = prepare_study_data(load_study_file(study_path))
    n_train = len(dataset.split) - sum(dataset.split.is_valid)
    assert record["cost"]["epochs_equivalent"] == pytest.approx(100 * 16 / n_train, abs=0.01)
    cost = range_test_cost(study)
    assert (cost["count"], cost["seconds"], cost["epochs_equivalent"]) == pytest.approx(
        (len(records), sum(r["cost"]["seconds"] for r in records), sum(r["cost"]["epochs_equivalent"] for r in records)))


def test_lr_find_after_a_run_adds_a_version_and_leaves_the_trials_finding(searched):
    # Same data, seed, threads and batches as trial 0's own test: the same curve;
    # the trials trained with v1, so the search keeps it: v2 is kept beside it, not used.
    study_path, _, _ = searched
    ran = run_cli("lr-find", study_path)
    assert ran.returncode == 0, ran.stderr
    assert "the search keeps using v1 for unfrozen:bs16:px32 (trials 0, 1 trained with it)" in ran.stdout
    study = open_study(load_study_file(study_path), create=False)
    first, second = recorded_findings(study)[0][:2]
    assert (first["version"], first["current"], second["version"], second["current"]) == (1, True, 2, False)
    assert second["losses"] == first["losses"] and second["suggestions"] == first["suggestions"]
    assert second["cpu_threads"] == first["cpu_threads"] and second["cost"]["by"] == "lr-find"
    assert all(attrs_of(trial)[FINDING_ATTR]["version"] == 1 for trial in study.trials)
    # the user picks the new test after all, with no test run; a version the study lacks is one line
    assert "--use-version 2 (with the same flags)" in ran.stdout
    chose = run_cli("lr-find", study_path, "--use-version", 2)
    assert chose.returncode == 0 and "the search uses v2 for unfrozen:bs16:px32 from now on" in chose.stdout
    assert [r["current"] for r in recorded_findings(open_study(load_study_file(study_path), create=False))[0]] == \
        [False, True]
    assert "--use-version 9: the study has no range test unfrozen:bs16:px32 version 9 (it has v1, v2)" in \
        one_line_error(run_cli("lr-find", study_path, "--use-version", 9))


def test_fit_replays_a_finder_trial_at_its_lr(searched):
    study_path, bundle, _ = searched
    manifest = json.loads((bundle / "manifest.json").read_text())
    study = open_study(load_study_file(study_path), create=False)
    assert manifest["trial"] == study.best_trial.number and manifest["replay"]["matched"]


def test_a_range_test_on_the_study_is_reused_not_run_again(tmp_path, data_dir):
    # A record with a made-up valley: the trial must train at it, and the record stay as it was.
    study_file = load_study_file(write_study(tmp_path, data_dir, space=finder_space("2.0")))
    dataset = prepare_study_data(study_file)
    study = open_study(study_file, create=True)
    check_fingerprint(study, dataset, study_file)
    made_up = LRFinding("unfrozen", 16, 32, lrs=(1e-7, 1e-3, 1.0), losses=(1.0, 0.5, 2.0),
                        suggestions={"valley": 0.0042})
    add_finding(study, new_record(made_up, 3, dataset.fingerprint, None, "lr-find"))
    before = recorded_findings(study)
    ran = run_cli("study", "run", study_file.path, "--n-trials", 1)
    assert ran.returncode == 0, ran.stderr
    study = open_study(study_file, create=False)
    assert attrs_of(study.trials[0])[LR_ATTR] == pytest.approx(0.0084)
    assert recorded_findings(study) == before and "range test unfrozen" not in ran.stdout   # none ran


def test_lr_find_shades_the_lrs_the_finder_form_will_search():
    from search.commands.lr_find import lr_range

    spec = FinderLR("valley", Range(0.3, 3, log=True))
    assert lr_range(spec, {"valley": 0.01, "steep": 0.5}) == pytest.approx((0.003, 0.03))
    assert lr_range(FinderLR("slide", Choices((0.5, 2.0))), {"slide": 0.1}) == pytest.approx((0.05, 0.2))
    assert lr_range(spec, {"steep": 0.5}) is None   # no valley on this curve: nothing to shade


def test_a_finder_lr_of_1_or_more_fails_the_trial_not_the_run(tmp_path, data_dir):
    # minimum 0.6 x factor 2 = lr 1.2: that trial fails with its reason; the run goes on (no exit 2).
    study_file = load_study_file(write_study(tmp_path, data_dir, space=finder_space("2.0")))
    dataset = prepare_study_data(study_file)
    study = open_study(study_file, create=True)
    check_fingerprint(study, dataset, study_file)
    made_up = LRFinding("unfrozen", 16, 32, lrs=(1e-7, 1e-3, 1.0), losses=(1.0, 0.5, 2.0), suggestions={"valley": 0.6})
    add_finding(study, new_record(made_up, 3, dataset.fingerprint, None, "lr-find"))
    ran = run_cli("study", "run", study_file.path, "--n-trials", 2)
    assert ran.returncode != 2, ran.stderr
    assert "trial 0: failed: FindingUnusable: range test unfrozen:bs16:px32 v1: valley 0.6 x lr_factor 2 is lr 1.2" \
        in ran.stdout, ran.stdout
    trials = open_study(study_file, create=False).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]   # the run went on to trial 1
    assert all("an lr must be between 0 and 1" in attrs_of(t)["fail_reason"] for t in trials)
