"""`swipr study report`: one self-contained HTML page that names every plot and opens cleanly."""
from __future__ import annotations

import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.views.artifacts import PICTURES
from search.views.report import PLOTS, REPORT_FILE, render_report
from tests.studykit import Chromium, finished_demo_study, needs_chromium, run_cli, write_study

INLINE_PNG = re.compile(r'<img alt="([a-z_]+\.png)" src="data:image/png;base64,')


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    study, _ = finished_demo_study(tmp_path_factory)
    folder = tmp_path_factory.mktemp("report")
    result = run_cli("study", "report", study, "--out", folder / "out")
    assert result.returncode == 0, result.stderr
    path = folder / "out" / REPORT_FILE
    assert result.stdout.strip() == f"wrote {path}"
    return path


def test_the_report_names_every_plot_and_inlines_everything(report):
    page = report.read_text(encoding="utf-8")
    for anchor, title, _ in PLOTS:
        assert f'<section id="{anchor}"><h2>{title}</h2>' in page
        assert f'id="plot-{anchor}"' in page, f"{title} was not drawn"
    assert len(re.findall(r"plotly\.js v\d", page)) == 1          # plotly.js inlined once
    outside_scripts = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"""(src|href)=["']https?:""", outside_scripts)   # nothing fetched from elsewhere
    assert INLINE_PNG.findall(page) == list(PICTURES)            # the best trial's four pictures
    assert "Best trial: " in page and "split fingerprint" in page and "YES share" in page


@needs_chromium
def test_the_report_opens_in_chromium_without_errors(report, tmp_path):
    browser = Chromium()
    try:
        browser.go(report.as_uri())
        drawn_ids = ("Array.from(document.querySelectorAll('.plotly-graph-div'))"
                     ".filter(d => d.querySelector('.main-svg')).map(d => d.id)")
        # every plot, not some: plotly draws them one by one, slower on a loaded machine
        browser.wait_for(f"{drawn_ids}.length >= {len(PLOTS)}")
        drawn = browser.evaluate(drawn_ids)
        assert drawn == [f"plot-{anchor}" for anchor, _, _ in PLOTS]
        images = browser.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert len(images) == len(PICTURES) and all(width > 100 for width in images)
        assert browser.errors == []
        from tests.studykit import SCREENSHOTS

        browser.screenshot(SCREENSHOTS / "report.png")
    finally:
        browser.close()


def _trial(number_value, lr, state=TrialState.COMPLETE, intermediate=None):
    return create_trial(state=state, value=number_value if state == TrialState.COMPLETE else None,
                        params={"lr": lr, "freeze": "unfrozen"},
                        distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True),
                                       "freeze": CategoricalDistribution(["unfrozen"])},
                        intermediate_values=intermediate or {0: 0.9}, user_attrs={"val_accuracy": 0.5})


def test_with_one_finished_trial_importances_say_why_and_the_rest_still_draws():
    study = optuna.create_study()
    study.add_trial(_trial(0.5, 0.01))
    study.add_trial(_trial(None, 0.03, TrialState.PRUNED, {0: 2.0}))
    page = render_report(study)
    importances = page.split('<section id="importances">')[1].split("</section>")[0]
    assert "No plot yet: parameter importances need 2 or more finished trials, and this study has 1" in importances
    assert 'id="plot-history"' in page and 'id="plot-intermediate"' in page
    assert "Trial1 (pruned)" in page                                 # the pruned line is named
    assert "No pictures stored for this trial" in page              # no artifact store given
    assert "1 complete, 1 pruned" in page


def test_an_empty_study_still_gets_a_page():
    page = render_report(optuna.create_study())
    assert "No trial has completed yet." in page and page.rstrip().endswith("</html>")


def test_importances_leave_out_a_param_held_fixed():
    study = optuna.create_study()
    for value, lr in ((0.5, 0.01), (0.7, 0.03), (0.6, 0.002)):
        study.add_trial(_trial(value, lr))
    importances = render_report(study).split('<section id="importances">')[1].split("</section>")[0]
    assert 'id="plot-importances"' in importances and '"lr"' in importances and '"freeze"' not in importances


def test_report_of_a_study_that_never_ran_is_one_line_error(tmp_path):
    study = write_study(tmp_path, tmp_path / "data")
    result = run_cli("study", "report", study, "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_one_line_error(report, tmp_path, tmp_path_factory):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    study, _ = finished_demo_study(tmp_path_factory)
    result = run_cli("study", "report", study, "--out", blocker)
    assert result.returncode == 2 and result.stderr.startswith(f"swipr: error: --out {blocker}: can't write")
    assert blocker.read_text() == "not a folder"
