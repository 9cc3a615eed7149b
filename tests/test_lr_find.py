"""`swipr lr-find`: fastai's range test on the study's data and model, its suggestions printed,
its plot written, the curve kept on the study, and the dashboard and the report showing it."""
from __future__ import annotations

import json
import re
import threading
import urllib.request

import numpy as np
import optuna
import pytest
from fastai.callback.schedule import minimum, slide, steep, valley
from optuna.artifacts import get_all_artifact_meta

from objectives.lr_record import add_finding, new_record, recorded_findings
from objectives.optuna_compat import storage_of, study_id
from search.study.data_record import prepare_study_data
from search.study.open import open_study
from search.studyfile import load_study_file
from search.views.dashboard import make_dashboard_server
from search.views.report import render_report
from swipr_core.train.lr_find import SUGGESTIONS, suggest
from swipr_core.train.lr_finding import LRFinding
from swipr_core.train.run import build_learner
from swipr_core.train.schedule import TrainConfig
from tests.studykit import one_line_error, run_cli, write_study

PNG = b"\x89PNG\r\n\x1a\n"
NUM_IT = 24
SUGGESTION_LINE = re.compile(r"^(valley|slide|minimum|steep): (\d\.\de[-+]\d\d)$", re.M)


@pytest.fixture(scope="module")
def found(tmp_path_factory, data_dir):
    """The command run once on a fresh study file (no study in the storage yet)."""
    folder = tmp_path_factory.mktemp("lr-find")
    study = write_study(folder, data_dir)
    result = run_cli("lr-find", study, "--num-it", NUM_IT)
    assert result.returncode == 0, result.stderr
    return study, result


def test_it_prints_each_suggestion_on_its_own_line(found):
    _, result = found
    printed = dict(SUGGESTION_LINE.findall(result.stdout))
    assert list(printed) == ["valley", "slide", "minimum", "steep"], result.stdout
    assert all(1e-7 <= float(lr) <= 10 for lr in printed.values())
    # the space's first values where no flag says otherwise
    assert "range test: unfrozen, batch size 16, 32 px, 24 batches" in result.stdout


def test_in_a_pipe_it_says_how_far_the_test_is_in_a_few_lines(found):
    # the ~40 s test says how far it is: a terminal gets a bar, a pipe a line a quarter
    _, result = found
    done = re.findall(r"^range test: (\d+) batches of 24, lr \d\.\de-\d\d, loss \d+\.\d{4}$", result.stdout, re.M)
    assert done[:1] == ["6"] and len(done) <= 4 and "\r" not in result.stdout, result.stdout
    assert result.stdout.startswith("data: reading the labels and checking the image cache...\n")


def test_the_plot_is_written_beside_the_study_file_by_default(found):
    study, result = found
    picture = study.parent / "study.lr_find" / "lr_find.png"
    assert picture.read_bytes().startswith(PNG) and f"wrote {picture}" in result.stdout
    assert [p.name for p in picture.parent.iterdir()] == ["lr_find.png"]   # no temp file left


def test_the_curve_and_suggestions_are_kept_on_the_study(found):
    study_path, result = found
    study_file = load_study_file(study_path)
    study = open_study(study_file, create=False)
    records, skipped = recorded_findings(study)
    [record] = [r for r in records if r["key"] == "unfrozen:bs16:px32"]   # the second combination's test may be there
    assert skipped == [] and (record["version"], record["current"]) == (1, True)
    assert len(record["lrs"]) == len(record["losses"]) == NUM_IT
    assert record["lrs"] == sorted(record["lrs"]) and record["lrs"][0] == pytest.approx(1e-7)
    printed = dict(SUGGESTION_LINE.findall(result.stdout))
    assert {name: f"{lr:.1e}" for name, lr in record["suggestions"].items()} == printed
    assert record["lr_range"] == [1e-3, 3e-2]   # tests.studykit.SPACE's lr
    assert record["data_fingerprint"] == prepare_study_data(study_file).fingerprint
    names = [meta.filename for meta in get_all_artifact_meta(study, storage=storage_of(study))]
    assert names == ["lr_find_unfrozen_bs16_px32_v1.png"]
    assert "the search uses v1 for unfrozen:bs16:px32" in result.stdout


