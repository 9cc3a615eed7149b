"""The validation split is fixed: stored with the labels, fingerprinted, never silently remade."""
import json
import re

import pytest

from swipr_core.data.demo import DEMO_RULES
from swipr_core.data.labels import LabelTable
from swipr_core.data.split import (
    check_both_sides,
    make_split,
    meta_path,
    prepare_labels,
    read_split,
    split_rows,
    write_split,
)
from swipr_core.errors import FieldError, SwiprError
from tests.studykit import demo_data


def test_split_is_stratified_and_seeded():
    labels = ("YES",) * 20 + ("NO",) * 80
    first = split_rows(labels, 0.2, seed=3)
    # Each class keeps its share in the validation set, and the same seed gives the same split.
    assert sum(v for v, lab in zip(first, labels, strict=True) if lab == "YES") == 4
    assert sum(v for v, lab in zip(first, labels, strict=True) if lab == "NO") == 16
    assert split_rows(labels, 0.2, seed=3) == first
    assert split_rows(labels, 0.2, seed=4) != first


def test_written_split_reads_back_with_the_same_fingerprint(tmp_path):
    table = LabelTable(paths=tuple(f"a/{i}.jpg" for i in range(10)), labels=("YES", "NO") * 5,
                       excluded={"outside_dirs": 2})
    split = make_split(table, DEMO_RULES, 0.2, 7, source="x")
    write_split(split, tmp_path / "labels.csv")
    again = read_split(tmp_path / "labels.csv")
    assert again.fingerprint == split.fingerprint
    assert again.is_valid == split.is_valid and again.meta["excluded"] == {"outside_dirs": 2}


def test_editing_the_labels_file_changes_the_fingerprint(tmp_path):
    table = LabelTable(paths=("a.jpg", "b.jpg", "c.jpg", "d.jpg"), labels=("YES", "NO", "YES", "NO"), excluded={})
    split = make_split(table, DEMO_RULES, 0.5, 0, source="x")
    file = tmp_path / "labels.csv"
    write_split(split, file)
    file.write_text(file.read_text().replace("a.jpg,YES", "a.jpg,NO"))
    assert read_split(file).fingerprint != split.fingerprint


def test_prepare_keeps_an_existing_split_and_refuses_other_settings(tmp_path):
    database = demo_data(tmp_path / "data")
    labels_file = tmp_path / "labels.csv"
    first = prepare_labels(database, database.parent, DEMO_RULES, 0.25, 1, labels_file)
    stamp = labels_file.stat().st_mtime_ns
    # Asked again the same way: the stored file is read, not rewritten.
    second = prepare_labels(database, database.parent, DEMO_RULES, 0.25, 1, labels_file)
    assert second.fingerprint == first.fingerprint and labels_file.stat().st_mtime_ns == stamp
    with pytest.raises(SwiprError, match="made with other valid_pct"):
        prepare_labels(database, database.parent, DEMO_RULES, 0.3, 1, labels_file)
    with pytest.raises(SwiprError, match="made with other split_seed"):
        prepare_labels(database, database.parent, DEMO_RULES, 0.25, 2, labels_file)
    assert labels_file.stat().st_mtime_ns == stamp and meta_path(labels_file).exists()


@pytest.mark.parametrize("text, message", [
    ("path,label\nx.jpg,YES\n", "header must be path,label,is_valid"),
    ("path,label,is_valid\nx.jpg,MAYBE,0\n", "row 2 is not path,YES|NO,0|1"),
])
def test_malformed_labels_file_names_the_row(tmp_path, text, message):
    file = tmp_path / "labels.csv"
    file.write_text(text)
    with pytest.raises(SwiprError, match=message):
        read_split(file)


def legacy_split_rows(labels, valid_pct, seed):
    """The split as made before groups existed, copied here to pin compatibility."""
    import random

    rng = random.Random(seed)
    is_valid = [False] * len(labels)
    for cls in ("NO", "YES"):
        members = [i for i, label in enumerate(labels) if label == cls]
        rng.shuffle(members)
        n_valid = max(1, round(len(members) * valid_pct)) if len(members) > 1 else 0
        for i in members[:n_valid]:
            is_valid[i] = True
    return tuple(is_valid)


@pytest.mark.parametrize("seed", range(5))
def test_without_shared_photos_the_split_is_the_one_made_before(seed):
    # Remaking a labels file on clean data keeps its split and fingerprint, so studies go on.
    import random

    labels = tuple(random.Random(seed).choice(["YES", "NO", "NO"]) for _ in range(37 + seed))
    unique = tuple(f"h{i}" for i in range(len(labels)))
    assert split_rows(labels, 0.2, seed) == legacy_split_rows(labels, 0.2, seed)
    assert split_rows(labels, 0.2, seed, unique) == legacy_split_rows(labels, 0.2, seed)


