"""A fixed validation split, stored with the labels and fingerprinted.

The labels file is a CSV (`path`, `label`, `is_valid`). Beside it, `<file>.meta.json`
keeps how it was made (rules, valid_pct, split_seed, counts). The fingerprint is a hash of
the rows themselves, so it is recomputed from the CSV on every read: a hand-edited labels
file changes the fingerprint, and a study refuses it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path

from swipr_core.data.images import open_regular
from swipr_core.data.labels import DEFAULT_PX, LabelRules, LabelTable, build_labels, database_change, database_record
from swipr_core.errors import FieldError, SwiprError

CLASSES = ("NO", "YES")
LABELS_HEADER = b"path,label,is_valid"
MAX_META_BYTES = 1 << 20  # class order of the model's outputs: index 1 is YES


@dataclass(frozen=True)
class LabeledSplit:
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    is_valid: tuple[bool, ...]
    fingerprint: str
    meta: dict

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, valid: bool) -> list[int]:
        return [i for i, flag in enumerate(self.is_valid) if flag == valid]

    def targets(self) -> list[int]:
        return [CLASSES.index(label) for label in self.labels]

    def counts(self) -> dict[str, int]:
        yes = sum(label == "YES" for label in self.labels)
        return {"YES": yes, "NO": len(self.labels) - yes, "valid": sum(self.is_valid)}


def fingerprint(paths, labels, is_valid) -> str:
    digest = hashlib.sha256()
    for path, label, valid in zip(paths, labels, is_valid, strict=True):
        digest.update(f"{path}\t{label}\t{int(valid)}\n".encode())
    return digest.hexdigest()[:16]


def split_rows(labels: tuple[str, ...], valid_pct: float, seed: int,
               groups: tuple[str, ...] = ()) -> tuple[bool, ...]:
    """Stratified random split: each class keeps its share in the validation set.

    The data is about 80% NO, so a plain random 20% could leave the validation set's YES
    share off by several points on small datasets; per-class sampling keeps it close.
    Rows with the same `groups` entry (one photo under several paths) go to the same side;
    without groups, or with none shared, the split is the one made before groups existed.
    """
    rng = random.Random(seed)
    is_valid = [False] * len(labels)
    for cls in CLASSES:
        members = [i for i, label in enumerate(labels) if label == cls]
        for group in _valid_groups(_group_rows(members, groups), valid_pct, rng):
            for i in group:
                is_valid[i] = True
    return tuple(is_valid)


def _group_rows(members: list[int], groups: tuple[str, ...]) -> list[list[int]]:
    """The members' rows grouped by photo, in order of each group's first row."""
    if not groups:
        return [[i] for i in members]
    by_group: dict[str, list[int]] = {}
    for i in members:
        by_group.setdefault(groups[i], []).append(i)
    return list(by_group.values())


def _valid_groups(row_groups: list[list[int]], valid_pct: float, rng: random.Random) -> list[list[int]]:
    """Whole groups, in a seeded random order, as close to the class's valid share as fits."""
    n_rows = sum(len(group) for group in row_groups)
    target = max(1, round(n_rows * valid_pct)) if n_rows > 1 else 0
    rng.shuffle(row_groups)  # the same permutation as shuffling single rows did
    chosen, taken = [], 0
    for group in row_groups:
        if taken + len(group) <= target:
            chosen.append(group)
            taken += len(group)
    if not chosen and target and len(row_groups) > 1:
        chosen = [min(row_groups, key=len)]  # every group is larger than the share: the smallest
    return chosen


def make_split(table: LabelTable, rules: LabelRules, valid_pct: float, seed: int, source: str) -> LabeledSplit:
    is_valid = split_rows(table.labels, valid_pct, seed, table.groups)
    check_both_sides(table.labels, is_valid, valid_pct)
    meta = {
        "source": source,
        "rules": asdict(rules),
        "valid_pct": valid_pct,
        "split_seed": seed,
        "excluded": dict(table.excluded),
        "same_content": dict(table.same_content) or {"groups": 0, "rows": 0},
        # Rows the age rules could read in part only: a few named, for the user to look at.
        "odd_ages": {"rows": len(table.odd_ages), "first": [list(row) for row in table.odd_ages[:5]]},
    }
    split = LabeledSplit(table.paths, table.labels, is_valid, fingerprint(table.paths, table.labels, is_valid), meta)
    split.meta["counts"] = split.counts()
    split.meta["fingerprint"] = split.fingerprint
    return split


def check_both_sides(labels, is_valid, valid_pct: float) -> None:
    """Each class on both sides of the split: training learns nothing of a class it lacks (with
    none at all, every trial trained on nothing and still got a loss), and validation can't
    judge one it lacks."""
    for cls in CLASSES:
        sides = [valid for label, valid in zip(labels, is_valid, strict=True) if label == cls]
        held_out = sum(sides)
        if held_out in (0, len(sides)) and sides:
            side, fix = ("validation", "raise") if held_out == 0 else ("training", "lower")
            raise FieldError("valid_pct", f"{valid_pct} leaves no {cls} image for {side} "
                                          f"(of {len(sides)} {cls} image{'s' if len(sides) != 1 else ''}); "
                                          f"{fix} it")


