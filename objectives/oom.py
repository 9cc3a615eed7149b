"""Out of GPU memory: fail the trial with the reason, free the memory, steer the sampler away.

A CUDA OOM fails only its trial. The (freeze, batch size, image size) that ran out is recorded
on the study (one user attr per shape, so workers on several machines never overwrite each
other), and a later trial whose shape is at least as large is refused before it allocates
anything: it ends PRUNED with no reported epochs, which TPE ranks below every finished trial,
so the sampler learns to leave that corner alone. A trial with a second stage has a shape for
each stage: either one too large refuses it, and an OOM records the stage's it ran out in.
"""
from __future__ import annotations

import gc

import optuna
import torch

from objectives.judging import ScheduleCut, best_finished, stage_of
from objectives.space import suggest
from objectives.trial_attrs import attrs_of, set_attr

ATTR_PREFIX = "oom:"
# Peak memory by freeze strategy: frozen_then_unfrozen peaks in its unfrozen phase.
MEMORY_RANK = {"frozen": 0, "frozen_then_unfrozen": 1, "unfrozen": 1}


class TrialOutOfMemory(RuntimeError):
    """The trial's run did not fit on the GPU (Optuna records FAIL, the worker goes on)."""


def shape_key(freeze: str, batch_size: int, image_size: int) -> str:
    return f"{ATTR_PREFIX}{freeze}:{batch_size}x{image_size}"


def known_shapes(study: optuna.Study) -> list[tuple[str, int, int]]:
    shapes = []
    for key in study.user_attrs:
        if key.startswith(ATTR_PREFIX):
            freeze, size = key[len(ATTR_PREFIX):].split(":")
            batch, image = size.split("x")
            shapes.append((freeze, int(batch), int(image)))
    return shapes


def too_big(shape: tuple[str, int, int], failed: list[tuple[str, int, int]]) -> tuple[str, int, int] | None:
    """The recorded OOM shape that `shape` is at least as large as, if any."""
    freeze, batch, image = shape
    for other in failed:
        if MEMORY_RANK[freeze] >= MEMORY_RANK[other[0]] and batch >= other[1] and image >= other[2]:
            return other
    return None


def free_memory() -> None:
    """Drop what a finished run left behind and give cached GPU blocks back."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class OutOfMemoryGuard:
    """Wraps an objective; needs the space (and how it draws n_cycles) to ask for the params
    that size a run."""

    def __init__(self, objective, space: dict, n_cycles_mode: str = "budget"):
        self.objective = objective
        self.space = space
        self.n_cycles_mode = n_cycles_mode
        self.shapes: list[tuple[str, int, int]] = []   # the running trial's, one a stage, as each is drawn
        if hasattr(objective, "stage2_guard"):   # stage 2's shape is known only once the run reaches it
            objective.stage2_guard = self.refuse_stage2

    def _refuse(self, trial: optuna.Trial, shape: tuple[str, int, int]) -> str | None:
        """Why the shape is refused (one known to run out of memory is no smaller), or None."""
        self.shapes.append(shape)
        known = too_big(shape, known_shapes(trial.study))
        if known is None:
            return None
        reason = (f"refused: freeze={shape[0]} batch_size={shape[1]} image_size={shape[2]} is at least "
                  f"as large as {known[0]} {known[1]}x{known[2]}, which ran out of GPU memory")
        set_attr(trial, "refused", reason)
        return reason

    def refuse_stage2(self, trial: optuna.Trial, stage2, seen) -> None:
        """The objective's stage2_guard: stage 2's shape refused like stage 1's; a trial that has
        finished stage 1's schedule keeps it (judging.ScheduleCut), else it is pruned."""
        reason = self._refuse(trial, (stage2.freeze, stage2.batch_size, stage2.image_size))
        if reason is None:
            return
        best = best_finished([r.valid_loss for r in seen], [r.finishes for r in seen])
        if best is not None:
            raise ScheduleCut(f"{reason}; keeps its stage 1 schedule", best[2], best[1])
        raise optuna.TrialPruned(reason)

    def __call__(self, trial: optuna.Trial):
        self.shapes = []
        shape = (suggest(trial, "freeze", self.space["freeze"]), suggest(trial, "batch_size", self.space["batch_size"]),
                 suggest(trial, "image_size", self.space["image_size"]))
        reason = self._refuse(trial, shape)
        if reason is not None:
            raise optuna.TrialPruned(reason)
        message = None
        try:
            return self.objective(trial)
        except torch.cuda.OutOfMemoryError as error:
            message = (str(error).splitlines() or ["CUDA out of memory"])[0]
        # Out of the except block, the error and its traceback (which holds the run's
        # tensors) are gone, so the memory can really be freed.
        free_memory()
        attrs = attrs_of(trial)   # the stage of the epoch that ran out: the one after those reported
        shape = self.shapes[min(stage_of(attrs, attrs.get("epochs", 0)), len(self.shapes)) - 1]
        reason = f"out of GPU memory at freeze={shape[0]} batch_size={shape[1]} image_size={shape[2]}: {message}"
        set_attr(trial, "fail_reason", reason)
        trial.study.set_user_attr(shape_key(*shape), trial.number)
        raise TrialOutOfMemory(reason)
