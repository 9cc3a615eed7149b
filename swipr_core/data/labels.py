"""LIKE/PASS labels from the Swipr pics database.

The folder a photo sits in says what the user did with it (a "yes" or a "no" folder); the
metadata columns then demote a "yes" photo to NO when it fails a rule (no face found, a man
in the picture, a group photo, ages outside the wanted range). Rows that cannot be used are
never dropped silently: each is counted under exactly one reason in `EXCLUSION_REASONS`.

The table is not trusted as it is: a path outside the image root (absolute, `..`, or a
symlink whose target is outside) is excluded, a path listed twice is kept once, and a path
or a photo (the same bytes under several paths) labelled both YES and NO is excluded.
Identical photos under different paths stay in the table as one group (their content hash),
so that the split can keep them on one side.
"""
from __future__ import annotations

import difflib
import errno
import hashlib
import math
import os
import sqlite3
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from swipr_core.data.images import NotRegularFile, decode_square, open_regular
from swipr_core.errors import FieldError, SwiprError

YES, NO = "YES", "NO"
# New reasons go at the end: labels files written before list only the first five.
EXCLUSION_REASONS = ("invalid_flag", "invalid_label", "outside_dirs", "missing_file", "undecodable",
                     "outside_root", "duplicate_path", "conflicting_labels")
PICS_COLUMNS = ("path", "label", "invalid", "ages", "num_people", "male_present")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_NO_FILE = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP)
_INT_RULES = ("min_people", "max_people", "min_age", "max_age")
DEFAULT_PX = 256  # the image cache's default size (DataSpec.cache_px): images are checked at it


