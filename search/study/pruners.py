"""The study file's pruner -> an Optuna pruner. Steps are the run's epochs.

The pruners are Optuna's own; what makes them schedule-aware is what a trial reports and
when it asks (objectives.judging, `[study] prune_at`). With "cycle_end", median and
percentile compare the trial's best cycle-end loss with the other trials' best cycle-end
losses within the same number of epochs, and successive halving / Hyperband, which judge a
rung at the first step the trial asks at or after it, judge each rung at the trial's first
cycle end at or after the rung. `pruner_warmup_epochs` keeps its meaning in both modes.

Hyperband's brackets span min_resource..max_resource epochs. Optuna's "auto" max_resource is
the first finished trial's length, which in a space of 2- to 14-epoch schedules may be 2 and
collapse the brackets; the longest schedule the space allows is known before any trial.
"""
from __future__ import annotations

import optuna

from search.studyfile import StudyFile, StudySection
from search.studyfile.space import longest_run


def pruner_for(study_file: StudyFile) -> optuna.pruners.BasePruner:
    """The study's pruner; none under `scheduler = "promote"`, whose promotions do its work
    (search.running.promotion): a trial not promoted stays paused, never pruned."""
    if study_file.study.scheduler == "promote":
        return optuna.pruners.NopPruner()
    return make_pruner(study_file.study, longest_run(study_file.space, study_file.train.head_epochs))


def make_pruner(study: StudySection, max_epochs: int) -> optuna.pruners.BasePruner:
    """`max_epochs`: the longest run a trial of the study may have."""
    name, startup, warmup = study.pruner, study.pruner_startup_trials, study.pruner_warmup_epochs
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), max_resource=max(max_epochs, warmup, 1),
                                              reduction_factor=3)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}")  # the study file parser already refused it
