"""The study file's sampler name -> an Optuna sampler, always seeded, the same on every machine.

How draws are seeded (docs/how-it-works.md, "Seeds"): TPE and random search build their sampler
afresh for each trial with the seed `trial_seed(study seed, trial number)`. A trial's number is
unique in its study (the storage hands them out), so every worker on every machine — all with
the study's own seed — draws something different, a study continued later never draws its first
trials' params again, and a lone worker draws the same params on any machine. QMC keeps the
study's seed in every worker, as Optuna asks: its points are numbered by the study itself.
"""
from __future__ import annotations

import hashlib
from functools import partial
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar: parallel workers see running trials as bad, so they don't all
        # propose the same configuration.
        return SeededByTrial(partial(optuna.samplers.TPESampler, constant_liar=True, n_startup_trials=5), seed)
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
