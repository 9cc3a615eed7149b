"""Label rules, one at a time, on tiny pics databases built in tmp_path."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from swipr_core.errors import SwiprError
from swipr_core.labels import EXCLUSION_REASONS, LabelRules, PicRow, build_labels, classify, read_pics

RULES = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",))
# Every database gets one plain YES and one plain NO row, so that both classes exist.
ANCHORS = [{"path": "insta/ok/anchor_yes.jpg"}, {"path": "insta/no/anchor_no.jpg"}]
COLUMNS = ("path", "label", "invalid", "ages", "num_people", "male_present")


def make_db(root: Path, rows: list[dict], anchors: bool = True, files: bool = True,
            columns: tuple[str, ...] = COLUMNS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    database = root / "pics.db"
    with sqlite3.connect(database) as connection:
        connection.execute(f"CREATE TABLE pics ({', '.join(columns)})")
        for row in (ANCHORS if anchors else []) + rows:
            full = {"label": 0, "invalid": 0, "ages": "25", "num_people": 1, "male_present": 0,
                    **row}
            values = [full[column] for column in columns]
            connection.execute(f"INSERT INTO pics VALUES ({', '.join('?' * len(columns))})",
                               values)
            if files and "path" in row:
                image = root / row["path"]
                image.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (200, 100, 50)).save(image, "JPEG")
    connection.close()
    return database


def label_of(root: Path, rules: LabelRules, row: dict) -> str:
    table = build_labels(make_db(root, [row]), root, rules)
    return dict(zip(table.paths, table.labels)).get(row["path"], "excluded")


def test_plain_yes_and_no_dirs(tmp_path):
    # A clean row in a yes dir is YES, in a no dir NO; order follows the database.
    table = build_labels(make_db(tmp_path, []), tmp_path, RULES)
    assert table.paths == ("insta/ok/anchor_yes.jpg", "insta/no/anchor_no.jpg")
    assert table.labels == ("YES", "NO")
    assert table.excluded == dict.fromkeys(EXCLUSION_REASONS, 0)


def test_invalid_flag_is_excluded(tmp_path):
    table = build_labels(make_db(tmp_path, [{"path": "insta/ok/a.jpg", "invalid": 1}]),
                         tmp_path, RULES)
    assert "insta/ok/a.jpg" not in table.paths
    assert table.excluded["invalid_flag"] == 1


def test_invalid_label_is_excluded(tmp_path):
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), invalid_labels=(9,))
    table = build_labels(make_db(tmp_path, [{"path": "insta/no/a.jpg", "label": 9}]),
                         tmp_path, rules)
    assert "insta/no/a.jpg" not in table.paths
    assert table.excluded["invalid_label"] == 1


def test_outside_dirs_is_excluded(tmp_path):
    table = build_labels(make_db(tmp_path, [{"path": "misc/a.jpg"}]), tmp_path, RULES)
    assert table.excluded["outside_dirs"] == 1


def test_no_dir_wins_over_yes_dir(tmp_path):
    rules = LabelRules(yes_dirs=("insta",), no_dirs=("insta/no",))
    assert label_of(tmp_path, rules, {"path": "insta/no/a.jpg"}) == "NO"


def test_dir_prefix_matches_whole_components(tmp_path):
    # "insta/no" must not claim "insta/nope/...", and "insta/ok" not "insta/okay/...".
    table = build_labels(make_db(tmp_path, [{"path": "insta/nope/a.jpg"},
                                            {"path": "insta/okay/b.jpg"}]), tmp_path, RULES)
    assert table.excluded["outside_dirs"] == 2


def test_fail_label_makes_yes_dir_row_no(tmp_path):
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), fail_labels=(1, 2))
    assert label_of(tmp_path, rules, {"path": "insta/ok/a.jpg", "label": 2}) == "NO"


def test_male_present_fails_only_when_asked(tmp_path):
    row = {"path": "insta/ok/a.jpg", "male_present": 1}
    assert label_of(tmp_path / "off", RULES, row) == "YES"
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), fail_on_male=True)
    assert label_of(tmp_path / "on", rules, row) == "NO"


def test_min_people_is_applied(tmp_path):
    # The notebook declared MIN_PEOPLE but never used it; here it counts.
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), min_people=1)
    assert label_of(tmp_path, rules, {"path": "insta/ok/a.jpg", "num_people": 0}) == "NO"


def test_max_people(tmp_path):
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), max_people=1)
    assert label_of(tmp_path, rules, {"path": "insta/ok/a.jpg", "num_people": 3}) == "NO"


@pytest.mark.parametrize("ages", ["17", "20,40"])
def test_every_age_must_be_in_range(tmp_path, ages):
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), min_age=18, max_age=35)
    assert label_of(tmp_path, rules, {"path": "insta/ok/a.jpg", "ages": ages}) == "NO"


@pytest.mark.parametrize("ages, expected", [("25,x,", "YES"), ("x,40", "NO"), ("?", "YES"),
                                            (None, "YES")])
def test_unparsable_ages_are_ignored(tmp_path, ages, expected):
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), min_age=18, max_age=35)
    assert label_of(tmp_path, rules, {"path": "insta/ok/a.jpg", "ages": ages}) == expected


def test_null_integers_count_as_zero(tmp_path):
    rows = read_pics(make_db(tmp_path, [{"path": "insta/ok/a.jpg", "label": None,
                                         "invalid": None, "num_people": None,
                                         "male_present": None}]))
    assert (rows[-1].label, rows[-1].invalid, rows[-1].num_people, rows[-1].male_present) == (0, 0, 0, 0)


def test_classify_needs_no_files():
    row = PicRow(rowid=1, path="insta/ok/gone.jpg", label=0, invalid=0, ages=(25,),
                 num_people=1, male_present=0)
    assert classify(row, RULES) == "YES"


def test_missing_and_undecodable_files_are_counted_by_reason(tmp_path):
    database = make_db(tmp_path, [{"path": "insta/ok/gone.jpg"},
                                  {"path": "insta/ok/broken.jpg"},
                                  {"path": "insta/no/truncated.jpg"},
                                  {"path": "insta/no/text.jpg"}])
    (tmp_path / "insta/ok/gone.jpg").unlink()
    (tmp_path / "insta/ok/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    truncated = tmp_path / "insta/no/truncated.jpg"
    Image.effect_noise((64, 64), 60).convert("RGB").save(truncated, "JPEG")
    truncated.write_bytes(truncated.read_bytes()[:400])
    (tmp_path / "insta/no/text.jpg").write_text("hello")
    table = build_labels(database, tmp_path, RULES)
    assert table.excluded["missing_file"] == 1
    assert table.excluded["undecodable"] == 3
    assert len(table.paths) == 2


def test_missing_database(tmp_path):
    with pytest.raises(SwiprError, match="pics.db: database file not found"):
        read_pics(tmp_path / "pics.db")


def test_not_sqlite(tmp_path):
    (tmp_path / "pics.db").write_text("path,label\n")
    with pytest.raises(SwiprError, match="not an SQLite database"):
        read_pics(tmp_path / "pics.db")


def test_no_pics_table(tmp_path):
    with sqlite3.connect(tmp_path / "pics.db") as connection:
        connection.execute("CREATE TABLE photos (path TEXT)")
    connection.close()
    with pytest.raises(SwiprError, match="no table 'pics'"):
        read_pics(tmp_path / "pics.db")


def test_missing_column(tmp_path):
    database = make_db(tmp_path, [], columns=("path", "label", "invalid", "ages", "num_people"))
    with pytest.raises(SwiprError, match="lacks column.*male_present"):
        read_pics(database)


def test_non_integer_cell_names_row_and_column(tmp_path):
    database = make_db(tmp_path, [{"path": "insta/ok/a.jpg", "num_people": "two"}])
    with pytest.raises(SwiprError, match="row 3: num_people must be an integer"):
        read_pics(database)


def test_no_yes_rows_left(tmp_path):
    database = make_db(tmp_path, [{"path": "insta/no/a.jpg"}, {"path": "misc/b.jpg"}],
                       anchors=False)
    with pytest.raises(SwiprError, match=r"no YES rows left after the rules \(YES 0, NO 1; "
                                         r"excluded: outside_dirs 1\)"):
        build_labels(database, tmp_path, RULES)


def test_no_no_rows_left(tmp_path):
    database = make_db(tmp_path, [{"path": "insta/ok/a.jpg"}], anchors=False)
    with pytest.raises(SwiprError, match="no NO rows left"):
        build_labels(database, tmp_path, RULES)


@pytest.mark.parametrize("kwargs, key", [
    ({"min_people": -1}, "min_people"),
    ({"min_age": 40, "max_age": 30}, "min_age must not exceed max_age"),
    ({"min_people": 2, "max_people": 1}, "min_people must not exceed max_people"),
    ({"yes_dirs": "insta/ok"}, "yes_dirs must be a list"),
    ({"no_dirs": ("",)}, "no_dirs"),
    ({"fail_labels": ("1",)}, "fail_labels"),
])
def test_bad_rule_values_name_the_key(kwargs, key):
    with pytest.raises(SwiprError, match=rf"\[data.rules\] {key}"):
        LabelRules(**kwargs)
