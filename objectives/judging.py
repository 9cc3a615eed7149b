"""Where a trial is judged: what it reports to Optuna each epoch, and when it asks the pruner.

With SGDR restarts a raw loss at epoch e means something different for every schedule: a
trial in the middle of a long cycle is at its worst, one at the end of a short cycle at its
best. So with `prune_at = "cycle_end"` a trial is judged only where its learning rate has
reached its minimum (the end of each SGDR cycle, and of the frozen phase of
frozen_then_unfrozen), and what it reports is its ANYTIME-BEST curve: at epoch e, the best
loss it had at any cycle end within its first e+1 epochs (nothing before its first cycle
end). Every schedule can be read on that curve at every epoch, so when a trial is judged
after e epochs, Optuna's pruners compare it with what the other trials had reached within
the same e epochs of compute. Nor is a trial judged at its last epoch: pruning it there would
save nothing and lose its result. `prune_at = "epoch"` reports the raw loss and asks every
epoch, whatever the schedule. Either way the raw losses are kept in the user attr
`val_loss_by_epoch`, the epochs where the pruner was asked in `judged_epochs`.

A run whose loss turns nan has diverged: its weights are nan and stay so. It is pruned at
that epoch whatever the pruner, with the nan reported, which Optuna's samplers read as the
worst value (a FAIL would teach TPE nothing about the learning rate that caused it).

A trial's VALUE is its best finished schedule (swipr_core.train.schedule): the lowest loss at a
cycle end where a run of that many cycles would have ended. With n_cycles sampled, the only
one is the run's last epoch; with n_cycles a budget (nested schedules),
each cycle end whose count of cycles is in the space is one. Which one is best is kept in the
user attrs `best_n_cycles`, `best_cycle_end_loss` and `best_cycle_end_epoch` (and, for a trial
with a second stage, `best_stage`: its n_cycles counts that stage's cycles). When the pruner
stops a trial that has already finished a schedule, the trial has earned that many cycles:
ScheduleCut (a TrialPruned) carries its value, and the objective ends it COMPLETE with it,
noted in `cut_after_epoch`. Stopped before any finished schedule, it is PRUNED as ever.

`judge` is the pure rule; `report_epoch` applies it to a live Optuna trial. The objective,
a retry's re-report of its saved epochs and bench/search_efficiency.py's replay all use it.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

import optuna
from optuna.trial import TrialState

from objectives.trial_attrs import attrs_of, set_attr

PRUNE_AT = ("cycle_end", "epoch")
# user attrs written every epoch (lists indexed like the trial's epochs)
LOSSES_ATTR = "val_loss_by_epoch"
CYCLE_ENDS_ATTR = "cycle_end_epochs"
JUDGED_ATTR = "judged_epochs"
AGAINST_ATTR = "pruned_against"
DIVERGED_ATTR = "diverged_at_epoch"
# True on a trial stopped by Ctrl-C (or SIGTERM, or a Dask driver's stop). Optuna records it
# FAIL, as its retry semantics need, though nothing in it failed; the views read this mark.
INTERRUPTED_ATTR = "interrupted"
FINISHED_ATTR = "finished_schedules"      # [[epoch, n_cycles], ...]: the finished schedules reached
BEST_N_CYCLES_ATTR = "best_n_cycles"
BEST_LOSS_ATTR = "best_cycle_end_loss"
BEST_EPOCH_ATTR = "best_cycle_end_epoch"
CUT_ATTR = "cut_after_epoch"              # the pruner stopped it here, after a finished schedule
# A two-stage trial (docs/stages.md) notes where its stage 2 begins on its one epoch counter, and
# which stage its best finished schedule ends in (1: stage 1's end, the run with stage 2 skipped).
STAGE2_FIRST_EPOCH_ATTR = "stage2_first_epoch"
BEST_STAGE_ATTR = "best_stage"


def interrupted(trial) -> bool:
    """Whether a (FAIL) trial was stopped by an interrupt rather than by an error of its own."""
    return attrs_of(trial).get(INTERRUPTED_ATTR) is True


class ScheduleCut(optuna.TrialPruned):
    """The pruner stopped a trial that had finished a schedule: it ends with that value."""

    def __init__(self, message: str, value: float, n_cycles: int):
        super().__init__(message)
        self.value, self.n_cycles = value, n_cycles


def _worst_if_nan(value: float) -> float:
    return float("inf") if value != value else value


@dataclass(frozen=True)
class Step:
    """What a trial does after its latest epoch."""

    value: float | None   # reported to Optuna at this epoch; None = report nothing
    ask: bool             # ask the pruner after reporting


def judge(losses: Sequence[float], cycle_ends: Sequence[bool], prune_at: str, planned: int | None = None) -> Step:
    """The step after the last of `losses` (one per epoch so far, `cycle_ends` alike) of a run
    of `planned` epochs (None: not known)."""
    if prune_at not in PRUNE_AT:
        raise ValueError(f"prune_at must be one of {', '.join(PRUNE_AT)}, but got {prune_at=}.")
    if len(losses) != len(cycle_ends) or not losses:
        raise ValueError(f"need one cycle_end flag per loss, got {len(losses)} losses, {len(cycle_ends)} flags")
    if prune_at == "epoch":
        return Step(losses[-1], True)
    at_ends = [loss for loss, end in zip(losses, cycle_ends, strict=True) if end]
    # nan (a diverged run) is worst, not "not smaller than anything"
    best = min(at_ends, key=_worst_if_nan) if at_ends else None
    last = planned is not None and len(losses) >= planned
    return Step(best, bool(cycle_ends[-1]) and not last)


def best_finished(losses: Sequence[float], finishes: Sequence[int]) -> tuple[int, int, float] | None:
    """(epoch, n_cycles, loss) of the best finished schedule so far (`finishes[e]`: the cycles
    of the schedule finished at epoch e, 0 for none); the earliest of equals; None before one."""
    done = [(e, k, loss) for e, (loss, k) in enumerate(zip(losses, finishes, strict=True)) if k]
    return min(done, key=lambda row: _worst_if_nan(row[2])) if done else None


def report_epoch(trial: optuna.Trial, epoch: int, loss: float, cycle_end: bool, prune_at: str,
                 ask: bool = True, planned: int | None = None, finishes: int = 0) -> None:
    """Record epoch `epoch`'s raw loss on the trial (and, where a schedule of `finishes` cycles
    ends, whether it is the best finished one), report what `judge` says and, where it says to
    ask (and `ask`), stop the trial if the pruner says so: TrialPruned, or ScheduleCut after a
    finished schedule."""
    attrs = attrs_of(trial)
    losses = list(attrs.get(LOSSES_ATTR, []))[:epoch] + [loss]
    if len(losses) != epoch + 1:
        raise ValueError(f"trial {trial.number}: epoch {epoch} reported after only {len(losses) - 1} epochs")
    ends = [e for e in attrs.get(CYCLE_ENDS_ATTR, []) if e < epoch] + ([epoch] if cycle_end else [])
    set_attr(trial, LOSSES_ATTR, losses)
    set_attr(trial, CYCLE_ENDS_ATTR, ends)
    best = _record_finished(trial, epoch, loss, finishes)
    if planned is not None and epoch + 1 >= planned:
        best = None   # judged at its very end (prune_at = "epoch"): pruned there, not cut to its best schedule
    if loss != loss:   # nan
        trial.report(loss, step=epoch)
        set_attr(trial, DIVERGED_ATTR, epoch)
        _stop(trial, best, epoch, f"diverged: val_loss is nan after epoch {epoch}")
    step = judge(losses, [e in ends for e in range(len(losses))], prune_at, planned)
    if step.value is not None:
        trial.report(step.value, step=epoch)
    if not (ask and step.ask) or step.value is None:   # judge asks only once there is a value
        return
    set_attr(trial, JUDGED_ATTR, [e for e in attrs.get(JUDGED_ATTR, []) if e < epoch] + [epoch])
    if trial.should_prune():
        set_attr(trial, AGAINST_ATTR, against(trial.study, epoch, step.value))
        _stop(trial, best, epoch, f"pruned after epoch {epoch} (judged on {step.value:.4f}, raw val_loss {loss:.4f})")


def _record_finished(trial: optuna.Trial, epoch: int, loss: float, finishes: int) -> tuple[int, int, float] | None:
    """Keep the finished schedules reached (this epoch's too) and the best of them on the trial."""
    attrs = attrs_of(trial)
    reached = [row for row in attrs.get(FINISHED_ATTR, []) if row[0] < epoch] + ([[epoch, finishes]] if finishes else [])
    if finishes or FINISHED_ATTR in attrs:
        set_attr(trial, FINISHED_ATTR, reached)
    losses = attrs.get(LOSSES_ATTR, [])[:epoch] + [loss]
    flags = [0] * len(losses)
    for e, k in reached:
        flags[e] = k
    best = best_finished(losses, flags)
    if best is not None and finishes:
        set_attr(trial, BEST_EPOCH_ATTR, best[0])
        set_attr(trial, BEST_N_CYCLES_ATTR, best[1])
        set_attr(trial, BEST_LOSS_ATTR, best[2])
        if STAGE2_FIRST_EPOCH_ATTR in attrs:
            set_attr(trial, BEST_STAGE_ATTR, stage_of(attrs, best[0]))
    return best


def stage_of(user_attrs: dict, epoch: int) -> int:
    """The stage a trial's epoch belongs to (1 for a trial of one stage)."""
    first = user_attrs.get(STAGE2_FIRST_EPOCH_ATTR)
    return 2 if first is not None and epoch >= first else 1


def _stop(trial: optuna.Trial, best: tuple[int, int, float] | None, epoch: int, why: str) -> None:
    if best is None or best[2] != best[2]:
        raise optuna.TrialPruned(why)
    set_attr(trial, CUT_ATTR, epoch)
    attrs = attrs_of(trial)   # one read of a running trial's storage
    stage = f"stage {stage_of(attrs, best[0])}'s " if STAGE2_FIRST_EPOCH_ATTR in attrs else ""
    raise ScheduleCut(f"{why}; keeps its {stage}{best[1]}-cycle schedule (val_loss {best[2]:.4f} after epoch "
                      f"{best[0]})", best[2], best[1])


def against(study: optuna.Study, epoch: int, value: float) -> dict:
    """What a pruned trial was compared with: the completed trials' reported values at `epoch`."""
    others = sorted(t.intermediate_values[epoch] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if epoch in t.intermediate_values)
    summary = {"epoch": epoch, "value": value, "n_completed": len(others)}
    if others:
        summary.update(median=statistics.median(others), best=others[0], worst=others[-1])
    return summary


def nesting_saved(user_attrs: dict) -> int:
    """Epochs a nested trial's shorter finished schedules would have cost as trials of their own
    (n_cycles sampled trains each length apart): they came free inside its longer run."""
    reached = user_attrs.get(FINISHED_ATTR, [])
    return sum(epoch + 1 for epoch, _ in reached[:-1])


def best_schedule(user_attrs: dict) -> tuple[int, int, float] | None:
    """(n_cycles, epoch, loss) of a nested trial's best finished schedule; None if not nested."""
    if BEST_N_CYCLES_ATTR not in user_attrs or "n_cycles_budget" not in user_attrs:
        return None
    return user_attrs[BEST_N_CYCLES_ATTR], user_attrs[BEST_EPOCH_ATTR], user_attrs[BEST_LOSS_ATTR]


def replay_curve(trial: optuna.Trial, losses: Sequence[float], cycle_ends: Sequence[bool], prune_at: str,
                 finishes: Sequence[int] | None = None) -> float:
    """Report a recorded run epoch by epoch as the live objective does; its value (its best
    finished schedule), or TrialPruned where the pruner stops it before one (tests and
    bench/search_efficiency.py). `finishes` as best_finished's; default: only the last epoch."""
    finishes = list(finishes) if finishes is not None else [0] * (len(losses) - 1) + [1]
    try:
        for epoch, (loss, cycle_end, k) in enumerate(zip(losses, cycle_ends, finishes, strict=True)):
            set_attr(trial, "epochs", epoch + 1)
            report_epoch(trial, epoch, loss, cycle_end, prune_at, planned=len(losses), finishes=k)
    except ScheduleCut as cut:
        return cut.value
    best = best_finished(losses, finishes)
    return best[2] if best is not None else losses[-1]
