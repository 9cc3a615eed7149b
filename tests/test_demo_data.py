"""The demo dataset, and the `swipr demo-data` command through a real subprocess."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swipr_core.demo_data import DEMO_RULES, MIN_IMAGES, write_demo_data
from swipr_core.errors import SwiprError
from swipr_core.labels import EXCLUSION_REASONS, build_labels

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
    other = write_demo_data(tmp_path / "other", n_images=120, image_px=32, seed=6)
    assert _rows(other) != _rows(database)


def test_rules_give_both_classes_skewed_to_no(demo):
    _, table = demo
    share_no = table.labels.count("NO") / len(table.labels)
    assert 0.65 <= share_no <= 0.85


def test_every_exclusion_reason_occurs(demo):
    _, table = demo
    assert all(table.excluded[reason] >= 1 for reason in EXCLUSION_REASONS)


def test_yes_and_no_images_differ_in_colour(demo):
    # YES pictures are warm (red above blue), NO pictures cool (blue above red).
    database, table = demo
    means = {}
    for wanted in ("YES", "NO"):
        pixels = [np.asarray(Image.open(database.parent / path), dtype=float).mean(axis=(0, 1))
                  for path, label in zip(table.paths, table.labels) if label == wanted]
        means[wanted] = np.mean(pixels, axis=0)
    assert means["YES"][0] - means["YES"][2] > 50
    assert means["NO"][2] - means["NO"][0] > 50


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


def _swipr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_demo_data(tmp_path):
    result = _swipr("demo-data", str(tmp_path / "demo"), "--images", "60", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "pics.db").is_file()
    assert "YES" in result.stdout and "NO" in result.stdout


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not a demo dataset")
    result = _swipr("demo-data", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("swipr: error: ")
    assert "Traceback" not in result.stderr
