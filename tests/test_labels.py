"""Label rules, one at a time, on tiny pics databases built in tmp_path."""
from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from PIL import Image, TiffImagePlugin

from swipr_core.data.cache import build_cache
from swipr_core.data.labels import (
    EXCLUSION_REASONS,
    LabelRules,
    PicRow,
    build_labels,
    classify,
    describe_odd_ages,
    read_pics,
)
from swipr_core.errors import FieldError, SwiprError

RULES = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",))
# Every database gets one plain YES and one plain NO row, so that both classes exist.
ANCHORS = [{"path": "insta/ok/anchor_yes.jpg"}, {"path": "insta/no/anchor_no.jpg"}]
COLUMNS = ("path", "label", "invalid", "ages", "num_people", "male_present")


def write_image(file: Path, colour: tuple[int, int, int] | None = None) -> None:
    """An 8x8 JPEG; its colour comes from its path, so different files hold different photos."""
    digest = hashlib.sha256(str(file).encode()).digest()
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour or tuple(digest[:3])).save(file, "JPEG")


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
                write_image(root / row["path"])
    connection.close()
    return database


def label_of(root: Path, rules: LabelRules, row: dict) -> str:
    table = build_labels(make_db(root, [row]), root, rules)
    return dict(zip(table.paths, table.labels, strict=True)).get(row["path"], "excluded")


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


@pytest.mark.parametrize("ages, expected", [
    ("17.5", "NO"), (17.0, "NO"), ("25, 16.9", "NO"), ("25 16.9", "NO"), (b"17", "NO"),   # under 18
    ("25,", "YES"), ("25 31", "YES"), (25.5, "YES"), (b"25,30", "YES"), (None, "YES"), ("", "YES"),
])
def test_ages_are_numbers_however_they_are_written(tmp_path, ages, expected):
    # Age regressors write decimals: "17.5" and REAL 17.0 are ages (read with int() alone they
    # were dropped and the photo stayed YES under min_age = 18), and a BLOB is not "b'17'".
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), min_age=18, max_age=35)
    assert label_of(tmp_path, rules, {"path": "insta/ok/a.jpg", "ages": ages}) == expected


@pytest.mark.parametrize("ages, expected", [("25,x,", "YES"), ("x,40", "NO"), ("?", "YES"), ("nan,17", "NO"),
                                            ("-3", "YES"), (b"\xff17", "YES")])
def test_parts_that_are_not_ages_are_skipped_and_their_rows_named(tmp_path, ages, expected):
    # The face model writes junk such as "25,x,": the junk is skipped, and each such row is
    # named (rowid and cell) so that the user can look at it.
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), min_age=18, max_age=35)
    database = make_db(tmp_path, [{"path": "insta/ok/a.jpg", "ages": ages}, {"path": "insta/ok/b.jpg"}])
    table = build_labels(database, tmp_path, rules)
    assert dict(zip(table.paths, table.labels, strict=True))["insta/ok/a.jpg"] == expected
    assert table.odd_ages == ((3, repr(ages)),)
    assert "in 1 row of pics: row 3 " in describe_odd_ages({"rows": 1, "first": [list(table.odd_ages[0])]})
    assert build_labels(database, tmp_path, RULES).odd_ages == ()   # no age rule: nothing was skipped


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
    with pytest.raises(SwiprError, match="no table or view 'pics'"):
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


def test_no_yes_rows_because_a_yes_dirs_entry_matches_no_path_names_the_entry(tmp_path):
    # A case slip and a typo: the error names the rule and the entries, each with the
    # nearest folders the table holds, not only the database.
    database = make_db(tmp_path, [{"path": "insta/ok/a.jpg"}, {"path": "Tinder/yes/b.jpg"},
                                  {"path": "insta/no/c.jpg"}], anchors=False)
    rules = LabelRules(yes_dirs=("insta/okay", "tinder/YES"), no_dirs=("insta/no",))
    with pytest.raises(FieldError) as raised:
        build_labels(database, tmp_path, rules)
    assert raised.value.field == "rules.yes_dirs"
    assert raised.value.problem == (
        "'insta/okay' (nearest folders there: insta/ok, insta/no, insta); 'tinder/YES' (nearest folders there: "
        f"Tinder/yes, Tinder): no path in {database} lies under them, so no YES rows left after the rules "
        "(YES 0, NO 1; excluded: outside_dirs 2)")
    # Entries that match, but whose photos the rules turn NO: the rules, not the folders, are named.
    young = make_db(tmp_path / "young", [{"path": "insta/ok/a.jpg", "ages": "12"},
                                         {"path": "insta/no/c.jpg"}], anchors=False)
    with pytest.raises(SwiprError, match=rf"^{young}: no YES rows left after the rules \(YES 0, NO 2; excluded: none\)$"):
        build_labels(young, tmp_path / "young", LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), min_age=18))


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
    """The core names the key only; where it came from ([data.rules] of a study file) is the
    edge's to add."""
    with pytest.raises(FieldError, match=rf"^{key}") as raised:
        LabelRules(**kwargs)
    assert raised.value.field == key.split()[0] and "[data" not in str(raised.value)