@dataclass(frozen=True)
class LabelRules:
    """Which rows are YES, NO or left out; checked on construction."""

    yes_dirs: tuple[str, ...] = ()
    no_dirs: tuple[str, ...] = ()
    invalid_labels: tuple[int, ...] = ()  # rows with these label codes are dropped
    fail_labels: tuple[int, ...] = ()  # e.g. "no face", "rotation didn't help": always NO
    fail_on_male: bool = False
    min_people: int = 0  # 0 = no limit
    max_people: int = 0
    min_age: int = 0
    max_age: int = 0

    def __post_init__(self) -> None:
        for key in ("yes_dirs", "no_dirs", "invalid_labels", "fail_labels"):
            value = getattr(self, key)
            # A lone string would otherwise be read as a sequence of one-letter folders.
            if not isinstance(value, (list, tuple)):
                raise FieldError(key, f"must be a list, but got {value!r}")
            object.__setattr__(self, key, tuple(value))  # lists from TOML, kept hashable
        for key in ("yes_dirs", "no_dirs"):
            for folder in getattr(self, key):
                parts = PurePosixPath(folder).parts if isinstance(folder, str) else ()
                if not parts or parts[0] == "/" or ".." in parts:
                    raise FieldError(key, f"entries must be folders relative to image_root, without '..', "
                                              f"but got {folder!r}")
        for key in ("invalid_labels", "fail_labels"):
            if not all(_is_int(code) for code in getattr(self, key)):
                raise FieldError(key, f"must hold integer label codes, but got {list(getattr(self, key))!r}")
        if not isinstance(self.fail_on_male, bool):
            raise FieldError("fail_on_male", f"must be true or false, but got {self.fail_on_male!r}")
        for key in _INT_RULES:
            value = getattr(self, key)
            if not _is_int(value) or value < 0:
                raise FieldError(key, f"must be an integer >= 0 (0 = no limit), but got {value!r}")
        for low, high in (("min_people", "max_people"), ("min_age", "max_age")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo and hi and lo > hi:
                raise FieldError(low, f"must not exceed {high}, but got {low}={lo} and {high}={hi}")


@dataclass(frozen=True)
class PicRow:
    """One row of the `pics` table, NULL integers read as 0 and ages parsed."""

    rowid: int
    path: str
    label: int
    invalid: int
    ages: tuple[float, ...]
    num_people: int
    male_present: int
    odd_ages: str | None = None  # the ages cell, when a part of it is not an age (skipped)


@dataclass(frozen=True)
class LabelTable:
    paths: tuple[str, ...]  # relative to image_root, as stored in the db, in db rowid order
    labels: tuple[str, ...]  # "YES" / "NO", same length
    excluded: dict[str, int]  # reason -> count (every reason key present, 0 if none)
    groups: tuple[str, ...] = ()  # per row: SHA-256 of the file; rows sharing one are one photo
    same_content: dict[str, int] = field(default_factory=dict)  # {"groups", "rows"} of shared photos
    # (rowid, ages cell) of rows whose ages the age rules read in part only; () without age rules
    odd_ages: tuple[tuple[int, str], ...] = ()


def read_pics(database: Path) -> list[PicRow]:
    """All rows of `pics` (a table or a view) in rowid order; a SwiprError for anything unusable."""
    database = Path(database)
    if database.is_dir():
        raise SwiprError(f"{database}: is a folder, not a database file")
    if not database.is_file():
        raise SwiprError(f"{database}: database file not found")
    with open(database, "rb") as handle:
        header = handle.read(len(_SQLITE_MAGIC))
    # sqlite3 opens anything and only fails on the first query, with a vaguer message.
    if header != _SQLITE_MAGIC:
        raise SwiprError(f"{database}: not an SQLite database")
    # Read-only, so that a wrong path never leaves an empty database or a journal behind.
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        kind = connection.execute("SELECT type FROM sqlite_master WHERE type IN ('table', 'view') "
                                  "AND name = 'pics'").fetchone()
        if kind is None:
            raise SwiprError(f"{database}: no table or view 'pics'")
        present = {row[1] for row in connection.execute("PRAGMA table_info(pics)")}
        missing = [column for column in PICS_COLUMNS if column not in present]
        if missing:
            raise SwiprError(f"{database}: {kind[0]} pics lacks column(s) {', '.join(missing)}")
        # A view has no rowid: its rows are numbered in the order it gives them.
        order = "rowid, " if kind[0] == "table" else "NULL, "
        rows = connection.execute(f"SELECT {order}{', '.join(PICS_COLUMNS)} FROM pics"
                                  + (" ORDER BY rowid" if kind[0] == "table" else "")).fetchall()
    except sqlite3.Error as error:
        raise SwiprError(f"{database}: cannot read pics ({error})") from None
    finally:
        connection.close()
    return [_pic_row(database, row if row[0] is not None else (number, *row[1:]))
            for number, row in enumerate(rows, start=1)]


def classify(row: PicRow, rules: LabelRules) -> str:
    """"YES", "NO" or the exclusion reason, from the row alone (files are not looked at)."""
    if row.invalid != 0:
        return "invalid_flag"
    if row.label in rules.invalid_labels:
        return "invalid_label"
    parts = PurePosixPath(row.path).parts
    if not parts or parts[0] == "/" or ".." in parts:
        return "outside_root"  # the folder rules read the path as written; ".." would fool them
    if any(_is_under(parts, folder) for folder in rules.no_dirs):
        return NO  # a "no" folder wins over a "yes" folder above or below it
    if not any(_is_under(parts, folder) for folder in rules.yes_dirs):
        return "outside_dirs"
    return YES if _passes(row, rules) else NO


def build_labels(database: Path, image_root: Path, rules: LabelRules, px: int = DEFAULT_PX) -> LabelTable:
    """Classify every row, drop duplicate and conflicting paths, then drop rows whose image
    is outside the root, missing or broken, and photos labelled both ways.

    Each image is checked by decoding it as the image cache will, at its size `px` (the
    study's cache_px): a photo kept here is one the cache can decode."""
    image_root = Path(image_root)
    rows = read_pics(database)   # first: a missing database is named as such, not as its folder
    if not image_root.is_dir():
        raise SwiprError(f"{image_root}: image_root is not a directory")
    if not rows:
        raise SwiprError(f"{database}: pics has no rows")
    excluded = dict.fromkeys(EXCLUSION_REASONS, 0)
    kept: list[tuple[str, str]] = []
    for row in rows:
        verdict = classify(row, rules)
        if verdict in (YES, NO):
            kept.append((row.path, verdict))
        else:
            excluded[verdict] += 1
    kept = _unique_paths(kept, excluded)
    root = os.path.realpath(image_root)
    # Hashing and decoding are the slow part on a real photo collection; both release the GIL.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        checked = list(pool.map(lambda item: _file_check(root, item[0], px), kept))
    rows_ok: list[tuple[str, str, str]] = []
    for (path, label), (problem, digest) in zip(kept, checked, strict=True):
        if digest is None:  # then problem says why
            excluded[problem or "undecodable"] += 1
        else:
            rows_ok.append((path, label, digest))
    rows_ok = _consistent_photos(rows_ok, excluded)
    paths, labels, groups = (tuple(column) for column in zip(*rows_ok, strict=True)) if rows_ok else ((), (), ())
    for wanted in (YES, NO):
        if wanted not in labels:
            _refuse_no_rows_left(wanted, database, rows, rules, _summary(list(labels), excluded))
    sizes = [n for n in Counter(groups).values() if n > 1]
    odd_ages = tuple((row.rowid, row.odd_ages) for row in rows if row.odd_ages) \
        if rules.min_age or rules.max_age else ()
    return LabelTable(paths=paths, labels=labels, excluded=excluded, groups=groups,
                      same_content={"groups": len(sizes), "rows": sum(sizes)}, odd_ages=odd_ages)


def _refuse_no_rows_left(wanted: str, database: Path, rows: list[PicRow], rules: LabelRules, summary: str):
    """No `wanted` row is left. Where entries of the class's folder rule (`yes_dirs` or
    `no_dirs`) match no path at all (a case slip, `insta/okay` for `insta/ok`), the error names
    the rule and those entries, each with the nearest folders the table does hold."""
    key = "yes_dirs" if wanted == YES else "no_dirs"
    folders: set[str] = set()
    for row in rows:
        parts = PurePosixPath(row.path).parts[:-1]
        if parts and parts[0] != "/" and ".." not in parts:   # outside_root's are no folders to offer
            folders.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    unmatched = [entry for entry in getattr(rules, key)
                 if not any(_is_under(PurePosixPath(row.path).parts, entry) for row in rows)]
    left = f"no {wanted} rows left after the rules ({summary})"
    if not unmatched:
        raise SwiprError(f"{database}: {left}")
    by_case = {folder.lower(): folder for folder in sorted(folders)}

    def nearest(entry: str) -> str:
        near = difflib.get_close_matches(entry.lower(), by_case, n=3, cutoff=0.6)
        return f"nearest folders there: {', '.join(by_case[n] for n in near)}" if near else "no folder near it"

    entries = "; ".join(f"{entry!r} ({nearest(entry)})" for entry in unmatched)
    raise FieldError(f"rules.{key}", f"{entries}: no path in {database} lies under "
                                     f"{'it' if len(unmatched) == 1 else 'them'}, so {left}")


def describe_odd_ages(odd_ages: dict) -> str:
    """One line naming the rows whose ages the age rules read in part only, for the user to check;
    `odd_ages` as the labels meta keeps it: {"rows": count, "first": [[rowid, cell], ...]}."""
    named = ", ".join(f"row {rowid} {cell}" for rowid, cell in odd_ages["first"])
    more = f" and {odd_ages['rows'] - len(odd_ages['first'])} more" if odd_ages["rows"] > len(odd_ages["first"]) else ""
    return (f"ages that are not numbers >= 0 were skipped by the age rules in "
            f"{odd_ages['rows']} row{'s' if odd_ages['rows'] != 1 else ''} of pics: {named}{more}")


def database_record(database: Path) -> dict | None:
    """What a labels file records of the pics database it is made from: the path, size,
    modification time and SHA-256 of its bytes; None for a file that can't be read (reading
    the table then says why)."""
    try:
        info = os.stat(database)
        with open_regular(database) as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except (OSError, NotRegularFile):
        return None
    return {"path": str(database.resolve()), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": digest}


def database_change(meta: dict, database: Path) -> str | None:
    """How `database` differs from the one a labels file's `meta` says it was made from; None
    when it is the same data (the same bytes, even moved or copied elsewhere) or when that
    can't be told (no record, or no database file to compare)."""
    current = os.stat(database) if database.is_file() else None
    if current is None or not os.access(database, os.R_OK):
        return None
    recorded = meta.get("database")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        source = meta.get("source")   # labels files written before the record: its path only
        if isinstance(source, str) and source and Path(source).resolve() != database.resolve():
            return f"was made from {source}, but [data] database is {database}"
        return None
    same_path = recorded.get("path") == str(database.resolve())
    if same_path and (recorded.get("bytes"), recorded.get("mtime_ns")) == (current.st_size, current.st_mtime_ns):
        return None   # untouched: no need to read it
    now = database_record(database)
    if now is None or now["sha256"] == recorded["sha256"]:
        return None
    if not same_path:
        return f"was made from {recorded.get('path')}, but [data] database is {database}, which holds other data"
    return (f"was made from {database} as it was before it changed ({recorded.get('bytes')} bytes then, "
            f"{current.st_size} now)")


def _unique_paths(kept: list[tuple[str, str]], excluded: dict[str, int]) -> list[tuple[str, str]]:
    """One row per path (first one's place); a path labelled both YES and NO is dropped."""
    by_path: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for path, label in kept:
        # "a//b" and "a/./b" name the same file as "a/b".
        by_path[str(PurePosixPath(path))].append((path, label))
    unique = []
    for same in by_path.values():
        if len({label for _, label in same}) > 1:
            excluded["conflicting_labels"] += len(same)
            continue
        excluded["duplicate_path"] += len(same) - 1
        unique.append(same[0])
    return unique


def _consistent_photos(rows: list[tuple[str, str, str]], excluded: dict[str, int]) -> list:
    """Drop every copy of a photo (same bytes) that is labelled both YES and NO."""
    labels_of: dict[str, set[str]] = defaultdict(set)
    for _, label, digest in rows:
        labels_of[digest].add(label)
    consistent = [row for row in rows if len(labels_of[row[2]]) == 1]
    excluded["conflicting_labels"] += len(rows) - len(consistent)
    return consistent


def _pic_row(database: Path, row: tuple) -> PicRow:
    rowid, path, label, invalid, ages, num_people, male_present = row
    if not isinstance(path, str) or not path.strip():
        raise SwiprError(f"{database}: pics row {rowid}: path must be non-empty text, "
                         f"but got {path!r}")
    values = {}
    for column, value in (("label", label), ("invalid", invalid), ("num_people", num_people),
                          ("male_present", male_present)):
        values[column] = _int_cell(database, rowid, column, value)
    parsed, odd = _parse_ages(ages)
    return PicRow(rowid=rowid, path=path, ages=parsed, odd_ages=odd, **values)


def _int_cell(database: Path, rowid: int, column: str, value) -> int:
    if value is None:
        return 0  # the notebook treated a missing count or flag as "not set"
    try:
        number = float(value)
        if number.is_integer():
            return int(number)
    except (TypeError, ValueError):
        pass
    raise SwiprError(f"{database}: pics row {rowid}: {column} must be an integer, "
                     f"but got {value!r}")


def _parse_ages(value) -> tuple[tuple[float, ...], str | None]:
    """(the ages, None), or (the ages that could be read, the text) when a part is not an age.

    The face model writes "25,31" and, at times, junk such as "25,x,": a part that is not a
    number >= 0 is skipped and the row is reported. Age regressors write "25.4"
    or REAL 17.0; "25 31" is read too. Empty parts (a trailing comma) are nothing."""
    if value is None:
        return (), None
    if isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, bytes):
        # A BLOB is the bytes of its text; str() would make b"17" the text "b'17'".
        text = value.decode("utf-8", errors="replace")
    else:
        text = str(value)
    ages, odd = [], False
    for part in text.replace(",", " ").split():
        try:
            age = float(part)
        except ValueError:
            age = math.nan
        if math.isfinite(age) and age >= 0:
            ages.append(age)
        else:
            odd = True
    return tuple(ages), (_shortened(repr(value)) if odd else None)


def _shortened(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _passes(row: PicRow, rules: LabelRules) -> bool:
    if row.label in rules.fail_labels:
        return False
    if rules.fail_on_male and row.male_present:
        return False
    if rules.min_people and row.num_people < rules.min_people:
        return False
    if rules.max_people and row.num_people > rules.max_people:
        return False
    if rules.min_age and any(age < rules.min_age for age in row.ages):
        return False
    if rules.max_age and any(age > rules.max_age for age in row.ages):
        return False
    return True


def _file_check(root: str, rel: str, px: int) -> tuple[str | None, str | None]:
    """(exclusion reason, None) or (None, SHA-256 of the file's bytes)."""
    if "\0" in rel:
        return "missing_file", None  # no file system can hold this name
    full = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, full]) != root:
        return "outside_root", None  # a symlink (here or in a folder above) leads out
    try:
        with open_regular(full) as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            handle.seek(0)
            decode_square(handle, px)
    except NotRegularFile:
        return "missing_file", None  # a folder, FIFO or device: no image file there
    except OSError as error:
        # Pillow's own OSErrors carry no errno: those mean the bytes are not an image.
        return ("missing_file" if error.errno in _NO_FILE else "undecodable"), None
    except Exception:  # as the cache does: Pillow raises many types for one cause, a bad file
        return "undecodable", None
    return None, digest


def _summary(labels: list[str], excluded: dict[str, int]) -> str:
    counts = f"YES {labels.count(YES)}, NO {labels.count(NO)}"
    reasons = ", ".join(f"{reason} {count}" for reason, count in excluded.items() if count)
    return f"{counts}; excluded: {reasons or 'none'}"


def _is_under(parts: tuple[str, ...], folder: str) -> bool:
    prefix = PurePosixPath(folder).parts
    return len(parts) > len(prefix) and parts[: len(prefix)] == prefix


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


