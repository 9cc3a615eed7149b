"""The learning-rate range test: fastai's Learner.lr_find on a run's own learner.

The learning rate grows exponentially, batch by batch, from start_lr to end_lr while fastai
records the smoothed training loss; its suggestion functions (valley, slide, minimum, steep)
read a learning rate off that curve. The learner is the one a training run builds
(swipr_core.train.run.build_learner: same data, cache, model, device and precision), with the
parameter groups the run's freeze strategy trains:

- frozen: the head only;
- unfrozen: the whole network at one learning rate;
- frozen_then_unfrozen: the whole network, the body at lr / BODY_LR_DIVISOR, as in the run's
  unfrozen phase, where it spends most of its epochs, and after its head warm-up: the head is
  trained first for the run's head_epochs (one SGDR cycle, frozen body) at HEAD_LR, so the test
  starts where the trial's unfrozen phase starts, not from a random head.

The learning rate recorded and suggested is always the head's: the trial's `lr`.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.torch_core import tensor

from swipr_core.data.dataset import Dataset
from swipr_core.errors import FieldError
from swipr_core.train.lr_finding import END_LR, START_LR, LRFinding
from swipr_core.train.model import ModelSpec
from swipr_core.train.run import BODY_LR_DIVISOR, build_learner
from swipr_core.train.schedule import TrainConfig

# fastai's suggestion functions, by the name a user sees (and a [space] lr finder names).
SUGGESTIONS = {"valley": valley, "slide": slide, "minimum": minimum, "steep": steep}
NUM_IT = 100          # batches per range test, unless told otherwise (`swipr lr-find --num-it`)
MIN_ITERATIONS = 20   # fastai reads suggestions off batches num_it // 10 to the 5th from last
MAX_ITERATIONS = 10_000
# frozen_then_unfrozen's head warm-up before its test: fastai's fine_tune trains the head at its
# base_lr default (2e-3) before it unfreezes; the trial's own lr is what the test is to find.
HEAD_LR = 2e-3


def check_iterations(num_it) -> None:
    if isinstance(num_it, bool) or not isinstance(num_it, int) or not MIN_ITERATIONS <= num_it <= MAX_ITERATIONS:
        raise FieldError("num_it", f"must be a whole number between {MIN_ITERATIONS} and {MAX_ITERATIONS}, "
                                   f"got {num_it!r}")


class BatchProgress(Callback):
    """Calls `on_batch(head lr, smoothed loss)` after each training batch of the range test."""

    order = 60   # after fastai's Recorder (50), whose smoothed loss it reads

    def __init__(self, on_batch: Callable[[float, float], None]):
        self.on_batch = on_batch

    def after_batch(self):
        if self.training:
            self.on_batch(float(self.opt.hypers[-1]["lr"]), float(self.smooth_loss))


def find_lr(dataset: Dataset, config: TrainConfig, model_spec: ModelSpec, device: str = "auto",
            precision: str = "auto", compile: str = "auto", num_it: int = NUM_IT, threads: int | None = None,
            head_lr: float = HEAD_LR, on_batch: Callable[[float, float], None] | None = None) -> LRFinding:
    """The range test for `config`'s batch size, image size and freeze strategy (its lr and
    schedule are not used), over `num_it` batches from START_LR to END_LR; frozen_then_unfrozen's
    after config.head_epochs of head warm-up at `head_lr`. `threads`: torch's CPU threads for the
    test (None: as they are); the same threads, seed and batches give the same curve. `on_batch`
    (head lr, smoothed loss) after each of the test's batches: what a progress bar needs."""
    check_iterations(num_it)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        learn, _, _ = build_learner(dataset, config, model_spec, device=device, precision=precision,
                                    compile=compile)
        head_epochs = _warm_up_head(learn, config, head_lr)
        lrs, losses = _range_test(learn, config.freeze, num_it, on_batch)
        seconds, used_threads = time.perf_counter() - started, torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    suggestions, unreadable = suggest(lrs, losses, num_it)
    n_train = max(1, len(dataset.split) - sum(dataset.split.is_valid))
    return LRFinding(config.freeze, config.batch_size, config.image_size, tuple(lrs), tuple(losses),
                     suggestions, unreadable, head_epochs=head_epochs, head_lr=head_lr if head_epochs else None,
                     seconds=seconds, epochs_equivalent=num_it * config.batch_size / n_train + head_epochs,
                     cpu_threads=used_threads, seed=config.seed)


def _warm_up_head(learn, config: TrainConfig, head_lr: float) -> int:
    """frozen_then_unfrozen: train the head as the run's warm-up does (frozen body, one SGDR
    cycle of head_epochs, fastai's fit_sgdr) before the test; the epochs trained (0: none)."""
    if config.freeze != "frozen_then_unfrozen" or config.head_epochs < 1:
        return 0
    learn.freeze()
    with learn.no_logging(), learn.no_bar():
        learn.fit_sgdr(1, config.head_epochs, lr_max=head_lr)
    return config.head_epochs


def _range_test(learn, freeze: str, num_it: int,
                on_batch: Callable[[float, float], None] | None = None) -> tuple[list[float], list[float]]:
    """fastai's lr_find on the parameter groups `freeze` trains: (head lrs, smoothed losses)."""
    scale: float | np.ndarray = 1.0
    if freeze == "frozen":
        learn.freeze()
    else:
        learn.unfreeze()
        if freeze == "frozen_then_unfrozen":
            scale = np.array([1 / BODY_LR_DIVISOR, 1.0])   # one lr per group: body, head
    # fastai's own bar off: it draws for notebooks and ttys alike; the caller's on_batch draws instead
    with learn.no_bar(), learn.added_cbs([BatchProgress(on_batch)] if on_batch is not None else []):
        learn.lr_find(start_lr=START_LR * scale, end_lr=END_LR * scale, num_it=num_it, show_plot=False,
                      suggest_funcs=None)
    return [float(lr) for lr in learn.recorder.lrs], [float(loss) for loss in learn.recorder.losses]


def suggest(lrs: list[float], losses: list[float], num_it: int) -> tuple[dict[str, float], dict[str, str]]:
    """({name: lr}, {name: why not}) from fastai's suggestion functions, on the part of the
    curve fastai's lr_find reads them from (past the first tenth, before the last 5 batches,
    up to the first NaN). Each is read on its own: fastai computes them together, so one that
    a curve cut short by divergence can't give (slide needs 16 points) would lose them all."""
    window = slice(num_it // 10, -5)
    lr_t, loss_t = tensor(lrs[window]).float(), tensor(losses[window]).float()
    nans = torch.nonzero(torch.isnan(loss_t)).flatten()
    if len(nans):
        lr_t, loss_t = lr_t[:int(nans[0])], loss_t[:int(nans[0])]
    found, unreadable = {}, {}
    for name, function in SUGGESTIONS.items():
        try:
            lr, _ = function(lr_t, loss_t, num_it)
        except (IndexError, RuntimeError, ValueError) as error:
            unreadable[name] = f"the curve has {len(loss_t)} usable points ({type(error).__name__})"
            continue
        if not math.isfinite(lr) or lr <= 0:
            unreadable[name] = f"it gave {lr}"
            continue
        found[name] = float(lr)
    return found, unreadable
