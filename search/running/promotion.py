"""`[study] scheduler = "promote"`: each time a worker is free, a new configuration or a paused
trial's next cycle (docs/promotion.md).

A trial's RUNG is the number of cycle ends it has reached (objectives.pausing pauses it at each).
Its curve is its raw validation loss at those cycle ends. A paused trial at rung k is PROMOTABLE
when it ranks in the top 1/eta of every trial that reached rung k (ASHA: Li et al., 2020), ranked
  - "asha": by its loss at its k-th cycle end;
  - "curve": by that loss extrapolated along its last two cycle ends to the deepest rung any
    trial has reached (a trial still falling fast ranks above one that has levelled off).
`next_turn` decides: a queued trial first (a retry, the warm start), then the promotable paused
trial highest up, then a new configuration while the run has configurations left (and the
space one no trial holds); once it has none left, the top ceil(n/eta) of a rung may go on (so
every rung's best is run to its end and the run ends); nothing left to do ends the run.
`run_turns` is the worker loop that carries it out, one Optuna trial per configuration: asked (a
promotion takes the paused trial back from the queue), run, and told once, when it finishes; a
pause tells Optuna nothing.
"""
from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.judging import CYCLE_ENDS_ATTR, LOSSES_ATTR
from objectives.optuna_compat import OPTIMIZE_LOGGER, heartbeat, order_queue, stored_trial
from objectives.pausing import TrialPaused, paused_after
from objectives.trial_attrs import attrs_of
from search.study.samplers import configurations_left

RANKED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def curve(trial: FrozenTrial) -> list[float]:
    """The trial's raw validation loss at each cycle end it reached (nan counts as worst)."""
    attrs = attrs_of(trial)
    losses = attrs.get(LOSSES_ATTR, [])
    return [math.inf if losses[e] != losses[e] else losses[e] for e in attrs.get(CYCLE_ENDS_ATTR, [])
            if e < len(losses)]


def score(losses: list[float], k: int, rule: str, horizon: int) -> float:
    """A trial's rank key at rung k (lower is better), from its first k cycle-end losses."""
    last = losses[k - 1]
    if rule == "asha" or k < 2 or math.isinf(last):
        return last
    slope = min(losses[k - 1] - losses[k - 2], 0.0)   # only a falling curve is carried on
    return last + slope * (horizon - k)


@dataclass(frozen=True)
class Turn:
    """What a free worker does next: "retry" (a retry waiting in the queue), "queued" (another
    WAITING trial that is no pause: the warm start's), "promote" `number`, or "new" (Optuna
    samples a configuration). "queued" and "new" start a configuration."""

    kind: str
    number: int | None = None

    @property
    def starts_one(self) -> bool:
        return self.kind in ("queued", "new")


def promotable(trials: list[FrozenTrial], eta: int, rule: str, draining: bool = False,
               busy: frozenset[int] = frozenset()) -> list[int]:
    """Numbers of the paused trials that may be promoted, highest rung first, best first within
    it. `draining`: no new configurations are coming, so a rung's top ceil(n/eta) may go on.
    `busy`: trials already handed to a worker that has not taken them yet."""
    curves = {t.number: curve(t) for t in trials if t.state in RANKED}
    horizon = max((len(c) for c in curves.values()), default=0)
    chosen: list[tuple[int, float, int]] = []
    for trial in trials:
        k = paused_after(trial)
        if k is None or trial.number in busy or len(curves.get(trial.number, [])) < k or k < 1:
            continue
        rung = sorted((score(c, k, rule, horizon), n) for n, c in curves.items() if len(c) >= k)
        quota = math.ceil(len(rung) / eta) if draining else len(rung) // eta
        mine = (score(curves[trial.number], k, rule, horizon), trial.number)
        if rung.index(mine) < quota:
            chosen.append((-k, mine[0], trial.number))
    return [number for _, _, number in sorted(chosen)]


