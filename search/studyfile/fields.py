"""A TOML table -> keyword arguments for a dataclass, checked against the dataclass's fields.

An unknown key is an error naming it (and the known ones); a value of the wrong type names
the key and the type it should have. Paths are strings in TOML, resolved against a folder.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from swipr_core.errors import FieldError, SwiprError

_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path (string)",
          tuple: "an array", dict: "a table"}


def resolve(base: Path, value: str) -> Path:
    return (base / os.path.expanduser(value)).resolve()


def table_at(where: str | Path, raw: dict, name: str) -> dict:
    """The table `name` ('data.rules' reaches into [data]); {} when absent."""
    table = raw
    for part in name.split("."):
        table = table.get(part, {})
        if not isinstance(table, dict):
            raise SwiprError(f"{where}: [{name}] must be a table")
    return table


def check_type(where: str, value: Any, expected: type) -> None:
    kinds = (int, float) if expected is float else (expected,)
    # TOML booleans are ints to Python; never accept one where a number is meant.
    if not isinstance(value, kinds) or (isinstance(value, bool) and expected is not bool):
        raise SwiprError(f"{where} must be {_NAMES[expected]}, got {value!r}")


def _accepts(hint) -> tuple[type, type | None]:
    """(TOML type, item type for arrays) that a field's type hint accepts."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple, args[0]
    if args and origin is not tuple and len(args) == 1:   # X | None
        return _accepts(args[0])
    return (Path if hint is Path else hint), None


def parse_table(where: str | Path, section: str, table: dict, cls, base: Path, skip: tuple[str, ...] = ()) -> dict:
    """`table`'s keys as keyword arguments for `cls`: typed, paths resolved, arrays as tuples."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    values = {}
    for key, value in table.items():
        if key in skip:
            continue
        if key not in known:
            raise SwiprError(f"{where}: unknown key '{key}' in [{section}] (known: {', '.join(known)})")
        kind, item = _accepts(hints[key])
        if kind is tuple and item is not None:   # every array field names its item type
            if not isinstance(value, list):
                raise SwiprError(f"{where}: [{section}] {key} must be an array, got {value!r}")
            for element in value:
                check_type(f"{where}: [{section}] {key} item", element, item)
            value = tuple(value)
        elif kind is Path:
            check_type(f"{where}: [{section}] {key}", value, str)
            value = resolve(base, value) if value else None
        else:
            check_type(f"{where}: [{section}] {key}", value, kind)
            value = float(value) if kind is float else value
        values[key] = value
    return values


def one_of(where: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SwiprError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")
    return value


@contextmanager
def keyed(where: str):
    """A core type's FieldError, which names only its key, as one line that says where the
    value came from: `where` is e.g. "studies/x.toml: [data]" or "--device:"."""
    try:
        yield
    except FieldError as error:
        raise SwiprError(f"{where} {error}") from None
