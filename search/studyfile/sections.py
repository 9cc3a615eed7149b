"""The study file's sections as typed fields: each key is declared once, here or in the core
type its section parses into ([data] -> DataSpec, [data.rules] -> LabelRules, [model] ->
ModelSpec). A field's type is the TOML type it accepts, its default the key's default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from objectives.judging import PRUNE_AT
from objectives.space import Choices, FinderLR, Range
from swipr_core.data.dataset import DataSpec
from swipr_core.train.model_spec import ModelSpec

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "none")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PRUNE_AT_CHOICES = PRUNE_AT       # cycle_end | epoch (objectives.judging)
SCHEDULERS = ("pruner", "promote")   # docs/promotion.md
PROMOTIONS = ("asha", "curve")       # how `promote` ranks a rung (search.running.promotion)


@dataclass(frozen=True)
class StudySection:
    name: str = ""                    # default: the study file's stem
    storage: str = ""                 # default: a SQLite file beside the study file
    sampler: str = "tpe"              # one of SAMPLERS
    pruner: str = "successive_halving"   # one of PRUNERS; the winner of bench/search_efficiency.py (nested)
    pruner_startup_trials: int = 3    # median/percentile: trials finished before pruning
    pruner_warmup_epochs: int = 2     # epochs every trial runs before it can be pruned (bench/search_efficiency.py)
    prune_at: str = "cycle_end"       # judge trials at SGDR cycle ends, or at every "epoch"
    scheduler: str = "pruner"         # one of SCHEDULERS: "pruner" = each trial runs its plan until the pruner
                                      # stops it; "promote" = trials pause at cycle ends and earn the next one
    promotion: str = "asha"           # one of PROMOTIONS: the rung's ranking under scheduler = "promote"
    promotion_eta: int = 3            # a paused trial is promoted from the top 1/eta of its rung
    n_cycles: str = ""                # "budget" | "sampled" (objectives.space); "" = budget for a new
                                      # study, the way it started for one already run
    seed: int = 0
    warm_start: bool = True           # the notebook's pipeline (one two-stage trial) first
    learn_from: tuple[Path, ...] = ()    # earlier study files (of older data) a new study starts from
    learn_from_top: int = 3           # their best configurations enqueued after the notebook trial
    learn_from_sampler: bool = True   # TPE also sees their finished trials, by rank (false: enqueue only)
    n_trials: int = 20
    timeout: float = 0.0              # seconds; 0 = none
    heartbeat_interval: int = 60      # seconds between a running trial's heartbeats
    grace_period: int = 180           # a trial silent this long is failed and retried
    max_retry: int = 3                # times one trial is retried after its worker died
    max_failures_in_a_row: int = 3    # trials failing one after another before the run stops


@dataclass(frozen=True)
class TrainSection:
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    head_epochs: int = 1              # frozen epochs before unfreezing (frozen_then_unfrozen)
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: str = "auto"             # torch.compile, one of swipr_core.train.schedule.COMPILE_MODES


@dataclass(frozen=True)
class ClusterSection:
    dask: str = ""                    # a Dask scheduler address; $SWIPR_DASK overrides it, --dask both
    checkpoint_dir: Path | None = None   # per-epoch checkpoints on a folder every worker reads;
                                         # default: <cache_dir>/checkpoints


@dataclass(frozen=True)
class StudyFile:
    path: Path
    study: StudySection
    data: DataSpec
    model: ModelSpec
    train: TrainSection
    space: dict[str, Range | Choices | FinderLR] = field(default_factory=dict)
    cluster: ClusterSection = ClusterSection()
    sha256: str = ""   # of the file's bytes as read: which version of the file a run (and trial) used

    def where(self, section: str) -> str:
        """How a message names one of this file's sections: "studies/x.toml: [data]"."""
        return f"{self.path}: [{section}]"

    def device_from(self, flag: str | None) -> tuple[str, str]:
        """(device name, where it came from): `--device` if given, else [train] device."""
        return (flag, "--device:") if flag else (self.train.device, self.where("train"))
