"""Fuzzing the pics table: labels + split either work or raise one SwiprError line, never leak.

Hypothesis writes small pics tables over a handful of real image files: duplicate rows, odd
paths ('..', absolute, unicode, spaces, very long, symlinks in and out of the root),
conflicting labels, the same bytes under several paths, odd cell values.
"""
from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from swipr_core.data.labels import LabelRules, build_labels
from swipr_core.data.split import make_split, read_split, write_split
from swipr_core.errors import SwiprError

RULES = LabelRules(yes_dirs=("insta/ok", "Tinder/yes"), no_dirs=("insta/no",), fail_on_male=True,
                   invalid_labels=(9,), max_people=2)
# Real files in the root; each gets one of a few contents, so copies under several paths occur.
FILES = ("insta/ok/a.jpg", "insta/ok/b.jpg", "insta/no/c.jpg", "insta/no/d e.jpg", "Tinder/yes/ünï.jpg",
         "misc/f.jpg", "insta/ok/sub/g.png")
ODD_PATHS = ("insta/ok/../../../x.jpg", "insta/ok/../no/c.jpg", "/etc/passwd", "insta/ok//a.jpg",
             "insta/ok/./b.jpg", "insta/ok/link_out.jpg", "insta/no/link_in.jpg", "insta/ok/dir",
             "insta/ok/" + "L" * 300 + ".jpg", "insta/ok/" + "deep/" * 900 + "x.jpg", "insta/ok/gone.jpg",
             "insta/ok/broken.jpg", "insta/ok/a.jpg\n", " insta/ok/a.jpg", "insta/ok\\a.jpg", ".")
CELLS = st.one_of(st.none(), st.integers(-2, 12), st.sampled_from(["1", "2.0", "x", "", "1e3", 1.5, 2.0]))


def _jpeg(colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (colour * 60, 255 - colour * 50, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


CONTENTS = [_jpeg(i) for i in range(5)]



def row_strategy(odd_cells: bool):
    def cell(usual, odd=CELLS):
        return st.one_of(usual, odd) if odd_cells else usual

    return st.fixed_dictionaries({
        "path": cell(st.one_of(st.sampled_from(FILES), st.sampled_from(FILES), st.sampled_from(ODD_PATHS),
                               st.text(min_size=1, max_size=12).filter(str.strip)),
                     st.sampled_from(["", "  ", None, 3])),
        "label": cell(st.integers(0, 9)), "invalid": cell(st.sampled_from([0, 0, 0, 1])),
        "ages": st.one_of(st.none(), st.sampled_from(["25", "17,30", "x,", "40"]), st.text(max_size=6)),
        "num_people": cell(st.integers(0, 3)), "male_present": cell(st.integers(0, 1)),
    })


# One table in five may hold odd cells (any of which refuses the whole table); the rest are
# tables that can be built, so that most examples reach the split.
# Most tables also hold a plain YES row and a plain NO row (which may still collide in content).
ANCHORS = [{"path": "insta/ok/a.jpg", "label": 0, "invalid": 0, "ages": "25", "num_people": 1, "male_present": 0},
           {"path": "insta/no/c.jpg", "label": 0, "invalid": 0, "ages": "25", "num_people": 1, "male_present": 0}]
rows = st.tuples(st.integers(0, 4), st.integers(0, 3)).flatmap(
    lambda n: st.lists(row_strategy(odd_cells=n[0] == 0), min_size=1, max_size=14).map(
        lambda table: table + ANCHORS if n[1] else table))


def make_root(root: Path, contents: list[int]) -> None:
    for rel, content in zip(FILES, contents, strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(CONTENTS[content])
    outside = root.parent / "outside.jpg"
    outside.write_bytes(CONTENTS[0])
    (root / "insta/ok/link_out.jpg").symlink_to(outside)
    (root / "insta/no/link_in.jpg").symlink_to(root / FILES[0])   # same bytes as a.jpg, labelled NO
    (root / "insta/ok/dir").mkdir()
    (root / "insta/ok/broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def make_db(root: Path, table: list[dict]) -> Path:
    database = root / "pics.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE pics (path, label, invalid, ages, num_people, male_present)")
        for row in table:
            connection.execute("INSERT INTO pics VALUES (?, ?, ?, ?, ?, ?)",
                               [row[key] for key in ("path", "label", "invalid", "ages", "num_people",
                                                     "male_present")])
    connection.close()
    return database


def content_of(root: Path, rel: str) -> str:
    return hashlib.sha256((root / rel).read_bytes()).hexdigest()


def check_no_leak(root: Path, split) -> None:
    sides: dict[str, set[bool]] = {}
    for rel, valid in zip(split.paths, split.is_valid, strict=True):
        real = os.path.realpath(root / rel)
        assert os.path.commonpath([os.path.realpath(root), real]) == os.path.realpath(root), rel
        for key in (real, content_of(root, rel)):   # one file, one photo: one side
            sides.setdefault(key, set()).add(valid)
    assert all(len(side) == 1 for side in sides.values()), sides


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=rows, contents=st.lists(st.integers(0, 4), min_size=len(FILES), max_size=len(FILES)),
       valid_pct=st.sampled_from([0.2, 0.5]), seed=st.integers(0, 3))
def test_labels_and_split_work_or_fail_in_one_line(table, contents, valid_pct, seed):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        make_root(root, contents)
        try:
            labels = build_labels(make_db(root, table), root, RULES)
        except SwiprError as error:
            assert "\n" not in str(error) and str(error), repr(error)
            event("refused: " + ("no YES/NO rows left" if "rows left" in str(error) else str(error).split(": ", 2)[-1][:20]))
            return
        event("built")
        # Every row is kept or counted under exactly one reason.
        assert len(labels.paths) + sum(labels.excluded.values()) == len(table)
        assert len(set(labels.paths)) == len(labels.paths)
        try:
            split = make_split(labels, RULES, valid_pct, seed, source="fuzz")
        except SwiprError as error:   # a class too small to be on both sides of the split
            assert "\n" not in str(error) and "leaves no" in str(error), repr(error)
            event("refused: a class on one side only")
            return
        check_no_leak(root, split)
        write_split(split, root / "labels.csv")
        again = read_split(root / "labels.csv")
        assert (again.paths, again.labels, again.is_valid) == (split.paths, split.labels, split.is_valid)
        assert again.fingerprint == split.fingerprint
