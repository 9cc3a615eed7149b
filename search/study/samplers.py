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
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from objectives.optuna_compat import study_system_attrs

# study system attr: what [study] learn_from took from earlier studies (search.study.learn_from)
LEARNED_SYSTEM_ATTR = "swipr:learn_from"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar: parallel workers see running trials as bad, so they don't all
        # propose the same configuration.
        return LearningSeededByTrial(partial(optuna.samplers.TPESampler, constant_liar=True, n_startup_trials=5), seed)
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
    names (stored on the study by search.study.learn_from), as extra observations.

    Each param is drawn by TPE on a throwaway in-memory study: the earlier trials, COMPLETE with a
    pseudo-value from their rank in their own study (their values are of other data), then this
    study's own trials as they are. A rank quantile q becomes the q-quantile of this study's
    own finished values (before two of those: q itself), so the earlier trials fall in among its
    own by rank. They fade: one is dropped for each trial of this study that finishes. Nothing is
    written to the study: its trials, best and importances are its own.
    """

    def __init__(self, make: Callable[..., optuna.samplers.BaseSampler], seed: int) -> None:
        super().__init__(make, seed)
        self._earlier: tuple[int, list[dict]] | None = None   # (trial number, observations) read for it

    def _observations(self, study: optuna.Study, trial: FrozenTrial) -> list[dict]:
        if self._earlier is None or self._earlier[0] != trial.number:   # read once per trial
            record = study_system_attrs(study).get(LEARNED_SYSTEM_ATTR) or {}
            self._earlier = (trial.number, record.get("observations") or [])
        return self._earlier[1]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        view = self._with_earlier(study, trial, param_name, param_distribution)
        if view is None:
            return super().sample_independent(study, trial, param_name, param_distribution)
        # A number no trial of the view holds: TPE's constant liar leaves out the trial drawn by number.
        drawn = copy.copy(trial)
        drawn.number = len(view.get_trials(deepcopy=False))
        return self._for(trial).sample_independent(view, drawn, param_name, param_distribution)

    def _with_earlier(self, study: optuna.Study, trial: FrozenTrial, name: str,
                      distribution: BaseDistribution) -> optuna.Study | None:
        """The in-memory study TPE draws `name` on; None when no earlier trial is left to show."""
        observations = self._observations(study, trial)
        if not observations:
            return None
        own = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                       TrialState.RUNNING)) if t.number != trial.number]
        finished = sum(t.state != TrialState.RUNNING for t in own)
        left = [o for o in observations[:max(0, len(observations) - finished)] if name in o["params"]
                and _holds(distribution, o["params"][name])]
        if not left:
            return None
        values = sorted(t.value for t in own if t.state == TrialState.COMPLETE and t.value is not None)
        view = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="minimize")
        for o in left:
            pseudo = float(np.quantile(values, o["q"])) if len(values) >= 2 else float(o["q"])
            view.add_trial(optuna.trial.create_trial(params={name: o["params"][name]},
                                                     distributions={name: distribution}, value=pseudo))
        for t in own:
            view.add_trial(optuna.trial.create_trial(state=t.state, params=t.params, distributions=t.distributions,
                                                     value=t.value if t.state == TrialState.COMPLETE else None,
                                                     intermediate_values=t.intermediate_values))
        return view


def _holds(distribution: BaseDistribution, value) -> bool:
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False
