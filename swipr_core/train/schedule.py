"""A training run's plan: its config, checked, and the schedule model every part reads.

`TrainConfig.schedule()` is the one place that says what a run's epochs are: its phases (one
SGDR fit each, on the run's one epoch counter), each cycle end, and which cycle ends are
FINISHED SCHEDULES. SGDR restarts the same way every cycle, so a run of n cycles passes
through the finished run of k < n cycles at its k-th cycle end (same seed, same numbers):
with `finish_at`, those cycle ends count as finished k-cycle runs too (nested
schedules). Training, judging, checkpoints and `swipr fit`'s replay all read it from here.

A STAGE is one freeze strategy's phases at one image size, batch size and learning rate.
A run has one stage, or two: `TrainConfig.stage2` continues from stage 1's weights with new
loaders at its own size (fastai's progressive resizing, the notebook's `learn.set_data(...)`
then `learn.fit(...)`), on the same epoch counter. The optimizer's state (Adam's moments)
starts fresh there, as at every phase: fastai's freeze() and unfreeze() clear it, as the
notebook's learn.freeze() between its stages did. With two stages,
`finish_at` counts the LAST stage's cycles, and 0 there marks stage 1's end as a finished
schedule: the run with stage 2 skipped.

Pure arithmetic and checks, no torch: the study file checks a whole search space with it
before anything heavy is imported. swipr_core.train.run runs the plan.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, replace

from swipr_core.errors import FieldError, SwiprError

FREEZE_STRATEGIES = ("frozen", "unfrozen", "frozen_then_unfrozen")
COMPILE_MODES = ("auto", "on", "off")   # torch.compile: on, off, or on only where measured faster


MAX_EPOCHS = 1000   # per run: more is a typo or a runaway cycle_mult ** n_cycles, not a plan
_COUNTS = ("batch_size", "image_size", "n_cycles", "cycle_len", "cycle_mult", "head_epochs")
STAGE_KEYS = ("lr", "batch_size", "image_size", "freeze", "n_cycles", "cycle_len", "cycle_mult")


@dataclass(frozen=True)
class Phase:
    """One SGDR fit of a run: what trains, at which learning rate, and its cycles."""

    name: str             # frozen | unfrozen: what trains
    lr: float             # the head's peak learning rate
    discriminative: bool  # the body learns at lr / training.BODY_LR_DIVISOR (fastai's slice(lo, hi))
    n_cycles: int
    cycle_len: int
    cycle_mult: int
    first_epoch: int      # on the run's one counter
    image_size: int       # what the phase's loaders give the model
    batch_size: int
    stage: int = 1        # 1 or 2: stage 2 continues from stage 1's weights (see the module's docstring)
    warm_up: bool = False  # frozen_then_unfrozen's head-only cycle: not one of the stage's counted cycles

    @property
    def epochs(self) -> int:
        return sgdr_epochs(self.n_cycles, self.cycle_len, self.cycle_mult)

    def cycle_lengths(self) -> list[int]:
        return cycle_lengths(self.n_cycles, self.cycle_len, self.cycle_mult)


@dataclass(frozen=True)
class CycleEnd:
    """An epoch after which the learning rate is at its minimum."""

    epoch: int       # 0-based, on the run's one counter
    stage: int
    phase: str
    cycle: int       # the stage's SGDR cycles done at this end (1, 2, ...); 0 for a warm-up
    finished: bool   # a finished schedule: the run planned to end here would be this very run


@dataclass(frozen=True)
class Schedule:
    """A run's whole plan, in order: its phases and cycle ends on one epoch counter."""

    phases: tuple[Phase, ...]
    ends: tuple[CycleEnd, ...]

    @property
    def epochs(self) -> int:
        return sum(phase.epochs for phase in self.phases)

    def cycle_end_epochs(self) -> tuple[int, ...]:
        return tuple(end.epoch for end in self.ends)

    def finished(self) -> tuple[CycleEnd, ...]:
        """The finished schedules on the way, first to last; the last one is the run's end."""
        return tuple(end for end in self.ends if end.finished)

    def end_at(self, epoch: int) -> CycleEnd | None:
        return next((end for end in self.ends if end.epoch == epoch), None)