def next_turn(trials: list[FrozenTrial], eta: int, rule: str, may_start_new: bool,
              busy: frozenset[int] = frozenset()) -> Turn | None:
    """The next turn of a free worker (see the module's docstring); None: nothing to do now. No
    new configuration is started once every one of a discrete space is held (samplers.configurations_left)."""
    may_start_new = may_start_new and configurations_left(trials)
    queued = [t for t in trials if t.state == TrialState.WAITING and paused_after(t) is None]
    if any("failed_trial" in t.system_attrs for t in queued):
        return Turn("retry")
    if queued and may_start_new:
        return Turn("queued")
    ready = promotable(trials, eta, rule, busy=busy)
    if ready:
        return Turn("promote", ready[0])
    if may_start_new:
        return Turn("new")
    ready = promotable(trials, eta, rule, draining=True, busy=busy)
    return Turn("promote", ready[0]) if ready else None


def queue_for(turn: Turn) -> Callable[[list[FrozenTrial]], list[FrozenTrial]]:
    """The order `study.ask` takes WAITING trials in for `turn`: retries, then the turn's own;
    a "new" turn takes none (Optuna samples), a "promote" turn only its trial."""
    def order(waiting: list[FrozenTrial]) -> list[FrozenTrial]:
        retries = [t for t in waiting if "failed_trial" in t.system_attrs]
        if turn.kind == "promote":
            return retries + [t for t in waiting if t.number == turn.number and paused_after(t) is not None]
        if turn.kind == "queued":
            return retries + [t for t in waiting if t not in retries and paused_after(t) is None]
        return retries   # "retry", or "new": Optuna samples one
    return order


def run_turns(study: optuna.Study, objective, *, n_trials: int, eta: int, rule: str, timeout: float | None = None,
              callbacks=(), catch: tuple[type[Exception], ...] = (), stopped: Callable[[], bool] = lambda: False,
              only: Turn | None = None, echo: Callable[[str], None] = print) -> int:
    """A worker's loop under the promote scheduler: turns until `next_turn` has none left, a turn
    ends past the timeout, or `stopped()`; at most `n_trials` new configurations. `only`: just that turn
    (a trial process under --workers/--gpus, whose supervisor decides). `callbacks` see each trial
    as it finishes (as Study.optimize's). Returns the new configurations started."""
    started, since = 0, time.monotonic()
    while not stopped():
        trials = study.get_trials(deepcopy=False)   # one read a turn: the decision and what was paused
        turn = only or next_turn(trials, eta, rule, started < n_trials)
        if turn is None:
            break
        paused_before = {t.number for t in trials if paused_after(t) is not None}
        order_queue(study, queue_for(turn))
        trial, paused = _one_turn(study, objective, catch)
        started += trial.number not in paused_before and "failed_trial" not in trial.system_attrs
        if paused is not None:
            echo(f"trial {trial.number} PAUSED after cycle {paused.cycles} (epoch {paused.epochs - 1})")
        else:
            for callback in callbacks:
                callback(study, trial)
        # as Study.optimize's timeout: checked after each turn, so a run takes one at least
        if only is not None or (timeout is not None and time.monotonic() - since >= timeout):
            break
    return started


def _one_turn(study: optuna.Study, objective, catch) -> tuple[FrozenTrial, TrialPaused | None]:
    """One trial's turn, as Study.optimize runs one: stale trials failed first, the trial's
    heartbeat while it runs; told unless it paused. Re-raises what `catch` does not list."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # fail_stale_trials is "experimental"
        # ask warns that heartbeats are meant for Study.optimize: this loop beats them as it does
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        optuna.storages.fail_stale_trials(study)   # a no-op on a storage without heartbeats
        trial = study.ask()
    value, state, info = None, TrialState.COMPLETE, None
    error: BaseException | None = None
    with heartbeat(trial):
        try:
            value = objective(trial)
        except TrialPaused as paused:
            return stored_trial(trial), paused
        except optuna.TrialPruned as pruned:
            state, error = TrialState.PRUNED, pruned
        except (Exception, KeyboardInterrupt) as failed:
            state, error, info = TrialState.FAIL, failed, sys.exc_info()
    frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    if state == TrialState.FAIL:
        logging.getLogger(OPTIMIZE_LOGGER).warning(
            f"Trial {trial.number} failed with parameters: {trial.params} because of the following error: "
            f"{error!r}.", exc_info=info)
        if not isinstance(error, catch):
            raise error   # type: ignore[misc]
    return frozen, None