def test_a_group_never_straddles_the_split_and_shares_stay_close():
    # 100 NO rows in groups of 1..4 and 25 YES rows in groups of 1..3: every group on one side,
    # and each class's validation share within one largest group of 20%.
    labels, groups = [], []
    for g in range(40):
        size = 1 + g % 4
        labels += ["NO"] * size
        groups += [f"no{g}"] * size
    for g in range(12):
        size = 1 + g % 3
        labels += ["YES"] * size
        groups += [f"yes{g}"] * size
    for seed in range(10):
        is_valid = split_rows(tuple(labels), 0.2, seed, tuple(groups))
        sides = {}
        for group, valid in zip(groups, is_valid, strict=True):
            sides.setdefault(group, set()).add(valid)
        assert all(len(side) == 1 for side in sides.values())
        for cls, largest in (("NO", 4), ("YES", 3)):
            n = labels.count(cls)
            n_valid = sum(v for v, lab in zip(is_valid, labels, strict=True) if lab == cls)
            assert abs(n_valid - round(0.2 * n)) < largest, (cls, n_valid, n)


def test_one_big_group_goes_whole_to_one_side():
    labels = ("NO",) * 10 + ("YES",) * 2
    groups = ("big",) * 9 + ("other", "y1", "y2")
    is_valid = split_rows(labels, 0.2, 0, groups)
    assert len({is_valid[i] for i in range(9)}) == 1
    assert sum(is_valid[:10]) in (1, 9)


def test_labels_files_written_before_groups_still_read(tmp_path):
    # A labels file and meta exactly as the previous version wrote them.
    file = tmp_path / "old.labels.csv"
    file.write_text("path,label,is_valid\na.jpg,YES,1\nb.jpg,NO,0\nc.jpg,NO,1\nd.jpg,YES,0\n")
    meta = {"source": "pics.db", "rules": {}, "valid_pct": 0.5, "split_seed": 0,
            "excluded": {"invalid_flag": 0, "invalid_label": 0, "outside_dirs": 1, "missing_file": 0,
                         "undecodable": 0}, "counts": {"YES": 2, "NO": 2, "valid": 2}}
    split = read_split(file)
    meta["fingerprint"] = split.fingerprint
    meta_path(file).write_text(json.dumps(meta))
    again = read_split(file)
    assert again.paths == ("a.jpg", "b.jpg", "c.jpg", "d.jpg") and again.is_valid == (True, False, True, False)
    assert again.fingerprint == split.fingerprint and "same_content" not in again.meta


def test_the_fingerprint_scheme_is_unchanged():
    # Studies store fingerprints: the scheme (path TAB label TAB 0|1 per line, sha256, 16 hex) must hold.
    import hashlib

    from swipr_core.data.split import fingerprint

    text = "a.jpg\tYES\t1\nb/c.jpg\tNO\t0\n"
    assert fingerprint(["a.jpg", "b/c.jpg"], ["YES", "NO"], [True, False]) == \
        hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("n_yes, valid_pct, message", [
    (3, 0.99, "0.99 leaves no NO image for training (of 30 NO images); lower it"),
    (1, 0.2, "0.2 leaves no YES image for validation (of 1 YES image); raise it"),
])
def test_a_split_with_a_class_missing_on_one_side_is_refused(n_yes, valid_pct, message):
    # With no training image at all every trial "trained" on nothing and still got a loss.
    labels = ("NO",) * 30 + ("YES",) * n_yes
    is_valid = split_rows(labels, valid_pct, 0)
    with pytest.raises(FieldError, match=re.escape(message)) as raised:
        check_both_sides(labels, is_valid, valid_pct)
    assert raised.value.field == "valid_pct"
    three = ("NO",) * 30 + ("YES",) * 3
    check_both_sides(three, split_rows(three, 0.34, 0), 0.34)   # YES on both sides: fine


def test_a_path_with_a_carriage_return_or_newline_reads_back_whole(tmp_path):
    # csv quoted "\n" but not "\r" under lineterminator="\n": `swipr labels` wrote a file
    # that `study run` couldn't read ("insta/ok/IMG\r0001.jpg" split in two rows).
    paths = ("insta/ok/IMG\r0001.jpg", "insta/ok/a\nb.jpg", 'insta/no/"q",x.jpg', "insta/no/\r\n.jpg")
    table = LabelTable(paths=paths, labels=("YES", "YES", "NO", "NO"), excluded={})
    split = make_split(table, DEMO_RULES, 0.5, 0, source="x")
    write_split(split, tmp_path / "labels.csv")
    again = read_split(tmp_path / "labels.csv")
    assert again.paths == paths and again.fingerprint == split.fingerprint
    write_split(again, tmp_path / "labels.csv")   # and it is still a labels file swipr wrote
