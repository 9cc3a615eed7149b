"""[study] learn_from: the earlier study files a new study starts from, checked as the file is
read: each must exist, none may be this study itself, and no chain of learn_from may lead back
to a study on it (each file's own learn_from is read as far as it goes, nothing else of it).
Whether the earlier studies have finished trials is checked when the run opens them
(search.study.learn_from)."""
from __future__ import annotations

import tomllib
from pathlib import Path

from search.studyfile.fields import check_type, resolve
from swipr_core.errors import SwiprError


def parse_learn_from(where: str, value, base: Path) -> tuple[Path, ...]:
    """A path or an array of paths (relative to the study file's folder) -> resolved paths."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        check_type(f"{where} learn_from{' item' if isinstance(value, list) else ''}", item, str)
    paths = tuple(resolve(base, item) for item in items)
    if len(set(paths)) != len(paths):
        raise SwiprError(f"{where} learn_from names a study file twice")
    return paths


def check_learn_from(where: str, path: Path, learn_from: tuple[Path, ...]) -> None:
    """Refuse a missing file, this study itself, and a cycle of studies learning from each other."""
    me = path.resolve()
    for target in learn_from:
        if target == me:
            raise SwiprError(f"{where} learn_from: {target.name} is this study itself")
        if not target.is_file():
            raise SwiprError(f"{where} learn_from: {target}: study file not found")
    _no_cycle(where, [me], learn_from)


def _no_cycle(where: str, chain: list[Path], learn_from: tuple[Path, ...]) -> None:
    for target in learn_from:
        if target in chain:
            names = " -> ".join(p.name for p in [*chain[chain.index(target):], target])
            raise SwiprError(f"{where} learn_from: a cycle of studies learning from each other ({names})")
        _no_cycle(where, [*chain, target], _declared(target))


def _declared(path: Path) -> tuple[Path, ...]:
    """The learn_from of another study file, as far as it can be read (its own load checks the rest)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        value = raw.get("study", {}).get("learn_from", [])
        return parse_learn_from("", value, path.parent) if value else ()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, SwiprError, AttributeError):
        return ()