# --- The table is not trusted as it is -------------------------------------------------------

def test_a_path_listed_many_times_is_kept_once(tmp_path):
    # The same row 31 times is one photo, not 27 training and 4 validation rows.
    table = build_labels(make_db(tmp_path, [{"path": "insta/ok/a.jpg"}] * 31), tmp_path, RULES)
    assert table.paths.count("insta/ok/a.jpg") == 1
    assert table.excluded["duplicate_path"] == 30


def test_spellings_of_one_path_are_duplicates(tmp_path):
    table = build_labels(make_db(tmp_path, [{"path": "insta/ok/a.jpg"}, {"path": "insta/ok//a.jpg"},
                                            {"path": "insta/ok/./a.jpg"}]), tmp_path, RULES)
    assert table.paths.count("insta/ok/a.jpg") == 1 and table.excluded["duplicate_path"] == 2


def test_a_path_labelled_yes_and_no_is_excluded(tmp_path):
    rules = LabelRules(yes_dirs=("insta/ok",), no_dirs=("insta/no",), fail_on_male=True)
    rows = [{"path": "insta/ok/a.jpg"}, {"path": "insta/ok/a.jpg", "male_present": 1}]
    table = build_labels(make_db(tmp_path, rows), tmp_path, rules)
    assert "insta/ok/a.jpg" not in table.paths
    assert table.excluded["conflicting_labels"] == 2 and table.excluded["duplicate_path"] == 0


def write_anchors(root: Path) -> None:
    for anchor in ANCHORS:
        write_image(root / anchor["path"])


@pytest.mark.parametrize("path", ["insta/ok/../../../x.jpg", "insta/ok/../no/x.jpg", "ABS", "."])
def test_paths_that_leave_the_root_are_excluded(tmp_path, path):
    # Each names a real image; "insta/ok/../no/x.jpg" stays inside but would fool the folder rules.
    root = tmp_path / "root"
    write_image(tmp_path / "x.jpg")
    write_image(root / "insta/no/x.jpg")
    path = str(tmp_path / "x.jpg") if path == "ABS" else path
    database = make_db(root, [{"path": path}], files=False)
    write_anchors(root)
    table = build_labels(database, root, RULES)
    assert path not in table.paths and table.excluded["outside_root"] == 1


def test_a_symlink_out_of_the_root_is_excluded(tmp_path):
    outside = tmp_path / "elsewhere" / "secret.jpg"
    write_image(outside)
    root = tmp_path / "root"
    database = make_db(root, [{"path": "insta/ok/link.jpg"}, {"path": "insta/evil/x.jpg"}], files=False)
    write_anchors(root)
    (root / "insta/ok/link.jpg").symlink_to(outside)
    (root / "insta/evil").symlink_to(outside.parent)   # a linked folder leads out just as well
    (outside.parent / "x.jpg").write_bytes(outside.read_bytes())
    rules = LabelRules(yes_dirs=("insta/ok", "insta/evil"), no_dirs=("insta/no",))
    table = build_labels(database, root, rules)
    assert table.excluded["outside_root"] == 2
    assert table.paths == ("insta/ok/anchor_yes.jpg", "insta/no/anchor_no.jpg")


def test_a_fifo_among_the_images_does_not_hang(tmp_path):
    database = make_db(tmp_path, [{"path": "insta/ok/pipe.jpg"}], files=False)
    write_anchors(tmp_path)
    os.mkfifo(tmp_path / "insta/ok/pipe.jpg")
    table = build_labels(database, tmp_path, RULES)
    assert table.excluded["missing_file"] == 1


def test_identical_photos_under_different_paths_are_one_group(tmp_path):
    database = make_db(tmp_path, [{"path": "insta/ok/a.jpg"}, {"path": "insta/ok/copy_of_a.jpg"},
                                  {"path": "insta/ok/b.jpg"}])
    (tmp_path / "insta/ok/copy_of_a.jpg").write_bytes((tmp_path / "insta/ok/a.jpg").read_bytes())
    table = build_labels(database, tmp_path, RULES)
    group = dict(zip(table.paths, table.groups, strict=True))
    assert group["insta/ok/a.jpg"] == group["insta/ok/copy_of_a.jpg"] != group["insta/ok/b.jpg"]
    assert table.same_content == {"groups": 1, "rows": 2}


