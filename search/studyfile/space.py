"""The [space] table -> {param: Range | Choices}: a range, an array of choices, or one value."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from objectives.space import FINDER_SUGGESTIONS, SPACE_KEYS, Choices, FinderLR, Range
from search.studyfile.fields import check_type, keyed
from swipr_core.errors import SwiprError
from swipr_core.schedule import check_epochs as core_check_epochs
from swipr_core.schedule import check_param

# The TOML type each key's values have.
_VALUE_TYPES = {"lr": float, "batch_size": int, "image_size": int, "freeze": str,
                "n_cycles": int, "cycle_len": int, "cycle_mult": int, "lr_factor": float}


def _check_value(where: str | Path, key: str, value: Any) -> None:
    """The TOML type here; the value itself by the core (swipr_core.schedule.check_param)."""
    check_type(f"{where}: [space] {key} value", value, _VALUE_TYPES[key])
    if key == "lr_factor":   # lr = { finder = ..., factor = ... }: any positive multiple
        if not (math.isfinite(value) and value > 0):
            raise SwiprError(f"{where}: [space] lr factor must be a positive number, got {value!r}")
        return
    with keyed(f"{where}: [space]"):
        check_param(key, value)


def parse_space(where: Path, raw: dict) -> dict[str, Range | Choices | FinderLR]:
    table = raw.get("space", {})
    if not isinstance(table, dict):
        raise SwiprError(f"{where}: [space] must be a table")
    space: dict[str, Range | Choices | FinderLR] = {}
    for key, spec in table.items():
        if key not in SPACE_KEYS:
            raise SwiprError(f"{where}: unknown key '{key}' in [space] (known: {', '.join(SPACE_KEYS)})")
        if isinstance(spec, list):
            if not spec:
                raise SwiprError(f"{where}: [space] {key} has no choices")
            for value in spec:
                _check_value(where, key, value)
            space[key] = Choices(tuple(spec))
        elif isinstance(spec, dict) and key == "lr" and "finder" in spec:
            space[key] = _parse_finder(where, spec)
        elif isinstance(spec, dict):
            space[key] = _parse_range(where, key, spec)
        else:
            _check_value(where, key, spec)
            space[key] = Choices((spec,))
    missing = [key for key in SPACE_KEYS if key not in space]
    if missing:
        raise SwiprError(f"{where}: [space] is missing {', '.join(missing)} (give a value, a range or choices)")
    return space


def _parse_range(where: Path, key: str, spec: dict) -> Range:
    if key == "freeze":
        raise SwiprError(f"{where}: [space] freeze takes choices (an array), not a range")
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown:
        raise SwiprError(f"{where}: unknown key '{sorted(unknown)[0]}' in [space] {key} (known: low, high, log, step)")
    for bound in ("low", "high"):
        if bound not in spec:
            raise SwiprError(f"{where}: [space] {key} range needs '{bound}'")
        _check_value(where, key, spec[bound])
    log = spec.get("log", False)
    check_type(f"{where}: [space] {key} log", log, bool)
    step = spec.get("step")
    if step is not None:
        check_type(f"{where}: [space] {key} step", step, float)
        whole = key not in ("lr", "lr_factor")
        if (whole and not isinstance(step, int)) or not math.isfinite(step) or step <= 0:
            raise SwiprError(f"{where}: [space] {key} step must be {'a whole number, 1 or more' if whole else 'a positive number'}, "
                             f"got {step}")
    low, high = spec["low"], spec["high"]
    if low > high:
        raise SwiprError(f"{where}: [space] {key} low ({low}) is above high ({high})")
    if log and step is not None:
        raise SwiprError(f"{where}: [space] {key} can't have both log = true and a step")
    if step is not None and not _on_grid(low, high, step):
        # Optuna would quietly lower high to the grid, so the value typed would never be tried.
        last = low + int((high - low) // step) * step
        raise SwiprError(f"{where}: [space] {key} high ({high}) is not low ({low}) plus a whole number of "
                         f"steps ({step}); the last value on that grid is {last:g}")
    return Range(low=low, high=high, log=log, step=step, is_int=key not in ("lr", "lr_factor"))


def _parse_finder(where: Path, spec: dict) -> FinderLR:
    """lr = { finder = "valley", factor = { low = 0.3, high = 3, log = true } }: the factor a
    range, choices or one value, as any [space] key."""
    unknown = set(spec) - {"finder", "factor"}
    if unknown:
        raise SwiprError(f"{where}: unknown key '{sorted(unknown)[0]}' in [space] lr (known with finder: finder, "
                         f"factor)")
    finder = spec["finder"]
    if finder not in FINDER_SUGGESTIONS:
        raise SwiprError(f"{where}: [space] lr finder must be one of {', '.join(FINDER_SUGGESTIONS)}, got {finder!r}")
    factor = spec.get("factor", 1.0)
    if isinstance(factor, dict):
        return FinderLR(finder, _parse_range(where, "lr_factor", factor))
    values = factor if isinstance(factor, list) else [factor]
    if not values:
        raise SwiprError(f"{where}: [space] lr factor has no choices")
    for value in values:
        _check_value(where, "lr_factor", value)
    return FinderLR(finder, Choices(tuple(float(v) for v in values)))


def _on_grid(low, high, step) -> bool:
    steps = (high - low) / step
    return abs(steps - round(steps)) <= 1e-9 * max(1.0, abs(steps))


def largest(spec: Range | Choices | FinderLR):
    if isinstance(spec, FinderLR):   # its lr is known once the range test has run
        raise TypeError("an lr from the finder has no largest value in the study file")
    return spec.high if isinstance(spec, Range) else max(spec.values)


def longest_run(space: dict, head_epochs: int) -> int:
    """Epochs of the longest run the space allows: each of n_cycles, cycle_len and cycle_mult
    lengthens a schedule, and frozen_then_unfrozen adds head_epochs. SwiprError past the cap
    a run may have (swipr_core.schedule.MAX_EPOCHS)."""
    highs = {key: int(largest(space[key])) for key in ("n_cycles", "cycle_len", "cycle_mult")}
    freezes = space["freeze"].values if isinstance(space["freeze"], Choices) else ()
    freeze = "frozen_then_unfrozen" if "frozen_then_unfrozen" in freezes else "unfrozen"
    return core_check_epochs(**highs, freeze=freeze, head_epochs=head_epochs)


def check_epochs(where: Path, space: dict, head_epochs: int) -> None:
    try:
        longest_run(space, head_epochs)
    except SwiprError as error:
        raise SwiprError(f"{where}: [space] allows a schedule too long: {error}") from None
