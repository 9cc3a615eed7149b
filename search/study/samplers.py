"""The study file's sampler name -> an Optuna sampler, always seeded."""
from __future__ import annotations

import hashlib

import optuna


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar: parallel workers see running trials as bad, so they don't all
        # propose the same configuration.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")  # the study file parser already refused it


def worker_seed(study_seed: int, *parts) -> int:
    """A sampler seed for one worker, derived from the study's seed and what sets the worker
    apart (machine, slot, trials so far). Two workers with the study's own seed would draw
    the same random start-up configurations, and a run that continues a study would draw
    the first run's again; the same parts give the same seed, so a lone worker is reproducible."""
    text = ":".join(str(part) for part in (study_seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF
