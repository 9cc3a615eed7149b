"""The demo dataset, and the `swipr demo-data` command through a real subprocess."""
from __future__ import annotations

import csv
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swipr_core.data.demo import DEMO_RULES, LABEL_NOISE, LOOKS_FILE, MIN_IMAGES, write_demo_data
from swipr_core.data.labels import build_labels
from swipr_core.errors import SwiprError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    database = write_demo_data(tmp_path_factory.mktemp("demo") / "data", n_images=120,
                               image_px=32, seed=5)
    return database, build_labels(database, database.parent, DEMO_RULES)


def _rows(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT * FROM pics ORDER BY rowid").fetchall()
    connection.close()
    return rows


def test_same_seed_same_dataset(demo, tmp_path):
    # Same rows and byte-identical images for the same seed; another seed differs.
    database, _ = demo
    again = write_demo_data(tmp_path / "again", n_images=120, image_px=32, seed=5)
    assert _rows(again) == _rows(database)
    for path, *_ in _rows(database):
        first, second = database.parent / path, again.parent / path
        assert first.is_file() == second.is_file()
        if first.is_file():
            assert first.read_bytes() == second.read_bytes()
    assert _looks(again) == _looks(database)
    other = write_demo_data(tmp_path / "other", n_images=120, image_px=32, seed=6)
    assert _rows(other) != _rows(database)


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory):
    # The `swipr demo-data` default size, at 16 px so it is quick to write.
    database = write_demo_data(tmp_path_factory.mktemp("big") / "data", image_px=16, seed=0)
    return database, build_labels(database, database.parent, DEMO_RULES)


def _looks(database: Path) -> dict[str, str]:
    with open(database.parent / LOOKS_FILE, newline="") as file:
        return {row["path"]: row["looks"] for row in csv.DictReader(file)}


@pytest.mark.parametrize("which", ["demo", "big_demo"])
def test_rules_leave_the_real_datas_skew_81_to_19(which, request):
    # After the rules (some "yes"-folder rows demoted to NO, some excluded): about 81% NO.
    _, table = request.getfixturevalue(which)
    share_no = table.labels.count("NO") / len(table.labels)
    assert 0.78 <= share_no <= 0.84


def test_a_few_percent_of_labels_disagree_with_their_picture(big_demo):
    database, table = big_demo
    looks = _looks(database)
    noise = sum(looks[path] != label for path, label in zip(table.paths, table.labels, strict=True)) / len(table.labels)
    assert LABEL_NOISE == 0.04
    assert 0.02 <= noise <= 0.07


def test_colour_alone_does_not_tell_the_classes_apart(demo):
    # The YES cue is a faint blob; whole-picture mean colours of the two classes nearly overlap.
    database, table = demo
    means = {wanted: np.mean([np.asarray(Image.open(database.parent / path), dtype=float).mean(axis=(0, 1))
                              for path, label in zip(table.paths, table.labels, strict=True) if label == wanted], axis=0)
             for wanted in ("YES", "NO")}
    assert np.abs(means["YES"] - means["NO"]).max() < 25


def test_rewrites_a_demo_dir_but_refuses_others(tmp_path):
    write_demo_data(tmp_path / "demo", n_images=MIN_IMAGES, image_px=16)
    write_demo_data(tmp_path / "demo", n_images=MIN_IMAGES, image_px=16, seed=1)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.jpg").write_bytes(b"")
    with pytest.raises(SwiprError, match="not empty"):
        write_demo_data(tmp_path / "photos")


def test_too_few_images_is_refused(tmp_path):
    with pytest.raises(SwiprError, match="--images"):
        write_demo_data(tmp_path / "demo", n_images=MIN_IMAGES - 1)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_cant_take_is_refused_before_anything_is_written(tmp_path, seed):
    with pytest.raises(SwiprError, match=rf"seed \(--seed\) must be between 0 and 4294967295, but got {seed}"):
        write_demo_data(tmp_path / "demo", seed=seed)
    assert not (tmp_path / "demo").exists()


def _swipr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_demo_data(tmp_path):
    result = _swipr("demo-data", str(tmp_path / "demo"), "--images", "60", "--seed", "2")
    assert result.returncode == 0, result.stderr
    database = tmp_path / "demo" / "pics.db"
    assert database.is_file()
    # "N rows: YES a, NO b, excluded c (...)": N is the table's rows, and a + b + c adds up to it.
    counts = result.stdout.splitlines()[1]
    rows, yes, no, excluded = map(int, re.match(r"(\d+) rows: YES (\d+), NO (\d+), excluded (\d+) \(", counts).groups())
    with sqlite3.connect(database) as connection:
        assert rows == connection.execute("SELECT count(*) FROM pics").fetchone()[0]
    assert yes + no + excluded == rows, counts


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not a demo dataset")
    result = _swipr("demo-data", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("swipr: error: ")
    assert "Traceback" not in result.stderr
