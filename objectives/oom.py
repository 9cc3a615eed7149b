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

from objectives.judging import stage_of
from objectives.space import STAGE2, has_stage2, skippable_stage2, stage2_name, suggest

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

    def shapes(self, trial: optuna.Trial) -> list[tuple[str, int, int]]:
        """Each stage's (freeze, batch size, image size). Asked here first; the objective's own
        suggest calls get the same values back."""
        keys = ("freeze", "batch_size", "image_size")
        first = tuple(suggest(trial, name, self.space[name]) for name in keys)
        if not has_stage2(self.space):
            return [first]
        if skippable_stage2(self.space, self.n_cycles_mode) and \
                suggest(trial, stage2_name("n_cycles"), self.space[stage2_name("n_cycles")]) == 0:
            return [first]   # this trial skips stage 2
        second = tuple(suggest(trial, STAGE2 + name, self.space[STAGE2 + name]) if STAGE2 + name in self.space
                       else value for name, value in zip(keys, first, strict=True))
        return [first, second]

    def __call__(self, trial: optuna.Trial):
        shapes = self.shapes(trial)
        for shape in shapes:
            known = too_big(shape, known_shapes(trial.study))
            if known is not None:
                reason = (f"refused: freeze={shape[0]} batch_size={shape[1]} image_size={shape[2]} is at least "
                          f"as large as {known[0]} {known[1]}x{known[2]}, which ran out of GPU memory")
                trial.set_user_attr("refused", reason)
                raise optuna.TrialPruned(reason)
        message = None
        try:
            return self.objective(trial)
        except torch.cuda.OutOfMemoryError as error:
            message = (str(error).splitlines() or ["CUDA out of memory"])[0]
        # Out of the except block, the error and its traceback (which holds the run's
        # tensors) are gone, so the memory can really be freed.
        free_memory()
        attrs = trial.user_attrs   # the stage of the epoch that ran out: the one after those reported
        shape = shapes[min(stage_of(attrs, attrs.get("epochs", 0)), len(shapes)) - 1]
        reason = f"out of GPU memory at freeze={shape[0]} batch_size={shape[1]} image_size={shape[2]}: {message}"
        trial.set_user_attr("fail_reason", reason)
        trial.study.set_user_attr(shape_key(*shape), trial.number)
        raise TrialOutOfMemory(reason)
