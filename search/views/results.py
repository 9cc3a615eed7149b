"""A trial's result as people read it, from its record (objectives.record): the one place the
note, `study status`, `study best`, the run's summary and the report take "the value's
accuracy" or "the value's AUC" from. A figure of the trial's last epoch is shown only where it
differs from the result's epoch, and always labelled as the last epoch's.
"""
from __future__ import annotations

from objectives.judging import LOSSES_ATTR
from objectives.record import TrialRecord, record_of
from objectives.trial_attrs import attrs_of


def schedule_text(record: TrialRecord) -> str:
    """'stage 1's 3-cycle schedule, after epoch 6 of 10 run': which finished schedule the value is."""
    result = record.result
    if result is None:
        return "no finished schedule"
    two_stage = record.plan is not None and record.plan.config.stage2 is not None
    if two_stage and result.stage == 1:
        what = "stage 1's end (stage 2 skipped)"
    elif two_stage:
        what = f"stage 2's {result.n_cycles}-cycle schedule"
    else:
        what = f"its {result.n_cycles}-cycle schedule" if result.n_cycles else "its schedule"
    ran = f" of {record.epochs_run} run" if record.epochs_run is not None else ""
    return f"{what}, after epoch {result.epoch}{ran}"


def result_metrics(record: TrialRecord) -> dict:
    """{label: value} of the value's model: what a note's metric table lists, in order."""
    result = record.result
    if result is None:
        return {}
    metrics: dict = {"val_loss": record.value if record.value is not None else result.val_loss,
                     "val_accuracy": result.accuracy, "val_roc_auc": result.roc_auc}
    if result.confusion:
        c = result.confusion
        metrics["confusion (tn fp fn tp at 0.5)"] = f"{c['tn']} {c['fp']} {c['fn']} {c['tp']}"
    return {key: value for key, value in metrics.items() if value is not None}


def last_epoch_loss(trial, record: TrialRecord) -> tuple[int, float] | None:
    """(epoch, raw val_loss) of the trial's last epoch, where that is not its result's epoch."""
    losses = attrs_of(trial).get(LOSSES_ATTR)
    if not losses or (record.result is not None and record.result.epoch == len(losses) - 1):
        return None
    return len(losses) - 1, losses[-1]


def accuracy_of(trial) -> float | None:
    """The value's accuracy: its result's; for a trial with neither record nor epochs (added by
    hand, not run by swipr), the `val_accuracy` it carries."""
    result = record_of(trial).result
    return result.accuracy if result is not None else attrs_of(trial).get("val_accuracy")


def auc_of(trial) -> float | None:
    """The value's ROC AUC, as accuracy_of."""
    result = record_of(trial).result
    return result.roc_auc if result is not None else attrs_of(trial).get("val_roc_auc")