def test_the_dashboard_serves_the_curve_and_the_plot(found):
    study_path, _ = found
    server, study = make_dashboard_server(load_study_file(study_path), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{base}/api/studies/{study_id(study)}", timeout=30) as answer:
            served = json.load(answer)
        artifact = served["artifacts"][0]
        with urllib.request.urlopen(f"{base}/artifacts/{study_id(study)}/{artifact['artifact_id']}",
                                    timeout=30) as answer:
            picture = answer.read()
    finally:
        server.shutdown()
        server.server_close()
    assert artifact["filename"] == "lr_find_unfrozen_bs16_px32_v1.png" and picture.startswith(PNG)
    # the curve is a system attr: the user attrs the dashboard (and `optuna studies`) list stay short
    assert len(json.dumps(served["user_attrs"])) < 400, served["user_attrs"]


def test_the_report_draws_the_curve_and_lists_the_suggestions(found, tmp_path):
    study_path, result = found
    report = run_cli("study", "report", study_path, "--out", tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    section = page.split('<section id="lr-find">')[1].split("</section>")[0]
    assert "LR finder: unfrozen, batch size 16, 32 px, v1 (the search uses it)" in section
    assert section.count('<img alt="lr_find.png" src="data:image/png;base64,') == 1
    for name, lr in SUGGESTION_LINE.findall(result.stdout):
        assert f"<th>{name}</th><td>{lr}</td>" in section


def test_a_second_combination_is_kept_beside_the_first_and_flags_choose_it(found):
    study_path, _ = found
    result = run_cli("lr-find", study_path, "--num-it", 20, "--freeze", "frozen_then_unfrozen",
                     "--batch-size", 32, "--use")
    assert result.returncode == 0, result.stderr
    assert "range test: frozen_then_unfrozen after 1 head epoch(s) at 0.002, batch size 32" in result.stdout
    assert "the search uses v1 for frozen_then_unfrozen:head1:bs32:px32" in result.stdout
    study = open_study(load_study_file(study_path), create=False)
    assert [(r["key"], r["num_it"]) for r in recorded_findings(study)[0]] == \
        [("frozen_then_unfrozen:head1:bs32:px32", 20), ("unfrozen:bs16:px32", NUM_IT)]


def test_suggestions_are_fastais_own(data_dir, tmp_path):
    # The same curve through fastai's lr_find suggestions and through suggest(): the same lrs.
    study_file = load_study_file(write_study(tmp_path, data_dir))
    config = TrainConfig(lr=1e-3, batch_size=16, image_size=32, freeze="unfrozen", n_cycles=1, cycle_len=1,
                         cycle_mult=1)
    learn, _, _ = build_learner(prepare_study_data(study_file), config, study_file.model, device="cpu")
    with learn.no_bar():
        theirs = learn.lr_find(num_it=30, show_plot=False, suggest_funcs=(valley, slide, minimum, steep))
    assert list(SUGGESTIONS) == ["valley", "slide", "minimum", "steep"]
    ours, unreadable = suggest([float(x) for x in learn.recorder.lrs], [float(x) for x in learn.recorder.losses], 30)
    assert unreadable == {}
    assert ours == pytest.approx(dict(zip(SUGGESTIONS, theirs, strict=True)), rel=1e-6)   # a named tuple, in that order


def test_a_curve_cut_short_still_gives_the_suggestions_it_can():
    # 20 batches, 13 read (2 to 15): too few for slide (it compares points 15 apart), enough for the rest.
    lrs = list(np.logspace(-7, 1, 20))
    losses = list(1 + (np.log10(lrs) + 3) ** 2 / 20)   # a valley around 1e-3
    found, unreadable = suggest(lrs, losses, 20)
    assert set(found) == {"valley", "minimum", "steep"} and list(unreadable) == ["slide"]
    assert "13 usable points" in unreadable["slide"]
    assert 1e-5 < found["minimum"] * 10 < 1e-1   # minimum is a tenth of the lowest point's lr


def test_a_study_with_no_range_test_says_how_to_get_one():
    study = optuna.create_study()
    section = render_report(study).split('<section id="lr-find">')[1].split("</section>")[0]
    assert "No range test yet" in section and "swipr lr-find STUDY.toml" in section and "<img" not in section


def test_a_stored_finding_without_suggestions_says_why_in_the_report():
    study = optuna.create_study()
    finding = LRFinding("frozen", 8, 40, lrs=tuple(np.logspace(-7, 1, 30)), losses=tuple(np.linspace(1, 2, 30)),
                        suggestions={"valley": 1e-3}, unreadable={"slide": "the curve has 9 usable points"})
    add_finding(study, new_record(finding, 30, "abc", None, "lr-find"))
    section = render_report(study).split('<section id="lr-find">')[1].split("</section>")[0]
    assert "<th>valley</th><td>1.0e-03</td>" in section
    assert "<th>slide</th><td>none: the curve has 9 usable points</td>" in section


@pytest.mark.parametrize("flags, expected", [
    (["--batch-size", "1"], "--batch-size: batch_size must be 2 or more"),
    (["--freeze", "thawed"], "--freeze: freeze must be one of frozen, unfrozen, frozen_then_unfrozen"),
    (["--image-size", "64"], "image size 64 is above"),
    (["--num-it", "5"], "--num-it: num_it must be a whole number between 20 and 10000, got 5"),
    (["--device", "gpu"], "--device: device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_flags_are_one_line_errors_before_any_work(tmp_path, data_dir, flags, expected):
    study = write_study(tmp_path, data_dir)
    assert expected in one_line_error(run_cli("lr-find", study, *flags))
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "study.lr_find").exists()


def test_a_missing_study_file_or_an_out_that_is_a_file_is_one_line_error(tmp_path, data_dir):
    assert "study file not found" in one_line_error(run_cli("lr-find", tmp_path / "nope.toml"))
    study = write_study(tmp_path, data_dir)
    (tmp_path / "taken").write_text("x")
    assert f"--out {tmp_path / 'taken'}: can't make the folder" in one_line_error(
        run_cli("lr-find", study, "--out", tmp_path / "taken"))
