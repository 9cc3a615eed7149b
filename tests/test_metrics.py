"""Scores in one place: ROC AUC, the majority baseline, confusion counts."""
import math

import numpy as np
import pytest

from swipr_core.train.metrics import classification_report, confusion_counts, majority_accuracy, roc_auc


def test_confusion_counts_answer_yes_at_or_above_the_threshold():
    probs = np.array([0.1, 0.6, 0.5, 0.4, 0.9, 0.2])
    targets = np.array([0, 0, 1, 1, 1, 0])
    # 0.5 counts as YES: tp at 0.5 and 0.9, fp at 0.6, fn at 0.4, tn at 0.1 and 0.2
    assert confusion_counts(probs, targets, 0.5) == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert confusion_counts(probs, targets, 0.95) == {"tn": 3, "fp": 0, "fn": 3, "tp": 0}


def test_roc_auc_and_majority_baseline():
    assert roc_auc([0.2, 0.8, 0.3, 0.9], [0, 1, 0, 1]) == 1.0
    assert roc_auc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(roc_auc([0.2, 0.8], [1, 1]))          # one class: nothing to rank
    assert majority_accuracy(np.array([0, 0, 0, 1])) == 0.75
    assert majority_accuracy([1, 1, 1, 0, 0]) == pytest.approx(0.6)
    assert math.isnan(majority_accuracy([]))


def test_the_report_uses_the_same_scores():
    probs, targets = np.array([0.1, 0.7, 0.4, 0.8, 0.3]), np.array([0, 1, 1, 0, 0])
    report = classification_report(probs, targets, 0.5)
    assert report["roc_auc"] == roc_auc(probs, targets)
    assert report["majority_accuracy"] == majority_accuracy(targets) == pytest.approx(0.6)
