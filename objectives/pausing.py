"""Pause and promote (docs/promotion.md): a trial that stops at a cycle end and continues later.

Under `[study] scheduler = "promote"` a trial runs to its next SGDR cycle end, keeps its
checkpoint and pauses: the objective raises TrialPaused, and `pause` hands the trial back to
Optuna's queue as WAITING, its params, intermediate values and attributes as they were. A
worker that later takes it from the queue (search.running.promotion decides which) runs the
same trial number on: its run plans the same schedule and resumes after the checkpoint's last
epoch, exactly as if it had never stopped (nested SGDR schedules, swipr_core.train.run). So
one configuration stays one Optuna trial, finished once; while paused it is WAITING with
`paused_after_cycle` set, and no heartbeat is asked of it (Optuna checks RUNNING trials only).
"""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from objectives.optuna_compat import put_back
from objectives.trial_attrs import attrs_of, set_attr

PAUSED_ATTR = "paused_after_cycle"   # cycle ends reached when it paused; None once it runs on
PROMOTED_ATTR = "promotions"         # how many times it was given its next cycle


class TrialPaused(Exception):
    """The trial reached a cycle end with more of its schedule planned: it pauses there."""

    def __init__(self, cycles: int, epochs: int):
        super().__init__(f"paused after cycle {cycles} (epoch {epochs - 1})")
        self.cycles, self.epochs = cycles, epochs


def pause(trial: optuna.Trial, paused: TrialPaused) -> None:
    """Mark the trial paused and give it back to the queue (WAITING): the next turn may promote it."""
    set_attr(trial, PAUSED_ATTR, paused.cycles)
    put_back(trial)


def paused_before(trial: optuna.Trial) -> bool:
    """Whether a running trial was taken from the queue as a paused one (a promotion)."""
    return attrs_of(trial).get(PAUSED_ATTR) is not None


def continuing(trial: optuna.Trial) -> bool:
    """Whether this trial was paused and is now promoted (its next cycle starts): noted on it."""
    attrs = attrs_of(trial)
    if attrs.get(PAUSED_ATTR) is None:
        return False
    set_attr(trial, PAUSED_ATTR, None)
    set_attr(trial, PROMOTED_ATTR, attrs.get(PROMOTED_ATTR, 0) + 1)
    return True


def paused_after(trial) -> int | None:
    """The cycle a (stored) trial is paused after; None for one that is not paused."""
    if trial.state != TrialState.WAITING:
        return None
    return attrs_of(trial).get(PAUSED_ATTR)