def plan(phases: list[Phase], finish_at: tuple[int, ...]) -> Schedule:
    """The schedule of `phases`: every cycle end, finished at the run's last epoch, where the
    last stage's counted cycles so far are one of `finish_at`, and, for 0 in `finish_at` in a
    two-stage run, at stage 1's end."""
    ends, last = [], sum(phase.epochs for phase in phases) - 1
    last_stage = phases[-1].stage
    stage1_end = sum(phase.epochs for phase in phases if phase.stage == 1) - 1
    for phase in phases:
        done = sum(p.n_cycles for p in phases if p.stage == phase.stage and not p.warm_up
                   and p.first_epoch < phase.first_epoch)
        epoch = phase.first_epoch
        for index, length in enumerate(phase.cycle_lengths(), start=1):
            epoch += length
            cycle = 0 if phase.warm_up else done + index
            finished = (epoch - 1 == last or (phase.stage == last_stage and cycle > 0 and cycle in finish_at)
                        or (last_stage > 1 and 0 in finish_at and epoch - 1 == stage1_end))
            ends.append(CycleEnd(epoch - 1, phase.stage, phase.name, cycle, finished))
    return Schedule(tuple(phases), tuple(ends))


@dataclass(frozen=True)
class StageConfig:
    """A run's second stage: continues from the first stage's weights (fastai's progressive
    resizing: new loaders at its size, its own freeze, lr and SGDR cycles), the optimizer's state
    starting fresh as at every phase (fastai's freeze()/unfreeze() clear it).
    frozen_then_unfrozen warms its head up for the run's head_epochs, as in stage 1."""

    lr: float
    batch_size: int
    image_size: int
    freeze: str
    n_cycles: int        # >= 1: a skipped stage 2 is TrainConfig.stage2 = None
    cycle_len: int
    cycle_mult: int

    def __post_init__(self):
        for name in STAGE_KEYS:
            try:
                check_param(name, getattr(self, name))
            except FieldError as error:   # named as the trial's param is
                raise FieldError(f"stage2_{name}", error.problem) from None


def _stage_phases(stage: int, plan: "TrainConfig | StageConfig", head_epochs: int, first_epoch: int) -> list[Phase]:
    """One stage's phases from `first_epoch` on: its SGDR fit, after a head-only warm-up
    cycle of head_epochs for frozen_then_unfrozen (whose unfrozen phase has discriminative lrs)."""
    sgdr = (plan.n_cycles, plan.cycle_len, plan.cycle_mult)
    two_phases = plan.freeze == "frozen_then_unfrozen"
    fits = [("frozen", 1, head_epochs, 1), ("unfrozen", *sgdr)] if two_phases else [(plan.freeze, *sgdr)]
    phases = []
    for name, n_cycles, cycle_len, cycle_mult in fits:
        phases.append(Phase(name, plan.lr, discriminative=two_phases and name == "unfrozen", n_cycles=n_cycles,
                            cycle_len=cycle_len, cycle_mult=cycle_mult, first_epoch=first_epoch,
                            image_size=plan.image_size, batch_size=plan.batch_size, stage=stage,
                            warm_up=two_phases and name == "frozen"))
        first_epoch += phases[-1].epochs
    return phases


