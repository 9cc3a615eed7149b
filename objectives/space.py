"""The search space: what the study file's [space] holds, and how a trial draws from it.

Parameter names are the space's keys, so a trial's params are exactly a training config.
"""
from __future__ import annotations

from dataclasses import dataclass

import optuna

SPACE_KEYS = ("lr", "batch_size", "image_size", "freeze", "n_cycles", "cycle_len", "cycle_mult")


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


def suggest(trial: optuna.Trial, name: str, spec: Range | Choices):
    """The trial's value for `name`; asking again returns the same value."""
    if isinstance(spec, Range):
        if spec.is_int:
            return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return trial.suggest_categorical(name, list(spec.values))


def in_space(spec: Range | Choices, value) -> bool:
    if isinstance(spec, Range):
        return isinstance(value, (int, float)) and spec.low <= value <= spec.high
    return value in spec.values


def distribution(spec: Range | Choices) -> optuna.distributions.BaseDistribution:
    """The distribution `suggest` draws `spec` from: a driver that asks for a trial with every
    param fixed up front (the Dask engine) hands a worker params its `suggest` calls give back."""
    if isinstance(spec, Range):
        if spec.is_int:
            return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                                        step=int(spec.step or 1))
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return optuna.distributions.CategoricalDistribution(list(spec.values))
