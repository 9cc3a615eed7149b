"""A two-stage trial's stages as people read them: where stage 2 starts and what it trains.

The trial's config says it (swipr_core.train.schedule: stage 2 continues from stage 1's weights, at
its own size, batch size, freeze and learning rate, on the run's one epoch counter). A hook
records it on the trial when the run reaches stage 2 and its params are drawn (user attr STAGES_ATTR), so the pictures, the
per-epoch table, the summary and the report read the same spans, and so do later readers of a
stored trial, without rebuilding its config. A one-stage trial records nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from objectives.trial_attrs import set_attr

STAGES_ATTR = "stages"   # user attr of a two-stage trial: [StageSpan as a dict, ...]


@dataclass(frozen=True)
class StageSpan:
    """One stage of a run: its epochs on the run's counter and what it trains on."""

    stage: int
    first_epoch: int
    epochs: int
    image_size: int
    batch_size: int
    freeze: str
    lr: float

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1

    def epochs_text(self) -> str:
        """'epochs 7-13', or 'epoch 0' for a stage of one epoch."""
        if self.epochs == 1:
            return f"epoch {self.first_epoch}"
        return f"epochs {self.first_epoch}-{self.last_epoch}"

    def what(self) -> str:
        """'229 px, batch 24, frozen, lr 0.001': what the stage trains."""
        return f"{self.image_size} px, batch {self.batch_size}, {self.freeze}, lr {self.lr:.3g}"


def stage_spans(config) -> list[StageSpan]:
    """The stages of a TrainConfig, first to last; [] for a run of one stage."""
    second = getattr(config, "stage2", None)
    if second is None:
        return []
    phases = config.schedule().phases
    epochs = {stage: sum(p.epochs for p in phases if p.stage == stage) for stage in (1, 2)}
    return [StageSpan(1, 0, epochs[1], config.image_size, config.batch_size, config.freeze, config.lr),
            StageSpan(2, epochs[1], epochs[2], second.image_size, second.batch_size, second.freeze, second.lr)]


def spans_of(user_attrs: dict) -> list[StageSpan]:
    """The spans a trial recorded ([] for a one-stage trial, or one that ran before stages)."""
    recorded = user_attrs.get(STAGES_ATTR) or []
    try:
        return [StageSpan(**span) for span in recorded]
    except TypeError:   # written by another version: the texts go without the stages
        return []


def boundary_label(span: StageSpan) -> str:
    """What the pictures write at stage 2's first epoch."""
    return f"stage {span.stage}: {span.image_size} px, batch {span.batch_size}, {span.freeze}"


def stages_text(spans: list[StageSpan]) -> str:
    """The stages in one line, for the summary, `study best` and the report."""
    parts = [f"stage {s.stage} {s.epochs_text()} ({s.what()})" for s in spans]
    return "; ".join(parts) + (", from stage 1's weights" if len(spans) > 1 else "")


def stage_start_line(span: StageSpan) -> str:
    """The line the per-epoch table prints before a later stage's first epoch."""
    return f"-- stage {span.stage} from stage {span.stage - 1}'s weights, {span.epochs_text()}: {span.what()} --"


class RecordStages:
    """Objective hook: records a two-stage trial's spans as it reaches stage 2, its params drawn
    (see the module docstring): a trial stopped at stage 1's end records none."""

    def on_start(self, trial, config) -> None:
        """Nothing yet: a two-stage trial's stage 2 params are drawn as the run reaches it."""

    def on_stage2(self, trial, config) -> None:
        spans = stage_spans(config)
        if spans:
            set_attr(trial, STAGES_ATTR, [asdict(span) for span in spans])