@dataclass(frozen=True)
class TrainConfig:
    lr: float
    batch_size: int
    image_size: int
    freeze: str
    n_cycles: int
    cycle_len: int
    cycle_mult: int
    head_epochs: int = 1
    seed: int = 0
    # Cycle counts of the last stage below its n_cycles whose cycle ends are finished runs too:
    # n_cycles is then the run's budget, not its only length (nested schedules); with a stage 2,
    # 0 = stage 1's end. () = only the run's own end.
    finish_at: tuple[int, ...] = ()
    stage2: StageConfig | None = None   # None: a one-stage run

    def __post_init__(self):
        for name in ("lr", "freeze", *_COUNTS):
            check_param(name, getattr(self, name))
        first = check_epochs(self.n_cycles, self.cycle_len, self.cycle_mult, self.freeze, self.head_epochs)
        if self.stage2 is not None:
            if not isinstance(self.stage2, StageConfig):
                raise FieldError("stage2", f"must be a StageConfig or None, got {self.stage2!r}")
            second = self.stage2
            check_epochs(second.n_cycles, second.cycle_len, second.cycle_mult, second.freeze, self.head_epochs,
                         before=first)
        self._check_finish_at()

    def _check_finish_at(self) -> None:
        last = self.stage2 or self
        for k in self.finish_at:
            if self.stage2 is not None and not isinstance(k, bool) and k == 0:
                continue   # stage 1's end
            _check_count("finish_at", k)
            if int(k) > last.n_cycles:
                which = "stage2's n_cycles" if self.stage2 is not None else "n_cycles"
                raise FieldError("finish_at", f"values must be at most {which} ({last.n_cycles}), got {k}")

    def schedule(self) -> Schedule:
        """The run's plan: phases, cycle ends, finished schedules (see the module's docstring)."""
        phases = _stage_phases(1, self, self.head_epochs, first_epoch=0)
        if self.stage2 is not None:
            phases += _stage_phases(2, self.stage2, self.head_epochs, first_epoch=sum(p.epochs for p in phases))
        return plan(phases, self.finish_at)

    def finished_run_at(self, epoch: int) -> "TrainConfig":
        """The run (same seed and params) that ends at this run's finished cycle end `epoch`:
        what `swipr fit` replays for a trial whose best finished schedule ends there."""
        schedule = self.schedule()
        end = schedule.end_at(epoch)
        if end is None or not end.finished:
            raise FieldError("epoch", f"{epoch} is not the end of a finished schedule of this run "
                                      f"(those end at epochs {[e.epoch for e in schedule.finished()]})")
        if self.stage2 is None:
            return replace(self, n_cycles=end.cycle, finish_at=())
        if end.stage == 1:
            return replace(self, stage2=None, finish_at=())
        return replace(self, stage2=replace(self.stage2, n_cycles=end.cycle), finish_at=())

    def finished_run(self, n_cycles: int) -> "TrainConfig":
        """The run of exactly `n_cycles` cycles of the last stage that this one passes through
        (as finish_at counts them: with a stage 2, 0 = stage 1's end); see finished_run_at."""
        last_stage = 1 if self.stage2 is None else 2
        ends = {end.cycle if end.stage == last_stage else 0: end.epoch for end in self.schedule().finished()}
        if n_cycles not in ends:
            raise FieldError("n_cycles", f"{n_cycles} is not a finished schedule of this run "
                                         f"(finished: {sorted(ends)})")
        return self.finished_run_at(ends[n_cycles])

    @property
    def final_image_size(self) -> int:
        """The image size the trained model ends at: the last stage's (what bundles predict at)."""
        return self.stage2.image_size if self.stage2 is not None else self.image_size

    @property
    def final_batch_size(self) -> int:
        return self.stage2.batch_size if self.stage2 is not None else self.batch_size

    def sgdr_phases(self) -> list[tuple[str, int, int, int]]:
        """(phase name, n_cycles, cycle_len, cycle_mult) in order, over both stages."""
        return [(p.name, p.n_cycles, p.cycle_len, p.cycle_mult) for p in self.schedule().phases]

    def phases(self) -> list[tuple[str, int]]:
        """(phase name, epochs) in order, over both stages."""
        return [(p.name, p.epochs) for p in self.schedule().phases]

    @property
    def epochs(self) -> int:
        return self.schedule().epochs

    def cycle_end_epochs(self) -> tuple[int, ...]:
        """The epochs (0-based, on the run's one counter) at whose end the learning rate reaches
        its minimum: the last epoch of every SGDR cycle and of frozen_then_unfrozen's warm-up."""
        return self.schedule().cycle_end_epochs()