def test_one_photo_labelled_yes_and_no_under_two_paths_is_excluded(tmp_path):
    database = make_db(tmp_path, [{"path": "insta/ok/a.jpg"}, {"path": "insta/no/same_as_a.jpg"}])
    (tmp_path / "insta/no/same_as_a.jpg").write_bytes((tmp_path / "insta/ok/a.jpg").read_bytes())
    table = build_labels(database, tmp_path, RULES)
    assert not {"insta/ok/a.jpg", "insta/no/same_as_a.jpg"} & set(table.paths)
    assert table.excluded["conflicting_labels"] == 2


def test_absurd_image_dimensions_are_undecodable(tmp_path):
    # An 862-byte 1x200000 PNG: excluded from its header, never decoded or upscaled.
    database = make_db(tmp_path, [{"path": "insta/ok/strip.png"}], files=False)
    write_anchors(tmp_path)
    Image.new("L", (1, 200_000)).save(tmp_path / "insta/ok/strip.png")
    table = build_labels(database, tmp_path, RULES)
    assert table.excluded["undecodable"] == 1 and "insta/ok/strip.png" not in table.paths


def test_a_pics_view_is_read_like_a_table(tmp_path):
    # A view over the real table (a common way to pick columns) is read, not refused as "no table".
    database = make_db(tmp_path, [{"path": "insta/ok/a.jpg"}, {"path": "insta/ok/b.jpg", "num_people": "two"}])
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE pics RENAME TO raw")
        connection.execute("CREATE VIEW pics AS SELECT * FROM raw WHERE path != 'insta/ok/b.jpg'")
    connection.close()
    table = build_labels(database, tmp_path, RULES)
    assert table.paths == ("insta/ok/anchor_yes.jpg", "insta/no/anchor_no.jpg", "insta/ok/a.jpg")
    with sqlite3.connect(database) as connection:   # a view has no rowid: rows are numbered as it gives them
        connection.execute("DROP VIEW pics")
        connection.execute("CREATE VIEW pics AS SELECT * FROM raw WHERE path != 'insta/ok/a.jpg'")
    connection.close()
    with pytest.raises(SwiprError, match="pics row 3: num_people must be an integer"):
        read_pics(database)


def test_a_folder_given_as_the_database_is_named_a_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(SwiprError, match=r"data: is a folder, not a database file$"):
        read_pics(folder)


def _exif_jpeg(file: Path, entries: dict, types: dict) -> None:
    """A JPEG whose EXIF block is written tag by tag with the given types (Pillow's own
    writer refuses a mistyped tag, which cameras and editors do write)."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"MM")
    for tag, value in entries.items():
        ifd[tag] = value
    ifd.tagtype.update(types)
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), (30, 120, 200)).save(file, exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + ifd.tobytes(8))


def test_a_photo_labels_keeps_is_one_the_cache_can_decode(tmp_path):
    # XResolution written as text beside Orientation: labels kept the photo, then the cache
    # build refused it (exif_transpose: "bad operand type for abs(): 'str'"), blocking the study.
    database = make_db(tmp_path, [{"path": "insta/ok/exif.jpg"}], files=False)
    write_anchors(tmp_path)
    _exif_jpeg(tmp_path / "insta/ok/exif.jpg", {0x0112: 6, 0x011A: "abc"}, {0x011A: 2})
    table = build_labels(database, tmp_path, RULES, px=16)
    assert "insta/ok/exif.jpg" in table.paths
    array = build_cache(tmp_path, table.paths, tmp_path / "cache", px=16, workers=1).open()
    assert array.shape == (3, 16, 16, 3)


def test_a_panorama_is_checked_at_the_cache_size_and_cached(tmp_path):
    # 16000x1100 passes a 64 px draft check (1/8 scale) but not a 1024 px cache's decode (1/1
    # scale: over the pixel limit). Labels checks with the cache's own decode at its size, and
    # that decode reduces such a JPEG further (1/2) and scales it up.
    database = make_db(tmp_path, [{"path": "insta/ok/pano.jpg"}], files=False)
    write_anchors(tmp_path)
    Image.new("L", (16000, 1100), 90).save(tmp_path / "insta/ok/pano.jpg")
    table = build_labels(database, tmp_path, RULES, px=1024)
    assert "insta/ok/pano.jpg" in table.paths
    array = build_cache(tmp_path, table.paths, tmp_path / "cache", px=1024, workers=1).open()
    assert abs(int(array[table.paths.index("insta/ok/pano.jpg")].mean()) - 90) <= 2
