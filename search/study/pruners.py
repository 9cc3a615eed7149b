"""The study file's pruner -> an Optuna pruner. Steps are the run's epochs.

The pruners are Optuna's own; what makes them schedule-aware is what a trial reports and
when it asks (objectives.judging, `[study] prune_at`). With "cycle_end", median and
percentile compare the trial's best cycle-end loss with the other trials' best cycle-end
losses within the same number of epochs, and successive halving / Hyperband, which judge a
rung at the first step the trial asks at or after it, judge each rung at the trial's first
cycle end at or after the rung. `pruner_warmup_epochs` keeps its meaning in both modes.
"""
from __future__ import annotations

import optuna

from search.studyfile import StudySection


def make_pruner(study: StudySection) -> optuna.pruners.BasePruner:
    name, startup, warmup = study.pruner, study.pruner_startup_trials, study.pruner_warmup_epochs
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), reduction_factor=3)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}")  # the study file parser already refused it