def check_param(name: str, value) -> None:
    """One training param's value, checked here only; the edge that read it says where from."""
    if name == "lr":
        _check_lr(value)
    elif name == "freeze":
        if value not in FREEZE_STRATEGIES:
            raise FieldError("freeze", f"must be one of {', '.join(FREEZE_STRATEGIES)}, got {value!r}")
    else:
        _check_count(name, value)
        if name == "batch_size" and value < 2:
            raise FieldError("batch_size", f"must be 2 or more: BatchNorm can't train on a batch of one, got {value}")


def _check_lr(lr) -> None:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < float(lr) < 1:
        raise FieldError("lr", f"must be a number between 0 and 1 (both excluded), got {lr!r}")


def check_device(name: str) -> None:
    """A device name as a user writes it; whether that GPU is there is training's to check."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise FieldError("device", f"must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise FieldError("compile", f"must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FieldError(name, f"must be a whole number, got {value!r}")
    if value < 1:
        raise FieldError(name, f"must be 1 or more, got {value}")


def cycle_lengths(n_cycles: int, cycle_len: int, cycle_mult: int) -> list[int]:
    """Epochs in each SGDR cycle: the first cycle_len, each next cycle_mult times the last."""
    return [cycle_len * cycle_mult**i for i in range(n_cycles)]


def sgdr_epochs(n_cycles: int, cycle_len: int, cycle_mult: int) -> int:
    """Epochs of a whole SGDR schedule (fastai's fit_sgdr formula)."""
    return cycle_len * n_cycles if cycle_mult == 1 else cycle_len * (cycle_mult ** n_cycles - 1) // (cycle_mult - 1)


def check_epochs(n_cycles: int, cycle_len: int, cycle_mult: int, freeze: str = "unfrozen",
                 head_epochs: int = 1, before: int = 0) -> int:
    """A stage's epochs; SwiprError past MAX_EPOCHS, counting the `before` epochs of the stages
    before it on the run's counter (stage 2: check_epochs(stage 1's ...)). Epochs grow with
    every argument, so the highs of a search space bound all its trials."""
    for name, value in (("n_cycles", n_cycles), ("cycle_len", cycle_len), ("cycle_mult", cycle_mult),
                        ("head_epochs", head_epochs)):
        _check_count(name, value)
    check_param("freeze", freeze)
    head = head_epochs if freeze == "frozen_then_unfrozen" else 0
    total, length = head, cycle_len
    for _ in range(n_cycles):   # stops once past the cap: cycle_mult ** n_cycles may not fit in memory
        total += length
        if before + total > MAX_EPOCHS:
            asked = _epochs_in_words(n_cycles, cycle_len, cycle_mult, head)
            warm_up = f"head_epochs={head_epochs}, " if head else ""
            stage, after = ("stage 2's ", f" after stage 1's {before}") if before else ("", "")
            raise SwiprError(f"{stage}{warm_up}n_cycles={n_cycles}, cycle_len={cycle_len}, cycle_mult={cycle_mult} "
                             f"ask for {asked} epochs{after}; a run may have at most {MAX_EPOCHS}")
        length *= cycle_mult
    return total


def _epochs_in_words(n_cycles: int, cycle_len: int, cycle_mult: int, head: int) -> str:
    if cycle_mult == 1 or n_cycles * cycle_mult.bit_length() + cycle_len.bit_length() < 1000:
        exact = head + sgdr_epochs(n_cycles, cycle_len, cycle_mult)
        return str(exact) if exact < 10**15 else f"{float(exact):.3g}"
    # Too big to compute: its order of magnitude, from logarithms.
    log10 = math.log10(cycle_len) + n_cycles * math.log10(cycle_mult) - math.log10(cycle_mult - 1)
    return f"about 1e{int(log10)}"
