"""The [space] table -> {param: Range | Choices}: a range, an array of choices, or one value.

[space.stage2] (a second stage, docs/stages.md) takes the same keys, each optional (left out:
stage 1's value), held in the same dict under the params they are drawn as, `stage2_<key>`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from objectives.space import FINDER_SUGGESTIONS, Choices, FinderLR, Range, stage2_name, stage_space, values
from search.studyfile.fields import check_type, keyed
from swipr_core.errors import SwiprError
from swipr_core.train.schedule import MAX_EPOCHS, STAGE_KEYS, check_param
from swipr_core.train.schedule import check_epochs as core_check_epochs

# The TOML type each key's values have.
_VALUE_TYPES = {"lr": float, "batch_size": int, "image_size": int, "freeze": str,
                "n_cycles": int, "cycle_len": int, "cycle_mult": int, "lr_factor": float}


def _check_value(where: str | Path, key: str, value: Any, section: str = "space") -> None:
    """The TOML type here; the value itself by the core (swipr_core.train.schedule.check_param)."""
    check_type(f"{where}: [{section}] {key} value", value, _VALUE_TYPES[key])
    if key == "lr_factor":   # lr = { finder = ..., factor = ... }: any positive multiple
        if not (math.isfinite(value) and value > 0):
            raise SwiprError(f"{where}: [{section}] lr factor must be a positive number, got {value!r}")
        return
    if section == STAGE2_SECTION and key == "n_cycles" and value <= 0:
        if value < 0:
            raise SwiprError(f"{where}: [{section}] n_cycles must be 0 (skip stage 2) or more, got {value}")
        return   # only stage 2 may offer 0 cycles: the trial skips it
    with keyed(f"{where}: [{section}]"):
        check_param(key, value)


STAGE2_SECTION = "space.stage2"
# The lowest lr a range test tries (swipr_core.train.lr_find.START_LR, not imported: it brings torch), so
# the lowest it can suggest: a factor this many times larger or more can never give an lr below 1.
LOWEST_SUGGESTION = 1e-7


def parse_space(where: Path, raw: dict) -> dict[str, Range | Choices | FinderLR]:
    table = raw.get("space", {})
    if not isinstance(table, dict):
        raise SwiprError(f"{where}: [space] must be a table")
    table = dict(table)
    stage2 = table.pop("stage2", None)
    space = _parse_keys(where, table, "space")
    missing = [key for key in STAGE_KEYS if key not in space]
    if missing:
        raise SwiprError(f"{where}: [space] is missing {', '.join(missing)} (give a value, a range or choices)")
    if stage2 is not None:
        space.update({stage2_name(key): spec for key, spec in _parse_stage2(where, stage2).items()})
    return space


def _parse_keys(where: Path, table: dict, section: str) -> dict[str, Range | Choices | FinderLR]:
    space: dict[str, Range | Choices | FinderLR] = {}
    for key, spec in table.items():
        if key not in STAGE_KEYS:
            raise SwiprError(f"{where}: unknown key '{key}' in [{section}] (known: {', '.join(STAGE_KEYS)})")
        if isinstance(spec, list):
            if not spec:
                raise SwiprError(f"{where}: [{section}] {key} has no choices")
            for value in spec:
                _check_value(where, key, value, section)
            space[key] = Choices(tuple(spec))
        elif isinstance(spec, dict) and key == "lr" and "finder" in spec:
            if section == STAGE2_SECTION:
                raise SwiprError(f"{where}: [{section}] lr can't come from the finder: its range test starts from "
                                 f"the study's starting weights, not from stage 1's; give a range, choices or a value")
            space[key] = _parse_finder(where, spec)
        elif isinstance(spec, dict):
            space[key] = _parse_range(where, key, spec, section)
        else:
            _check_value(where, key, spec, section)
            space[key] = Choices((spec,))
    return space


def _parse_stage2(where: Path, table) -> dict[str, Range | Choices | FinderLR]:
    """[space.stage2]: each key optional; n_cycles may offer 0 (skip the stage), never only 0."""
    if not isinstance(table, dict):
        raise SwiprError(f"{where}: [{STAGE2_SECTION}] must be a table")
    if not table:
        raise SwiprError(f"{where}: [{STAGE2_SECTION}] is empty: give the keys stage 2 changes (for example "
                         f"image_size, freeze, lr), or leave the table out for a single stage")
    stage2 = _parse_keys(where, table, STAGE2_SECTION)
    cycles = stage2.get("n_cycles")
    if cycles is not None and not isinstance(cycles, FinderLR) and set(values(cycles)) == {0}:
        raise SwiprError(f"{where}: [{STAGE2_SECTION}] n_cycles offers only 0, so stage 2 would never run; offer "
                         f"1 or more beside it, or leave the table out")
    return stage2


def _parse_range(where: Path, key: str, spec: dict, section: str = "space") -> Range:
    if key == "freeze":
        raise SwiprError(f"{where}: [{section}] freeze takes choices (an array), not a range")
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown:
        raise SwiprError(f"{where}: unknown key '{sorted(unknown)[0]}' in [{section}] {key} (known: low, high, log, "
                         f"step)")
    for bound in ("low", "high"):
        if bound not in spec:
            raise SwiprError(f"{where}: [{section}] {key} range needs '{bound}'")
        _check_value(where, key, spec[bound], section)
    log = spec.get("log", False)
    check_type(f"{where}: [{section}] {key} log", log, bool)
    step = spec.get("step")
    if step is not None:
        check_type(f"{where}: [{section}] {key} step", step, float)
        whole = key not in ("lr", "lr_factor")
        if (whole and not isinstance(step, int)) or not math.isfinite(step) or step <= 0:
            raise SwiprError(f"{where}: [{section}] {key} step must be "
                             f"{'a whole number, 1 or more' if whole else 'a positive number'}, got {step}")
    low, high = spec["low"], spec["high"]
    if low > high:
        raise SwiprError(f"{where}: [{section}] {key} low ({low}) is above high ({high})")
    if log and step is not None:
        raise SwiprError(f"{where}: [{section}] {key} can't have both log = true and a step")
    if log and low <= 0:   # stage 2's n_cycles from 0: a log scale has no 0
        raise SwiprError(f"{where}: [{section}] {key} can't be on a log scale from {low}")
    if step is not None and not _on_grid(low, high, step):
        # Optuna would quietly lower high to the grid, so the value typed would never be tried.
        last = low + int((high - low) // step) * step
        raise SwiprError(f"{where}: [{section}] {key} high ({high}) is not low ({low}) plus a whole number of "
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
        parsed = FinderLR(finder, _parse_range(where, "lr_factor", factor))
    else:
        values = factor if isinstance(factor, list) else [factor]
        if not values:
            raise SwiprError(f"{where}: [space] lr factor has no choices")
        for value in values:
            _check_value(where, "lr_factor", value)
        parsed = FinderLR(finder, Choices(tuple(float(v) for v in values)))
    _check_possible(where, parsed)
    return parsed


def _check_possible(where: Path, spec: FinderLR) -> None:
    """Refuse a factor that no suggestion could turn into an lr below 1 (a trial's lr must be);
    a factor that only some suggestions overshoot fails those trials alone, when they run."""
    high = largest(spec.factor)
    if high * LOWEST_SUGGESTION >= 1:
        raise SwiprError(f"{where}: [space] lr factor goes up to {high:g}, but a range test suggests "
                         f"{LOWEST_SUGGESTION:g} at the lowest, so that factor would make an lr of 1 or more; give "
                         f"a factor below {1 / LOWEST_SUGGESTION:g} (a decade or two around 1 is usual)")


def _on_grid(low, high, step) -> bool:
    steps = (high - low) / step
    return abs(steps - round(steps)) <= 1e-9 * max(1.0, abs(steps))


def largest(spec: Range | Choices | FinderLR):
    if isinstance(spec, FinderLR):   # its lr is known once the range test has run
        raise TypeError("an lr from the finder has no largest value in the study file")
    return spec.high if isinstance(spec, Range) else max(spec.values)


def longest_run(space: dict, head_epochs: int) -> int:
    """Epochs of the longest run the space allows, over both stages where it has two: each of
    n_cycles, cycle_len and cycle_mult lengthens a schedule, and frozen_then_unfrozen adds
    head_epochs. SwiprError past the cap a run may have (swipr_core.train.schedule.MAX_EPOCHS)."""
    first = stage_space(space, 1)
    total = _longest_stage(first, head_epochs)
    second = stage_space(space, 2)
    if second:
        try:
            epochs = _longest_stage({**first, **second}, head_epochs)   # a key left out: stage 1's
        except SwiprError as error:
            raise SwiprError(f"stage 2: {error}") from None
        if total + epochs > MAX_EPOCHS:
            raise SwiprError(f"stage 1 may run {total} epochs and stage 2 {epochs}, {total + epochs} in all; a run "
                             f"may have at most {MAX_EPOCHS}")
        total += epochs
    return total


def _longest_stage(space: dict, head_epochs: int) -> int:
    highs = {key: int(largest(space[key])) for key in ("n_cycles", "cycle_len", "cycle_mult")}
    freezes = space["freeze"].values if isinstance(space["freeze"], Choices) else ()
    freeze = "frozen_then_unfrozen" if "frozen_then_unfrozen" in freezes else "unfrozen"
    return core_check_epochs(**highs, freeze=freeze, head_epochs=head_epochs)


def largest_image_size(space: dict) -> int:
    """The largest image size any stage trains at: what [data] cache_px must hold."""
    return max(int(largest(spec)) for name, spec in space.items() if name in ("image_size", stage2_name("image_size")))


def check_epochs(where: Path, space: dict, head_epochs: int) -> None:
    try:
        longest_run(space, head_epochs)
    except SwiprError as error:
        tables = "[space] and [space.stage2] allow" if stage_space(space, 2) else "[space] allows"
        raise SwiprError(f"{where}: {tables} a schedule too long: {error}") from None
