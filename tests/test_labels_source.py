"""The labels file records the pics database it was made from (path, size, mtime, SHA-256):
a study file that now names other data is refused in one line, never trained on old labels
with the new database's images; the same bytes moved or touched are still the same data."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from search.study.data_record import prepare_study_data
from search.studyfile import load_study_file
from swipr_core.data.demo import write_demo_data
from swipr_core.data.split import meta_path
from swipr_core.errors import SwiprError
from tests.studykit import one_line_error, run_cli, write_study


@pytest.fixture
def study(tmp_path, data_dir) -> Path:
    """A study file over its own copy of the demo data, with its labels file made."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    path = write_study(tmp_path, data)
    result = run_cli("labels", path)
    assert result.returncode == 0, result.stderr
    return path


def _labels(path: Path) -> Path:
    return load_study_file(path).data.labels_file


def _pointed_at(path: Path, database: Path) -> None:
    text = path.read_text()
    start = text.index('database = "') + len('database = "')
    path.write_text(text[:start] + str(database) + text[text.index('"', start):])


def test_the_labels_file_records_its_database(study):
    record = json.loads(meta_path(_labels(study)).read_text())["database"]
    database = load_study_file(study).data.database
    assert record["path"] == str(database.resolve()) and record["bytes"] == database.stat().st_size
    assert len(record["sha256"]) == 64 and record["mtime_ns"] == database.stat().st_mtime_ns


def test_another_database_is_refused_while_the_old_labels_file_exists(study, tmp_path):
    # [data] database edited to point at other data: unrefused, the run would train on the old
    # labels and read images from the new database's folder.
    labels = _labels(study)
    before = labels.read_bytes()
    other = write_demo_data(tmp_path / "other", n_images=130, image_px=40, seed=1)
    _pointed_at(study, other)
    line = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert f"{labels}: was made from {tmp_path / 'data' / 'pics.db'}" in line
    assert f"[data] database is {other}" in line and "swipr labels" in line
    assert labels.read_bytes() == before   # refused, not remade: the study's split is kept
    # `swipr labels` remakes it from the new database, as the message says; then it is accepted.
    assert run_cli("labels", study).returncode == 0
    assert json.loads(meta_path(labels).read_text())["database"]["path"] == str(other.resolve())
    assert prepare_study_data(load_study_file(study)).split.meta["database"]["path"] == str(other.resolve())


def test_a_database_changed_in_place_is_refused(study):
    database = load_study_file(study).data.database
    with sqlite3.connect(database) as connection:   # the app labelled one more photo
        connection.execute("INSERT INTO pics SELECT * FROM pics LIMIT 1")
    connection.close()
    with pytest.raises(SwiprError) as error:
        prepare_study_data(load_study_file(study))
    line = str(error.value)
    assert f"was made from {database} as it was before it changed" in line and "swipr labels" in line


def test_the_same_bytes_touched_or_moved_are_the_same_data(study, tmp_path):
    labels = _labels(study)
    first = prepare_study_data(load_study_file(study)).fingerprint
    stamp = labels.stat().st_mtime_ns
    database = load_study_file(study).data.database
    os.utime(database, ns=(1, 1))   # touched: new mtime, same bytes
    assert prepare_study_data(load_study_file(study)).fingerprint == first
    moved = tmp_path / "moved"
    shutil.copytree(database.parent, moved)   # the whole data folder copied elsewhere
    _pointed_at(study, moved / "pics.db")
    assert prepare_study_data(load_study_file(study)).fingerprint == first
    assert labels.stat().st_mtime_ns == stamp   # never remade


def test_a_labels_file_from_before_the_record_is_checked_by_its_path(study, tmp_path):
    meta_file = meta_path(_labels(study))
    meta = json.loads(meta_file.read_text())
    del meta["database"]   # what older swipr wrote: the source path only
    meta_file.write_text(json.dumps(meta))
    other = write_demo_data(tmp_path / "other", n_images=130, image_px=40, seed=1)
    _pointed_at(study, other)
    with pytest.raises(SwiprError, match=f"was made from {tmp_path / 'data' / 'pics.db'}, but "):
        prepare_study_data(load_study_file(study))
