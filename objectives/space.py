"""The search space: what the study file's [space] holds, and how a trial draws from it.

Parameter names are the space's keys, so a trial's params are exactly a training config,
except where n_cycles is a budget ([study] n_cycles = "budget", the default, with several
[space] n_cycles values): then a trial plans the largest value and each value on the way is a
finished schedule of that many cycles (swipr_core.train.schedule), so n_cycles is not drawn.

A second stage ([space.stage2], docs/stages.md) is held in the same dict, each of its keys as
the param it is drawn as, `stage2_<key>`; a key it leaves out keeps the trial's stage-1 value.
With a second stage, n_cycles as a budget is stage 2's (0 among its values: stage 1's end is a
finished schedule too, the run with stage 2 skipped) and stage 1's n_cycles is drawn. With
n_cycles sampled, `stage2_n_cycles` is drawn as the trial starts; 0 skips stage 2. Every other
stage2_ param is drawn only when the trial reaches stage 2 (`conditional`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna

from swipr_core.train.lr_finding import SUGGESTION_NAMES

# [study] n_cycles: how a trial gets its cycles. "budget": nested schedules (each cycle end that
# finishes a run of n_cycles in the space is a result); "sampled": one more param, each trial one length.
N_CYCLES_MODES = ("budget", "sampled")
DEFAULT_N_CYCLES_MODE = "budget"   # the winner of bench/search_efficiency.py
MODE_ATTR = "n_cycles_mode"        # user attr (a trial's, and the study's): how it got its cycles
STAGE2 = "stage2_"                 # a second stage's keys, and its trials' params, start with it


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


FINDER_SUGGESTIONS = SUGGESTION_NAMES   # a [space] lr finder's names: fastai's, read without torch


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
    """The trial's value for `name`; asking again returns the same value (a FinderLR: its factor).

    A retry holds its original's value and range. When [space] has been edited since, Optuna
    keeps that value and warns in a paragraph ("Inconsistent parameter values..."); this says it
    in one line instead, once per trial and param, and only where the value is outside the range
    now."""
    if isinstance(spec, FinderLR):
        return suggest(trial, spec.param, spec.factor)
    held = name in trial.params
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Inconsistent parameter values", category=RuntimeWarning)
        value = _suggest(trial, name, spec)
    if not held or _within(value, spec):
        return value
    study = getattr(trial, "study", None)   # a FixedTrial (the Dask driver's check, tests) has none
    said = (study.study_name if study is not None else "", trial.number, name)
    if said not in _said_outside:
        _said_outside.add(said)
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"trial {trial.number}: {name}={shown} is outside [space] now ({_describe(spec)}); "
              f"it keeps the value it started with", flush=True)
    return value


_said_outside: set[tuple[str, int, str]] = set()   # (study, trial, param): said once, however often asked


def _suggest(trial: optuna.Trial, name: str, spec: Range | Choices):
    if isinstance(spec, Range):
        if spec.is_int:
            return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return trial.suggest_categorical(name, list(spec.values))


def _within(value, spec: Range | Choices) -> bool:
    if isinstance(spec, Choices):
        return value in spec.values
    return spec.low <= value <= spec.high


def _describe(spec: Range | Choices) -> str:
    if isinstance(spec, Choices):
        return "one of " + ", ".join(map(str, spec.values))
    return f"{spec.low:g}..{spec.high:g}"


def values(spec: Range | Choices) -> tuple:
    """Every value an integer range or choices offers."""
    if isinstance(spec, Choices):
        return tuple(spec.values)
    step = int(spec.step or 1)
    return tuple(range(int(spec.low), int(spec.high) + 1, step))


def stage2_name(key: str) -> str:
    """The param (and space key) stage 2's `key` is drawn as."""
    return STAGE2 + key


def has_stage2(space: dict) -> bool:
    return any(name.startswith(STAGE2) for name in space)


def stage_space(space: dict, stage: int) -> dict:
    """One stage's part of the space under its plain keys: stage 2's holds only the keys it declares."""
    if stage == 1:
        return {name: spec for name, spec in space.items() if not name.startswith(STAGE2)}
    return {name[len(STAGE2):]: spec for name, spec in space.items() if name.startswith(STAGE2)}


def budget_key(space: dict) -> str:
    """The n_cycles that can be a budget: the last stage's (finish_at refers to it)."""
    return stage2_name("n_cycles") if has_stage2(space) else "n_cycles"


def cycle_budget(space: dict, mode: str) -> tuple[int, ...] | None:
    """The n_cycles values that are finished schedules when n_cycles is a trial's budget (the
    trial plans the last, the largest; stage 2's may start with 0, stage 1's end); None where
    n_cycles is drawn like any other param."""
    if mode not in N_CYCLES_MODES:
        raise ValueError(f"n_cycles mode must be one of {', '.join(N_CYCLES_MODES)}, but got {mode=}.")
    key = budget_key(space)
    if key not in space:   # a stage 2 that keeps stage 1's n_cycles: one length, drawn in stage 1
        return None
    offered = tuple(sorted(set(values(space[key]))))
    return offered if mode == "budget" and len(offered) > 1 else None


def skippable_stage2(space: dict, mode: str) -> bool:
    """Whether a drawn stage2_n_cycles of 0 can skip stage 2 (n_cycles sampled, 0 offered)."""
    key = stage2_name("n_cycles")
    return mode == "sampled" and key in space and 0 in values(space[key])


def drawn(space: dict, mode: str) -> dict:
    """The part of the space every trial draws as it starts: all of it, less n_cycles where it is
    a budget, and less stage 2's params, which a trial draws only once it reaches stage 2
    (`conditional`). Stage 2's n_cycles, where drawn, is drawn here: it decides the run's length."""
    budget = budget_key(space) if cycle_budget(space, mode) is not None else None
    later = conditional(space, mode)
    return {name: spec for name, spec in space.items() if name != budget and name not in later}


def conditional(space: dict, mode: str) -> dict:
    """The params a trial draws only once it reaches stage 2: so a trial stopped at stage 1's
    end, or one whose drawn stage2_n_cycles is 0, has none, and the sampler and the parameter
    importances learn stage 2's params only from trials that trained with them."""
    return {name: spec for name, spec in space.items() if name.startswith(STAGE2) and name != stage2_name("n_cycles")}


def draw_all(trial: optuna.Trial, space: dict, mode: str) -> dict:
    """Every param a trial that runs all its stages draws (by name): `drawn`, then, unless its
    stage2_n_cycles is 0, `conditional`."""
    values = {name: suggest(trial, name, spec) for name, spec in drawn(space, mode).items()}
    if skippable_stage2(space, mode) and values[stage2_name("n_cycles")] == 0:
        return values
    values.update({name: suggest(trial, name, spec) for name, spec in conditional(space, mode).items()})
    return values


def placeholder(spec: Range | Choices) -> object:
    """A value of `spec` that holds a param's place before it is drawn (the run's length and
    stage 1's schedule don't depend on it): the first choice, or the range's low end."""
    if isinstance(spec, Choices):
        return spec.values[0]
    return int(spec.low) if spec.is_int else spec.low


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
