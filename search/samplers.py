"""The study file's sampler name -> an Optuna sampler, always seeded."""
from __future__ import annotations


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        # constant_liar: parallel workers see running trials as bad, so they don't all
        # propose the same configuration.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")  # the study file parser already refused it
