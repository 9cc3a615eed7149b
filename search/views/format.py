"""How trials and values are written for people: one formatting for lines, tables and notes."""
from __future__ import annotations

import math

import optuna

from objectives.judging import DIVERGED_ATTR
from objectives.pausing import paused_after
from objectives.trial_attrs import attrs_of


def count(n: int, thing: str, plural: str | None = None) -> str:
    """'1 trial', '2 trials': a number and its noun in the right number (`plural` where it isn't thing + s)."""
    return f"{n} {thing if n == 1 else plural or thing + 's'}"


def short(value) -> str:
    """A param or metric in a line: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def fmt(value) -> str:
    """A metric in a table: floats to 4 significant digits, nan spelled out."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def params_text(params: dict) -> str:
    return " ".join(f"{k}={short(v)}" for k, v in params.items())


def describe_trial(trial: optuna.trial.FrozenTrial) -> str:
    value = f" val_loss {trial.value:.4f}" if trial.value is not None else ""
    attrs = attrs_of(trial)
    epochs = attrs.get("epochs")
    steps = f" after {epochs} epoch{'s' if epochs != 1 else ''}" if epochs else ""
    diverged = " (diverged: val_loss nan)" if DIVERGED_ATTR in attrs else ""
    cycle = paused_after(trial)
    state = f"PAUSED after cycle {cycle}" if cycle is not None else trial.state.name
    return f"trial {trial.number} {state}{value}{steps}{diverged}  {params_text(trial.params)}"


def accuracy_text(accuracy: float | None, baseline: float | None, majority_class: str = "") -> str:
    """An accuracy with the majority baseline beside it: on data that is 81% NO, 0.81 is
    "always NO", and a bare 0.81 reads as a good model."""
    if accuracy is None:
        return "-"
    text = f"{accuracy:.3f}"
    if baseline is None:
        return text
    always = f", always {majority_class}" if majority_class else ""
    verdict = "" if accuracy > baseline + 1e-9 else ": no better than the baseline"
    return f"{text} (majority baseline {baseline:.3f}{always}{verdict})"