def meta_path(labels_file: Path) -> Path:
    return labels_file.with_name(labels_file.name + ".meta.json")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        # mkstemp makes 0600 files; a labels file is as readable as anything else the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_labels_target(labels_file: Path) -> None:
    """Refuse to replace anything but a labels file (and its meta) that swipr wrote."""
    if labels_file.is_dir():
        raise SwiprError(f"{labels_file}: is a folder, not a labels file")
    for file, looks_right in ((labels_file, _is_labels_csv), (meta_path(labels_file), _is_meta_json)):
        if os.path.lexists(file) and not looks_right(file):
            raise SwiprError(f"{file}: exists and is not a labels file written by swipr; "
                             "refusing to overwrite it (choose another file, or --force)")


def _is_labels_csv(file: Path) -> bool:
    try:
        with open_regular(file) as handle:
            head = handle.read(len(LABELS_HEADER) + 2)
    except OSError:
        return False
    return head.replace(b"\r\n", b"\n").startswith(LABELS_HEADER + b"\n")


def _is_meta_json(file: Path) -> bool:
    try:
        with open_regular(file, MAX_META_BYTES) as handle:
            meta = json.loads(handle.read(MAX_META_BYTES + 1))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "fingerprint" in meta


def write_split(split: LabeledSplit, labels_file: Path, force: bool = False) -> None:
    """Write the CSV and its meta, each atomically; refuse a target swipr didn't write unless `force`."""
    if not force:
        check_labels_target(labels_file)

    buffer = StringIO()
    # The default terminator, "\r\n": csv quotes a field holding any character of the
    # terminator, so a path with a carriage return is quoted and reads back whole.
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "is_valid"])
    for row in zip(split.paths, split.labels, split.is_valid, strict=True):
        writer.writerow([row[0], row[1], int(row[2])])
    # Meta first: a crash between the two leaves a CSV whose fingerprint doesn't match its
    # meta, which read_split reports, rather than a silently stale pair.
    _atomic_write(meta_path(labels_file), json.dumps(split.meta, indent=2) + "\n")
    _atomic_write(labels_file, buffer.getvalue())


def read_split(labels_file: Path) -> LabeledSplit:
    if not labels_file.is_file():
        raise SwiprError(f"{labels_file}: labels file not found (make it with `swipr labels STUDY.toml`)")
    paths, labels, is_valid = [], [], []
    with labels_file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or set(reader.fieldnames) != {"path", "label", "is_valid"}:
            raise SwiprError(f"{labels_file}: header must be path,label,is_valid, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if row["label"] not in CLASSES or row["is_valid"] not in ("0", "1") or not row["path"]:
                raise SwiprError(f"{labels_file}: row {line} is not path,YES|NO,0|1: {row}")
            paths.append(row["path"])
            labels.append(row["label"])
            is_valid.append(row["is_valid"] == "1")
    try:
        meta = json.loads(meta_path(labels_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        meta = {}
    except json.JSONDecodeError as error:
        raise SwiprError(f"{meta_path(labels_file)}: not valid JSON: {error}") from None
    split = LabeledSplit(tuple(paths), tuple(labels), tuple(is_valid), fingerprint(paths, labels, is_valid), meta)
    return split


def prepare_labels(database: Path, image_root: Path, rules: LabelRules, valid_pct: float, seed: int,
                   labels_file: Path, rebuild: bool = False, force: bool = False,
                   cache_px: int = DEFAULT_PX) -> LabeledSplit:
    """Read the labels file if it exists and was made the same way; make it otherwise.

    An existing file is kept as it is (that is the point of a fixed split) unless `rebuild`.
    If it was made with other rules or split settings than asked for now, that is an error:
    silently re-splitting would change every later trial's validation set.
    """
    if labels_file.is_file() and not rebuild:
        split = read_split(labels_file)
        changed_database = database_change(split.meta, database)
        if changed_database:
            raise SwiprError(f"{labels_file}: {changed_database}; run `swipr labels STUDY.toml` to remake it from "
                             f"the database the study file names (a study started on the old split will refuse "
                             f"the new one), or point [data] database back")
        wanted = {"rules": asdict(rules), "valid_pct": valid_pct, "split_seed": seed}
        made = {key: split.meta.get(key) for key in wanted}
        if split.meta and _jsonable(made) != _jsonable(wanted):
            changed = [key for key in wanted if _jsonable(made[key]) != _jsonable(wanted[key])]
            raise SwiprError(
                f"{labels_file}: made with other {', '.join(changed)} than the study file asks for; "
                f"run `swipr labels STUDY.toml` to remake it (a study started on the old split will refuse the new one)"
            )
        return split
    if not force:
        check_labels_target(labels_file)  # before the slow part: every image is read
    source = database_record(database)   # before build_labels reads it
    table = build_labels(database, image_root, rules, px=cache_px)
    split = make_split(table, rules, valid_pct, seed, source=str(database))
    split.meta["database"] = source
    write_split(split, labels_file, force=force)
    return split


def _jsonable(value):
    return json.loads(json.dumps(value))


def valid_targets(split: LabeledSplit) -> list[int]:
    """The validation rows' targets (1 = YES) in split order, as every run's valid loader gives them."""
    targets = split.targets()
    return [targets[i] for i in split.indices(True)]
