"""One record per trial: its PLAN (what it trains) and its RESULT (the finished schedule its value names).

A trial's value is its best finished schedule (objectives.judging), which need not be its last
epoch: the 2-cycle end at epoch 6 of a 10-epoch run, or stage 1's end when stage 2 ran and lost.
So every number and picture shown of a trial comes from this record, never from its last epoch:

- the plan, written once when the trial starts: the whole training config (both stages, seed,
  head epochs, the finished schedules on the way), the model and cache size it trained with,
  the lr finder's finding it used, how it got its cycles and where it was judged, its data;
- the result, rewritten whenever a finished schedule becomes the trial's best: stage, cycles,
  epoch, val_loss, accuracy, ROC AUC and confusion counts of that schedule's model, from the
  validation predictions fastai's own pass made at that epoch (no extra pass).

Both live in the trial's system attrs (PLAN_ATTR, RESULT_ATTR), so Optuna's own tables stay
readable; `record_of` reads them back, and builds the same record from the user attrs of trials
written before the record existed (`legacy`). `swipr fit` replays `TrialRecord.replay_config()`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import optuna

from objectives.judging import (
    BEST_EPOCH_ATTR,
    BEST_N_CYCLES_ATTR,
    BEST_STAGE_ATTR,
    STAGE2_FIRST_EPOCH_ATTR,
    best_finished,
)
from objectives.lr_record import FINDER_LR_ATTR, LR_ATTR
from objectives.optuna_compat import set_system_attr
from objectives.space import stage2_name
from objectives.trial_attrs import attrs_of, set_attr
from swipr_core.errors import FieldError, SwiprError
from swipr_core.train.metrics import confusion_counts, majority_accuracy, roc_auc
from swipr_core.train.schedule import STAGE_KEYS, StageConfig, TrainConfig, sgdr_epochs

PLAN_ATTR = "swipr:plan"       # trial system attr: Plan.to_json(), once, as the trial starts
RESULT_ATTR = "swipr:result"   # trial system attr: Result.to_json(), whenever the best finished schedule moves
# user attrs of a trial whose n_cycles is its budget (read by the legacy reader; still written)
BUDGET_ATTR = "n_cycles_budget"
FINISH_AT_ATTR = "finish_at"


@dataclass(frozen=True)
class Plan:
    """What a trial trains: enough to run it again exactly."""

    config: TrainConfig
    # False: config.stage2 only holds stage 2's place; its params are drawn as the run reaches it
    # (objectives.finetune.draw_stage2), and a trial stopped before then never draws them
    stage2_drawn: bool = True
    model: dict | None = None           # {"arch", "pretrained", "weights"}: [model] as trained
    cache_px: int | None = None         # [data] cache_px: the pixels its images had
    finding: dict | None = None         # the lr finder's finding it trained with (objectives.lr_finder)
    n_cycles_mode: str | None = None
    prune_at: str | None = None
    data_fingerprint: str | None = None
    cpu_threads: int | None = None      # CPU sums depend on it: a replay uses the same
    study_file_sha256: str | None = None

    @property
    def epochs(self) -> int:
        return self.config.epochs

    def to_json(self) -> dict:
        return {**asdict(self), "config": config_json(self.config)}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        fields = {key: data.get(key) for key in cls.__dataclass_fields__ if key not in ("config", "stage2_drawn")}
        return cls(config=config_from_json(data["config"]), stage2_drawn=bool(data.get("stage2_drawn", True)),
                   **fields)


@dataclass(frozen=True)
class Result:
    """The trial's best finished schedule and its model's scores on the validation split."""

    epoch: int                           # the epoch (0-based, the run's one counter) it ends after
    n_cycles: int                        # its cycles (with two stages: the last stage's; 0 = stage 1's end)
    stage: int                           # the stage it ends in
    val_loss: float
    accuracy: float | None = None
    roc_auc: float | None = None         # None: not known (a trial from before the record, or one class)
    confusion: dict | None = None        # {"tn", "fp", "fn", "tp"} at P(YES) >= 0.5
    majority_accuracy: float | None = None
    n_valid: int | None = None

    def to_json(self) -> dict:
        return {key: _finite_or_none(value) for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        return cls(epoch=int(data["epoch"]), n_cycles=int(data["n_cycles"]), stage=int(data["stage"]),
                   val_loss=float(data["val_loss"]) if data.get("val_loss") is not None else math.nan,
                   accuracy=data.get("accuracy"), roc_auc=data.get("roc_auc"), confusion=data.get("confusion"),
                   majority_accuracy=data.get("majority_accuracy"), n_valid=data.get("n_valid"))


@dataclass(frozen=True)
class TrialRecord:
    """A stored trial as every view reads it."""

    number: int
    state: str
    value: float | None
    plan: Plan | None
    result: Result | None
    epochs_run: int | None     # epochs it trained (its last epoch is epochs_run - 1)
    legacy: bool = False       # built from the user attrs of a trial written before the record

    @property
    def result_is_last_epoch(self) -> bool:
        return self.result is not None and self.epochs_run is not None and self.result.epoch == self.epochs_run - 1

    def replay_config(self) -> TrainConfig:
        """The run `swipr fit` replays: the plan's config, ending at the result's finished schedule."""
        if self.plan is None or self.result is None:
            raise SwiprError(f"trial {self.number}: has no plan or result to replay (it wasn't run by `swipr "
                             f"study run`, or its attrs disagree with its value); can't replay it")
        result, schedule = self.result, self.plan.config.schedule()
        end = schedule.end_at(result.epoch)
        if end is None or not end.finished or end.stage != result.stage:
            ends = [(e.epoch, e.stage) for e in schedule.finished()]
            raise SwiprError(f"trial {self.number}: its best schedule should end after epoch {result.epoch} (stage "
                             f"{result.stage}), but its plan finishes schedules only at (epoch, stage) {ends}; "
                             f"can't replay it")
        if self.epochs_run is not None and self.epochs_run <= result.epoch:
            raise SwiprError(f"trial {self.number}: its best schedule ends after epoch {result.epoch}, but it ran "
                             f"{self.epochs_run} epochs; can't replay it")
        return self.plan.config.finished_run_at(result.epoch)


# --- writing ----------------------------------------------------------------------------------

def write_plan(trial: optuna.Trial, plan: Plan) -> None:
    set_system_attr(trial, PLAN_ATTR, plan.to_json())


def write_result(trial: optuna.Trial, result: Result) -> None:
    """The result, with its accuracy (3 decimals, as every view prints it) as the user attr people see in
    Optuna's tables and the dashboard's, and its AUC beside the other attributes (trial_attrs)."""
    set_system_attr(trial, RESULT_ATTR, result.to_json())
    if result.accuracy is not None:
        set_attr(trial, "val_accuracy", round(result.accuracy, 3))
    if result.roc_auc is not None:
        set_attr(trial, "val_roc_auc", result.roc_auc)


def result_of(record, targets: Sequence[int] | np.ndarray) -> Result:
    """The Result of an epoch record (swipr_core.train.run.EpochRecord, or its dict) that ends a
    finished schedule, scored from the validation predictions it kept."""
    fields: dict = record if isinstance(record, dict) else vars(record)
    get = fields.get
    probs = get("valid_probs")
    scores: dict = {}
    if probs is not None and len(probs) == len(targets):
        scores = {"roc_auc": roc_auc(probs, targets), "confusion": confusion_counts(probs, targets),
                  "majority_accuracy": majority_accuracy(targets), "n_valid": len(targets)}
    return Result(epoch=int(fields["epoch"]), n_cycles=int(get("finishes", 0)), stage=int(get("stage", 1)),
                  val_loss=float(fields["valid_loss"]), accuracy=float(fields["accuracy"]), **scores)


def best_finished_record(history: Sequence[Any]) -> Any:
    """The epoch record of the best finished schedule in `history` (records or dicts), or None."""
    def get(record, key):
        return record.get(key, 0) if isinstance(record, dict) else getattr(record, key, 0)

    best = best_finished([get(r, "valid_loss") for r in history], [get(r, "finishes") for r in history])
    return None if best is None else history[best[0]]


# --- reading ----------------------------------------------------------------------------------

def record_of(trial: optuna.trial.FrozenTrial, head_epochs: int = 1) -> TrialRecord:
    """The trial's record: as written, or rebuilt from an older trial's user attrs (`head_epochs`:
    the study file's, for an old trial that recorded none)."""
    attrs, system = attrs_of(trial), trial.system_attrs
    epochs = attrs.get("epochs")
    epochs_run = int(epochs) if isinstance(epochs, int) else None
    if PLAN_ATTR in system:
        plan = Plan.from_json(system[PLAN_ATTR])
        result = Result.from_json(system[RESULT_ATTR]) if RESULT_ATTR in system else None
        return TrialRecord(trial.number, trial.state.name, trial.value, plan, result, epochs_run)
    if "seed" not in attrs:   # not run by `swipr study run` (or never started)
        return TrialRecord(trial.number, trial.state.name, trial.value, None, None, epochs_run)
    return TrialRecord(trial.number, trial.state.name, trial.value, _legacy_plan(trial, head_epochs),
                       _legacy_result(trial), epochs_run, legacy=True)


def _legacy_plan(trial: optuna.trial.FrozenTrial, head_epochs: int) -> Plan | None:
    """The plan of a trial written before the record, from its params and user attrs; None where
    they make no run (the views then show what they have)."""
    attrs = attrs_of(trial)
    try:
        first, second, _ = _legacy_params(trial)
        head = _legacy_head_epochs(first, second, attrs.get("planned_epochs"), head_epochs)
        config = TrainConfig(**first, head_epochs=head, seed=int(attrs["seed"]),
                             stage2=StageConfig(**second) if second is not None else None)
    except (SwiprError, FieldError, TypeError, ValueError, KeyError):
        return None
    return Plan(config=config, model=attrs.get("model"), cache_px=attrs.get("cache_px"),
                finding={"lr": attrs[LR_ATTR], "suggestion": attrs.get(FINDER_LR_ATTR)} if LR_ATTR in attrs else None,
                n_cycles_mode=attrs.get("n_cycles_mode"), prune_at=attrs.get("prune_at"),
                data_fingerprint=attrs.get("data_fingerprint"), cpu_threads=attrs.get("cpu_threads"),
                study_file_sha256=attrs.get("study_file_sha256"))


def _legacy_params(trial: optuna.trial.FrozenTrial) -> tuple[dict, dict | None, bool]:
    """(stage 1's params, stage 2's or None, nested) as an older trial ran them."""
    attrs = attrs_of(trial)
    nested = BUDGET_ATTR in attrs and (STAGE2_FIRST_EPOCH_ATTR in attrs or "n_cycles" not in trial.params)
    two_stage = STAGE2_FIRST_EPOCH_ATTR in attrs
    missing = [key for key in STAGE_KEYS if key not in trial.params
               and not (key == "n_cycles" and nested and not two_stage) and not (key == "lr" and LR_ATTR in attrs)]
    if missing:
        raise SwiprError(f"trial {trial.number}: has no params {', '.join(missing)}")
    first = {key: trial.params[key] for key in STAGE_KEYS if key in trial.params}
    if LR_ATTR in attrs:   # the lr came from the [space] lr finder
        first["lr"] = attrs[LR_ATTR]
    second = {key: trial.params.get(stage2_name(key), first[key]) for key in STAGE_KEYS} if two_stage else None
    if nested:
        cycles = {"n_cycles": int(attrs[BUDGET_ATTR]), "finish_at": tuple(attrs.get(FINISH_AT_ATTR, ()))}
        if second is None:
            first.update(cycles)
        else:
            second["n_cycles"] = cycles["n_cycles"]
            first["finish_at"] = cycles["finish_at"]
    return first, second, nested


def _legacy_head_epochs(first: dict, second: dict | None, planned, head_epochs: int) -> int:
    """The head epochs an older trial ran with, from the epochs it planned (each
    frozen_then_unfrozen stage has one warm-up)."""
    stages = [first] + ([second] if second is not None else [])
    warm_ups = sum(stage["freeze"] == "frozen_then_unfrozen" for stage in stages)
    if not warm_ups or not isinstance(planned, int):
        return head_epochs
    sgdr = sum(sgdr_epochs(stage["n_cycles"], stage["cycle_len"], stage["cycle_mult"]) for stage in stages)
    return (planned - sgdr) // warm_ups


def _legacy_result(trial: optuna.trial.FrozenTrial) -> Result | None:
    """An older trial's best finished schedule, from the attrs it kept. Its accuracy was the
    best schedule's already; its AUC was the last epoch's, so it is kept only where they agree."""
    attrs = attrs_of(trial)
    losses, epochs = attrs.get("val_loss_by_epoch"), attrs.get("epochs", attrs.get("planned_epochs"))
    if trial.value is None or not isinstance(epochs, int) or epochs < 1:
        return None
    epoch = int(attrs.get(BEST_EPOCH_ATTR, epochs - 1))
    if isinstance(losses, list) and not (epoch < len(losses) and losses[epoch] == trial.value):
        return None   # its attrs and its value disagree: no result to show or replay
    stage = int(attrs.get(BEST_STAGE_ATTR, 2 if STAGE2_FIRST_EPOCH_ATTR in attrs else 1))
    return Result(epoch=epoch, n_cycles=int(attrs.get(BEST_N_CYCLES_ATTR, attrs.get(BUDGET_ATTR, 0) or 0)),
                  stage=stage, val_loss=float(trial.value), accuracy=attrs.get("val_accuracy"),
                  roc_auc=attrs.get("val_roc_auc") if epoch == epochs - 1 else None,
                  majority_accuracy=attrs.get("majority_accuracy"))


# --- the config as JSON ---------------------------------------------------------------------------

def config_json(config: TrainConfig) -> dict:
    data = asdict(config)
    data["finish_at"] = list(config.finish_at)
    return data


def config_from_json(data: dict) -> TrainConfig:
    values = dict(data)
    stage2 = values.pop("stage2", None)
    values["finish_at"] = tuple(values.get("finish_at") or ())
    return TrainConfig(**values, stage2=StageConfig(**stage2) if stage2 else None)


def _finite_or_none(value):
    """NaN (an AUC of one class) is not JSON; None says 'not known' everywhere."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


__all__ = ["PLAN_ATTR", "RESULT_ATTR", "Plan", "Result", "TrialRecord", "best_finished_record", "config_from_json",
           "config_json", "record_of", "result_of", "write_plan", "write_result"]
