"""The search space: what the study file's [space] holds, and how a trial draws from it.

Parameter names are the space's keys, so a trial's params are exactly a training config,
except where n_cycles is a budget ([study] n_cycles = "budget", the default, with several
[space] n_cycles values): then a trial plans the largest value and each value on the way is a
finished schedule of that many cycles (swipr_core.schedule), so n_cycles is not drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import optuna

SPACE_KEYS = ("lr", "batch_size", "image_size", "freeze", "n_cycles", "cycle_len", "cycle_mult")
# [study] n_cycles: how a trial gets its cycles. "budget": nested schedules (issue 21);
# "sampled": one more param, each trial one length (the way before issue 21).
N_CYCLES_MODES = ("budget", "sampled")
DEFAULT_N_CYCLES_MODE = "budget"   # the winner of bench/search_efficiency.py
MODE_ATTR = "n_cycles_mode"        # user attr (a trial's, and the study's): how it got its cycles


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    is_int: bool = False


@dataclass(frozen=True)
class Choices:
    values: tuple


# swipr_core.lr_find.SUGGESTIONS' names, here without torch: reading a study file imports none.
FINDER_SUGGESTIONS = ("valley", "slide", "minimum", "steep")


@dataclass(frozen=True)
class FinderLR:
    """lr = { finder = "valley", factor = ... }: the range test's suggestion for the trial's
    freeze, batch size and image size (objectives.lr_finder), times a searched factor, the
    trial's param `lr_factor`."""
    finder: str
    factor: Range | Choices

    @property
    def param(self) -> str:
        return "lr_factor"


def param_name(name: str, spec: Range | Choices | FinderLR) -> str:
    """The Optuna param a [space] key is drawn as: its own name, or a finder's factor's."""
    return spec.param if isinstance(spec, FinderLR) else name


def suggest(trial: optuna.Trial, name: str, spec: Range | Choices | FinderLR):
    """The trial's value for `name`; asking again returns the same value (a FinderLR: its factor)."""
    if isinstance(spec, FinderLR):
        return suggest(trial, spec.param, spec.factor)
    if isinstance(spec, Range):
        if spec.is_int:
            return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return trial.suggest_categorical(name, list(spec.values))


def values(spec: Range | Choices) -> tuple:
    """Every value an integer range or choices offers."""
    if isinstance(spec, Choices):
        return tuple(spec.values)
    step = int(spec.step or 1)
    return tuple(range(int(spec.low), int(spec.high) + 1, step))


def cycle_budget(space: dict, mode: str) -> tuple[int, ...] | None:
    """The n_cycles values that are finished schedules when n_cycles is a trial's budget (the
    trial plans the last, the largest); None where n_cycles is drawn like any other param."""
    if mode not in N_CYCLES_MODES:
        raise ValueError(f"n_cycles mode must be one of {', '.join(N_CYCLES_MODES)}, but got {mode=}.")
    offered = tuple(sorted(set(values(space["n_cycles"]))))
    return offered if mode == "budget" and len(offered) > 1 else None


def drawn(space: dict, mode: str) -> dict:
    """The part of the space a trial draws from: all of it, less n_cycles where it is a budget."""
    return {name: spec for name, spec in space.items() if name != "n_cycles" or cycle_budget(space, mode) is None}


def in_space(spec: Range | Choices | FinderLR, value) -> bool:
    if isinstance(spec, FinderLR):
        return False   # an lr of its own is not a factor of the finder's
    if isinstance(spec, Range):
        return isinstance(value, (int, float)) and spec.low <= value <= spec.high
    return value in spec.values


def distribution(spec: Range | Choices | FinderLR) -> optuna.distributions.BaseDistribution:
    """The distribution `suggest` draws `spec` from: a driver that asks for a trial with every
    param fixed up front (the Dask engine) hands a worker params its `suggest` calls give back."""
    if isinstance(spec, FinderLR):
        return distribution(spec.factor)
    if isinstance(spec, Range):
        if spec.is_int:
            return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                                        step=int(spec.step or 1))
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return optuna.distributions.CategoricalDistribution(list(spec.values))
