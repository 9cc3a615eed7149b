"""Scores for a skewed yes/no problem, and the decision threshold picked on validation.

About 80% of the photos are NO, so accuracy alone flatters a model that always says NO: every
report carries the majority-class baseline beside it, plus threshold-free scores (ROC AUC,
PR AUC) and balanced accuracy at the chosen threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from swipr_core.errors import SwiprError

DEFAULT_THRESHOLD = 0.5   # when validation has one class only, nothing better can be chosen


@dataclass(frozen=True)
class Threshold:
    value: float
    rule: str      # how it was chosen, in words, for the manifest and the report


def _both_classes(targets: np.ndarray) -> bool:
    return len(np.unique(targets)) == 2


def roc_auc(probs, targets) -> float:
    """ROC AUC of P(YES) against the targets; NaN when they hold one class only."""
    targets = np.asarray(targets)
    return float(roc_auc_score(targets, np.asarray(probs))) if _both_classes(targets) else math.nan


def majority_accuracy(targets) -> float:
    """The accuracy of always answering the commoner class; NaN when there are no targets."""
    targets = np.asarray(targets, dtype=np.float64)
    if len(targets) == 0:
        return math.nan
    return float(max(targets.mean(), 1 - targets.mean()))


def confusion_counts(probs, targets, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """{"tn", "fp", "fn", "tp"}: answers YES when P(YES) >= threshold, against targets (1 = YES)."""
    predicted = np.asarray(probs, dtype=np.float64) >= threshold
    actual = np.asarray(targets).astype(bool)
    return {"tn": int(np.sum(~predicted & ~actual)), "fp": int(np.sum(predicted & ~actual)),
            "fn": int(np.sum(~predicted & actual)), "tp": int(np.sum(predicted & actual))}


def best_f1_threshold(probs: np.ndarray, targets: np.ndarray) -> Threshold:
    """The probability cut (YES when p >= cut) with the highest F1 for YES on validation."""
    if not _both_classes(targets):
        return Threshold(DEFAULT_THRESHOLD, "default 0.5 (validation has one class only)")
    precision, recall, cuts = precision_recall_curve(targets, probs)
    # The curve's last point (precision 1, recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.argmax(f1))
    return Threshold(float(cuts[best]), f"best F1 on validation ({f1[best]:.4f})")


def check_target_precision(target: float | None) -> None:
    """None (pick the best F1) or a precision strictly between 0 and 1."""
    if target is not None and not 0 < target < 1:
        raise SwiprError(f"--target-precision must be between 0 and 1, got {target}")


def precision_threshold(probs: np.ndarray, targets: np.ndarray, target: float) -> Threshold:
    """The lowest cut whose validation precision reaches `target`: the most YES answers
    that are still right that often. Unreachable: the most precise cut, said so in its rule."""
    check_target_precision(target)
    if not _both_classes(targets):
        return Threshold(DEFAULT_THRESHOLD, "default 0.5 (validation has one class only)")
    precision, _, cuts = precision_recall_curve(targets, probs)
    precision = precision[:-1]
    reached = np.flatnonzero(precision >= target)
    if len(reached):
        first = int(reached[0])   # cuts ascend: the first one that reaches it keeps the most recall
        return Threshold(float(cuts[first]), f"precision >= {target} on validation ({precision[first]:.4f})")
    best = int(np.argmax(precision))
    return Threshold(float(cuts[best]), f"precision {target} not reached on validation; "
                                        f"highest precision {precision[best]:.4f} instead")


def choose_threshold(probs: np.ndarray, targets: np.ndarray, target_precision: float | None = None) -> Threshold:
    if target_precision is None:
        return best_f1_threshold(probs, targets)
    return precision_threshold(probs, targets, target_precision)


def classification_report(probs: np.ndarray, targets: np.ndarray, threshold: float) -> dict:
    """Threshold-free scores, scores at `threshold`, and the majority-class baseline."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        raise SwiprError("validation split is empty: nothing to score the model on")
    both = _both_classes(targets)
    predicted = (probs >= threshold).astype(np.int64)
    positives = float(targets.mean())
    return {
        "n_valid": int(len(targets)),
        "valid_yes_fraction": positives,
        "roc_auc": roc_auc(probs, targets),
        "pr_auc": float(average_precision_score(targets, probs)) if both else math.nan,
        "threshold": float(threshold),
        "accuracy": float((predicted == targets).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(targets, predicted)) if both else math.nan,
        "precision": float(precision_score(targets, predicted, zero_division=0)),
        "recall": float(recall_score(targets, predicted, zero_division=0)),
        "f1": float(f1_score(targets, predicted, zero_division=0)),
        "accuracy_at_0.5": float(((probs >= 0.5) == targets).mean()),
        "majority_accuracy": majority_accuracy(targets),
        "majority_class": "YES" if positives > 0.5 else "NO",
    }


# P(right class) is floored here: an fp32 softmax can round to exactly 0, whose loss is infinite.
MIN_PROB = 1e-12


def image_log_losses(probs, targets) -> np.ndarray:
    """Each image's cross-entropy, -log P(its label), from P(YES): fastai's loss per image."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    right = np.where(targets, probs, 1 - probs)
    return -np.log(np.clip(right, MIN_PROB, 1.0))
