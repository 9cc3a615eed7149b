"""A learning-rate range test's record: its curve and its suggestions, without torch, so that
reading a study's findings (views, records) imports no training code (swipr_core.train.lr_find runs one)."""
from __future__ import annotations

from dataclasses import dataclass, field

START_LR, END_LR = 1e-7, 10.0   # fastai's defaults: the range a test sweeps
SUGGESTION_NAMES = ("valley", "slide", "minimum", "steep")   # fastai's suggestion functions, by name


@dataclass(frozen=True)
class LRFinding:
    """One range test: the curve (head lr and smoothed loss per batch) and what was read off it."""

    freeze: str
    batch_size: int
    image_size: int
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    suggestions: dict[str, float] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)   # suggestion -> why the curve didn't give it
    head_epochs: int = 0          # frozen_then_unfrozen: the head warm-up's epochs before the test
    head_lr: float | None = None  # and its lr
    seconds: float = 0.0          # what the test (warm-up included) took
    epochs_equivalent: float = 0.0   # its batches x batch size / training images, plus the warm-up's epochs
    cpu_threads: int = 0          # torch's CPU threads during the test (CPU results depend on them)
    seed: int = 0
