"""[space] lr = { finder = "valley", factor = ... }: a trial trains at the range test's suggestion
for its freeze, batch size and image size times its lr_factor; the range test runs once per
combination and is kept on the study, and `swipr fit` replays such a trial."""
from __future__ import annotations

import json

import pytest

from objectives.lr_finder import FINDER_LR_ATTR, LR_ATTR
from objectives.lr_record import finding_attr, record_finding, recorded_findings
from objectives.space import FINDER_SUGGESTIONS, Choices, FinderLR, Range
from search.study.data_record import check_fingerprint, prepare_study_data
from search.study.open import open_study
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from swipr_core.lr_find import SUGGESTIONS, LRFinding
from tests.studykit import run_cli, space_toml, write_study


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
    return study, folder / "bundle"


def test_one_range_test_serves_every_trial_of_its_combination(searched):
    study_path, _ = searched
    study = open_study(load_study_file(study_path), create=False)
    records = recorded_findings(study)
    assert len(records) == 1 and len(records[0]["lrs"]) == 100
    valley = records[0]["suggestions"]["valley"]
    for trial in study.trials:
        assert "lr" not in trial.params and 0.3 <= trial.params["lr_factor"] <= 3
        assert trial.user_attrs[FINDER_LR_ATTR] == valley
        assert trial.user_attrs[LR_ATTR] == pytest.approx(valley * trial.params["lr_factor"])


def test_fit_replays_a_finder_trial_at_its_lr(searched):
    study_path, bundle = searched
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
    record_finding(study, made_up, 3, dataset.fingerprint, None)
    before = study.user_attrs[finding_attr("unfrozen", 16, 32)]
    ran = run_cli("study", "run", study_file.path, "--n-trials", 1)
    assert ran.returncode == 0, ran.stderr
    study = open_study(study_file, create=False)
    assert study.trials[0].user_attrs[LR_ATTR] == pytest.approx(0.0084)
    assert study.user_attrs[finding_attr("unfrozen", 16, 32)] == before


def test_lr_find_shades_the_lrs_the_finder_form_will_search():
    from search.commands.lr_find import lr_range

    spec = FinderLR("valley", Range(0.3, 3, log=True))
    assert lr_range(spec, {"valley": 0.01, "steep": 0.5}) == pytest.approx((0.003, 0.03))
    assert lr_range(FinderLR("slide", Choices((0.5, 2.0))), {"slide": 0.1}) == pytest.approx((0.05, 0.2))
    assert lr_range(spec, {"steep": 0.5}) is None   # no valley on this curve: nothing to shade
