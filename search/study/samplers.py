"""The study file's sampler name -> an Optuna sampler, always seeded, the same on every machine.

How draws are seeded (docs/how-it-works.md, "Seeds"): TPE and random search build their sampler
afresh for each trial with the seed `trial_seed(study seed, trial number)`. A trial's number is
unique in its study (the storage hands them out), so every worker on every machine — all with
the study's own seed — draws something different, a study continued later never draws its first
trials' params again, and a lone worker draws the same params on any machine. QMC keeps the
study's seed in every worker, as Optuna asks: its points are numbered by the study itself.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import math
import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from objectives.optuna_compat import study_system_attrs
from objectives.pausing import paused_after

# study system attr: what [study] learn_from took from earlier studies (search.study.learn_from)
LEARNED_SYSTEM_ATTR = "swipr:learn_from"


def make_sampler(name: str, seed: int, distinct: bool = False) -> optuna.samplers.BaseSampler:
    """`distinct` (`[study] scheduler = "promote"`): TPE draws a whole configuration no trial
    holds yet, where the space is discrete (LearningSeededByTrial.sample_relative)."""
    if name == "tpe":
        # constant_liar: parallel workers see running trials as bad, so they don't all
        # propose the same configuration.
        return LearningSeededByTrial(partial(optuna.samplers.TPESampler, constant_liar=True, n_startup_trials=5), seed,
                                     distinct)
    if name == "random":
        return SeededByTrial(optuna.samplers.RandomSampler, seed)
    if name == "qmc":
        # One scramble for the whole study, whichever worker draws: Optuna numbers the points
        # in the study's storage, and different seeds would break the sequence's spread.
        return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")  # the study file parser already refused it


def trial_seed(study_seed: int, number: int) -> int:
    """The seed trial `number` of a study seeded `study_seed` draws with: the same numbers
    give the same seed on any machine, in any process."""
    text = f"{study_seed}:trial:{number}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


class SeededByTrial(optuna.samplers.BaseSampler):
    """`make(seed=...)`'s sampler, built for each trial with `trial_seed(seed, trial.number)`, so a
    trial's draws depend on the study's seed, its number and the trials before it, never on
    the machine, the process or which worker started first. Trials are drawn one at a time
    (a worker runs one; the Dask driver draws each whole trial as it asks), so one sampler is
    kept: the current trial's."""

    def __init__(self, make: Callable[..., optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._number: int | None = None
        self._sampler = make(seed=seed)

    def __str__(self) -> str:
        return f"{type(self._sampler).__name__} seeded by trial (study seed {self._seed})"

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number != self._number:
            self._number, self._sampler = trial.number, self._make(seed=trial_seed(self._seed, trial.number))
        return self._sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        # Not _for(trial): a trial told out of turn must not restart the current trial's draws.
        sampler = self._sampler if trial.number == self._number else self._make(seed=self._seed)
        sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        # Optuna reseeds from the OS for n_jobs > 1 threads, which would make draws depend on
        # the run; the seeds here already differ by trial.
        pass


class LearningSeededByTrial(SeededByTrial):
    """SeededByTrial for TPE, which also sees the finished trials of the studies [study] learn_from
    names (stored on the study by search.study.learn_from), as extra observations, and this
    study's paused trials (`[study] scheduler = "promote"`, objectives.pausing) as what they are.

    When either is there, each param is drawn by TPE on a throwaway in-memory study, the VIEW:
    the earlier trials, COMPLETE with a pseudo-value from their rank in their own study (their
    values are of other data), then this study's own trials as they are, except that a paused
    trial (WAITING in Optuna's queue, which samplers skip) is shown PRUNED with its cycle-end
    intermediate values: a trial stopped at a cycle end, which TPE ranks by its last step and
    value, as it ranks pruned trials, and counts towards its random start-up. A rank quantile q
    becomes the q-quantile of this study's own finished values (before two of those: q itself),
    so the earlier trials fall in among its own by rank. They fade: one is dropped for each trial
    of this study that finishes. Nothing is written to the study: its trials, best and
    importances are its own.

    `distinct`: where every trial of the study drew the same params, each with finitely many
    values, a new trial's configuration is drawn whole (Optuna's relative sampling), param by
    param as above, and drawn again, up to REDRAWS times, while some trial already holds it
    (paused, running or finished: under promote a paused configuration drawn again would pay
    for its first cycle twice). If all those draws are held, it is a configuration no trial
    holds, picked at random (seeded by the trial), while one is left.
    """

    def __init__(self, make: Callable[..., optuna.samplers.BaseSampler], seed: int, distinct: bool = False) -> None:
        super().__init__(make, seed)
        self._distinct = distinct
        self._earlier: tuple[int, list[dict]] | None = None   # (trial number, observations) read for it
        self._views: dict[tuple[int, str], optuna.Study | None] = {}   # the current trial's, by param

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if not self._distinct:
            return super().infer_relative_search_space(study, trial)
        return discrete_space(_held(study, trial)) or {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not self._distinct or not search_space:
            return super().sample_relative(study, trial, search_space)
        if trial.params:   # a promotion: its params are stored, nothing to draw
            return {}
        held = {_config(t.params, search_space) for t in _held(study, trial)}
        for _ in range(REDRAWS):
            draw = {name: self.sample_independent(study, trial, name, d) for name, d in search_space.items()}
            if _config(draw, search_space) not in held:
                return draw
        rest = [c for c in configurations(search_space) if _config(c, search_space) not in held]
        return random.Random(trial_seed(self._seed, trial.number)).choice(rest) if rest else draw

    def _observations(self, study: optuna.Study, trial: FrozenTrial) -> list[dict]:
        if self._earlier is None or self._earlier[0] != trial.number:   # read once per trial
            record = study_system_attrs(study).get(LEARNED_SYSTEM_ATTR) or {}
            self._earlier = (trial.number, record.get("observations") or [])
        return self._earlier[1]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if (trial.number, param_name) not in self._views:   # drawn again by sample_relative: built once
            self._views = {k: v for k, v in self._views.items() if k[0] == trial.number}
            self._views[trial.number, param_name] = self.view(study, trial, param_name, param_distribution)
        view = self._views[trial.number, param_name]
        if view is None:
            return super().sample_independent(study, trial, param_name, param_distribution)
        # A number no trial of the view holds: TPE's constant liar leaves out the trial drawn by number.
        drawn = copy.copy(trial)
        drawn.number = len(view.get_trials(deepcopy=False))
        return self._for(trial).sample_independent(view, drawn, param_name, param_distribution)

    def view(self, study: optuna.Study, trial: FrozenTrial, name: str,
              distribution: BaseDistribution) -> optuna.Study | None:
        """The in-memory study TPE draws `name` on; None when it would hold only the study's own
        trials as Optuna shows them (no earlier trial left to show, no paused trial)."""
        observations = self._observations(study, trial)
        if not observations and not self._distinct:
            return None   # neither learn_from nor promote (the only one that pauses): no trials to read
        own = [t for t in study.get_trials(deepcopy=False, states=SEEN) if t.number != trial.number
               and (t.state != TrialState.WAITING or paused_after(t) is not None)]
        paused = any(t.state == TrialState.WAITING for t in own)
        finished = sum(t.state != TrialState.RUNNING for t in own)
        left = [o for o in observations[:max(0, len(observations) - finished)] if name in o["params"]
                and _holds(distribution, o["params"][name])]
        if not left and not paused:
            return None
        values = sorted(t.value for t in own if t.state == TrialState.COMPLETE and t.value is not None)
        view = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="minimize")
        for o in left:
            pseudo = float(np.quantile(values, o["q"])) if len(values) >= 2 else float(o["q"])
            view.add_trial(optuna.trial.create_trial(params={name: o["params"][name]},
                                                     distributions={name: distribution}, value=pseudo))
        view.add_trials([as_seen(t) for t in own])
        return view


# The study's trials a sampler's view holds: WAITING ones only when paused (objectives.pausing).
SEEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def as_seen(trial: FrozenTrial) -> FrozenTrial:
    """The study's trial as the sampler's view holds it: a paused one PRUNED, with the cycle-end
    values it reported; the rest as stored (params, distributions, value, intermediate values)."""
    state = TrialState.PRUNED if trial.state == TrialState.WAITING else trial.state
    return optuna.trial.create_trial(state=state, params=trial.params, distributions=trial.distributions,
                                     value=trial.value if state == TrialState.COMPLETE else None,
                                     intermediate_values=trial.intermediate_values)


REDRAWS = 8   # `distinct`: TPE's draws of a held configuration before one no trial holds is picked
ENUMERATED = 100_000   # `distinct`: a larger discrete space is drawn as a float one is (no distinct draws)


def _held(study: optuna.Study, trial: FrozenTrial) -> list[FrozenTrial]:
    """The study's trials other than `trial` that hold a configuration (any state but WAITING-unpaused)."""
    return [t for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params
            and (t.state != TrialState.WAITING or paused_after(t) is not None)]


def discrete_space(trials: list[FrozenTrial]) -> dict[str, BaseDistribution] | None:
    """The search space all of `trials` drew, when they drew the same one and each of its params
    has finitely many values (categorical, int, stepped float); None otherwise or for no trials."""
    if not trials or any(t.distributions != trials[0].distributions for t in trials):
        return None
    space = dict(sorted(trials[0].distributions.items()))
    finite = all(isinstance(d, (CategoricalDistribution, IntDistribution))
                 or (isinstance(d, FloatDistribution) and d.step is not None) for d in space.values())
    return space if finite and math.prod(len(_values(d)) for d in space.values()) <= ENUMERATED else None


def configurations(space: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Every configuration of a discrete space (discrete_space's), in a fixed order."""
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*map(_values, space.values()))]


def _values(distribution: BaseDistribution) -> list:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    assert isinstance(distribution, FloatDistribution) and distribution.step is not None
    n = int(round((distribution.high - distribution.low) / distribution.step))
    return [distribution.low + i * distribution.step for i in range(n + 1)]


def _config(params: dict[str, Any], space: dict[str, BaseDistribution]) -> tuple:
    """A configuration's key: its params in the space's internal representation (a float step's
    values compare exactly)."""
    return tuple(space[name].to_internal_repr(params[name]) for name in space)


def _holds(distribution: BaseDistribution, value) -> bool:
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def configurations_left(trials: list[FrozenTrial]) -> bool:
    """Whether a new trial can still draw a configuration no trial holds: False only where the
    trials' space is discrete (discrete_space) and each of its configurations is held."""
    held = [t for t in trials if t.params and (t.state != TrialState.WAITING or paused_after(t) is not None)]
    space = discrete_space(held)
    return space is None or len({_config(t.params, space) for t in held}) < len(configurations(space))
