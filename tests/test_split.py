"""The validation split is fixed: stored with the labels, fingerprinted, never silently remade."""
import pytest

from swipr_core.demo_data import DEMO_RULES
from swipr_core.errors import SwiprError
from swipr_core.labels import LabelTable
from swipr_core.split import make_split, meta_path, prepare_labels, read_split, split_rows, write_split
from tests.studykit import demo_data


def test_split_is_stratified_and_seeded():
    labels = ("YES",) * 20 + ("NO",) * 80
    first = split_rows(labels, 0.2, seed=3)
    # Each class keeps its share in the validation set, and the same seed gives the same split.
    assert sum(v for v, lab in zip(first, labels) if lab == "YES") == 4
    assert sum(v for v, lab in zip(first, labels) if lab == "NO") == 16
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
