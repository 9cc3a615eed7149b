"""`swipr labels` through the real CLI: shared photos reported, foreign files kept, umask followed."""
from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from tests.studykit import ROOT, one_line_error, run_cli, swipr, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels_cli")
    return write_study(folder, folder / "data")


def read_rows(file):
    with open(file, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_copied_photo_is_reported_and_kept_on_one_side(study, tmp_path):
    data = study.parent / "data"
    first = tmp_path / "first.csv"
    assert swipr("labels", study, "-o", first).returncode == 0
    row = read_rows(first)[0]
    # The same bytes under a second path, with the same pics row.
    shutil.copy(data / row["path"], data / (row["path"] + ".copy.jpg"))
    with sqlite3.connect(data / "pics.db") as connection:
        connection.execute("INSERT INTO pics (path, label, invalid, ages, num_people, male_present) "
                           "SELECT path || '.copy.jpg', label, invalid, ages, num_people, male_present "
                           "FROM pics WHERE path = ?", (row["path"],))
    connection.close()
    out = tmp_path / "labels.csv"
    result = swipr("labels", study, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["same_content"] == {"groups": 1, "rows": 2}
    sides = {r["path"]: r["is_valid"] for r in read_rows(out)}
    assert sides[row["path"]] == sides[row["path"] + ".copy.jpg"]
    text = swipr("labels", study, "-o", out)
    assert "identical photos under different paths: 2 rows in 1 groups" in text.stdout


def test_refuses_to_overwrite_a_file_it_did_not_write(study, tmp_path):
    # `-o s.db` must not turn the study's database into a CSV.
    database = tmp_path / "s.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    before = database.read_bytes()
    line = one_line_error(swipr("labels", study, "-o", database))
    assert str(database) in line and "--force" in line
    assert database.read_bytes() == before and not (tmp_path / "s.db.meta.json").exists()
    assert swipr("labels", study, "-o", database, "--force").returncode == 0
    assert database.read_text().startswith("path,label,is_valid\n")
    assert swipr("labels", study, "-o", database).returncode == 0   # now it is a labels file


def test_a_valid_pct_that_leaves_a_class_out_of_training_is_one_line_naming_the_key(tmp_path):
    study = write_study(tmp_path, tmp_path / "data", extra={"data": "valid_pct = 0.99\n"})
    study.write_text(study.read_text().replace("valid_pct = 0.25\n", "", 1))
    line = one_line_error(run_cli("labels", study, "-o", tmp_path / "l.csv"))
    assert f"{study}: [data] valid_pct 0.99 leaves no " in line and "image for training" in line
    assert not (tmp_path / "l.csv").exists()


def test_refuses_a_foreign_meta_file_beside_the_target(study, tmp_path):
    (tmp_path / "l.csv.meta.json").write_text("my notes\n")
    line = one_line_error(swipr("labels", study, "-o", tmp_path / "l.csv"))
    assert "l.csv.meta.json" in line
    assert (tmp_path / "l.csv.meta.json").read_text() == "my notes\n"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_labels_files_follow_the_umask(study, tmp_path, umask):
    out = tmp_path / "labels.csv"
    code = (f"import os, sys; os.umask({umask}); sys.argv = ['swipr', 'labels', {str(study)!r}, '-o', {str(out)!r}]; "
            "from search.cli import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for file in (out, tmp_path / "labels.csv.meta.json"):
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask


def test_rows_whose_ages_were_read_in_part_are_named(study, tmp_path):
    # The demo data has the face model's junk ("25,x,"): skipped by the age rules, and each such
    # row is named (a few, and how many) instead of passing unseen.
    result = swipr("labels", study, "-o", tmp_path / "l.csv", "--json")
    odd = json.loads(result.stdout)["odd_ages"]
    assert odd["rows"] > 0 and all("x" in cell for _, cell in odd["first"])
    lines = [line for line in swipr("labels", study, "-o", tmp_path / "l.csv").stdout.splitlines()
             if line.startswith("ages that are not numbers")]
    assert len(lines) == 1 and f"in {odd['rows']} row{'s' if odd['rows'] != 1 else ''} of pics: row {odd['first'][0][0]} " in lines[0]
