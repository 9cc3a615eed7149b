"""What one trial does, read top to bottom.

1. Resume (objectives.resume): a retry notes what it retries and re-reports its saved epochs;
   a stop request interrupts the run and queues one retry that resumes from the checkpoint.
2. Out of GPU memory (objectives.oom): a shape known to run out is refused before it
   allocates; a CUDA OOM fails only this trial and is recorded for the ones after it.
3. Fine-tune (objectives.finetune): the trial's params from the space, one training run,
   validation loss recorded every epoch, judged where objectives.judging says (cycle ends by
   default), pruned when the pruner says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from objectives.finetune import FinetuneObjective
from objectives.oom import OutOfMemoryGuard
from objectives.resume import Checkpoints, ResumableObjective
from swipr_core.data.dataset import Dataset
from swipr_core.train.model import ModelSpec


@dataclass(frozen=True)
class TrainSettings:
    """How every trial of a study trains, beside the params its trial draws."""

    head_epochs: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    prune_at: str = "cycle_end"   # where a trial is judged: objectives.judging.PRUNE_AT
    n_cycles_mode: str = "budget"   # how a trial gets its cycles: objectives.space.N_CYCLES_MODES
    pause_at_cycle_ends: bool = False   # [study] scheduler = "promote": objectives.pausing


def guarded_finetune(dataset: Dataset, space: dict, model: ModelSpec, settings: TrainSettings,
                     checkpoints: Checkpoints, hooks=()) -> OutOfMemoryGuard:
    """Steps 2 and 3: the run under the OOM policy. A Dask task uses it as it is; its driver
    does step 1's job."""
    finetune = FinetuneObjective(
        dataset, space, model, head_epochs=settings.head_epochs, seed=settings.seed, device=settings.device,
        precision=settings.precision, compile=settings.compile, checkpoint_dir_for=checkpoints.dir_for,
        seed_number_for=checkpoints.seed_number_for, hooks=hooks, prune_at=settings.prune_at,
        n_cycles_mode=settings.n_cycles_mode, pause_at_cycle_ends=settings.pause_at_cycle_ends)
    return OutOfMemoryGuard(finetune, space, settings.n_cycles_mode)


def trial_objective(dataset: Dataset, space: dict, model: ModelSpec, settings: TrainSettings,
                    checkpoints: Checkpoints, stop, hooks=()) -> ResumableObjective:
    """The objective a worker hands to `study.optimize`; `stop` is its StopFlag."""
    return ResumableObjective(guarded_finetune(dataset, space, model, settings, checkpoints, hooks), checkpoints,
                              stop, prune_at=settings.prune_at)
