"""What `swipr study run` shows while it works: two progress bars, then a summary table.

On a terminal, tqdm draws one bar for the study's trials and one for the running trial's
epochs, each labelled with the trial number and its params. Elsewhere (CI logs, pipes) a
bar redrawn with carriage returns is noise, so the same events are plain lines instead.
"""
from __future__ import annotations

import sys

import torch
from optuna.trial import TrialState
from tqdm import tqdm   # not tqdm.auto: this is a terminal, never a notebook widget

from search.study.open import best_or_none
from search.views.format import describe_trial, params_text, short
from search.views.gains import gains_rows, search_gains


def varied_params(trial) -> dict:
    """The trial's params less those the space holds fixed (one choice): what tells trials apart."""
    fixed = {name for name, dist in getattr(trial, "distributions", {}).items()
             if len(getattr(dist, "choices", (0, 1))) == 1}
    return {k: v for k, v in trial.params.items() if k not in fixed}


# Bars of a fixed width, so long params shorten the text after them, never the bar itself.
STUDY_BAR = "study {n_fmt}/{total_fmt} trials |{bar:20}| {elapsed}<{remaining}{postfix}"
TRIAL_BAR = "{desc} {n_fmt}/{total_fmt} epochs |{bar:20}| {elapsed}<{remaining}{postfix}"


class StudyProgress:
    """Objective hooks (on_start, on_epoch, on_result, on_stop) plus an Optuna study callback."""

    def __init__(self, n_trials: int, stream=None, bars: bool | None = None):
        self.stream = stream or sys.stdout
        self.bars = self.stream.isatty() if bars is None else bars
        self.n_trials = n_trials
        self.trial_bar = self.epoch_bar = None
        self.finished: list[int] = []   # numbers of the trials this run finished
        self.planned = 0   # epochs of the running trial
        self.params = ""
        self.best = ""     # ", best <value> (trial <n>)" once a trial has completed
        if self.bars:
            self.trial_bar = tqdm(total=n_trials, position=0, file=self.stream, dynamic_ncols=True,
                                  bar_format=STUDY_BAR)

    def write(self, line: str) -> None:
        """A line that stays above the bars (or just a line, without bars)."""
        if self.bars:
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    # objective hooks

    def on_start(self, trial, config) -> None:
        label = f"trial {trial.number}  {params_text(trial.params)}"
        self.planned = config.epochs
        self.params = params_text(varied_params(trial))
        if self.bars:
            self.trial_bar.set_postfix_str(f"running trial {trial.number}{self.best}")
            if self.epoch_bar is not None:
                self.epoch_bar.close()
            self.epoch_bar = tqdm(total=config.epochs, desc=f"trial {trial.number}", position=1, leave=False,
                                        file=self.stream, dynamic_ncols=True, bar_format=TRIAL_BAR)
            self.epoch_bar.set_postfix_str(self.params)
        else:
            self.write(f"{label}: started, {config.epochs} epochs")

    def on_epoch(self, trial, record) -> None:
        figures = (f"{record.phase} train_loss {record.train_loss:.4f} val_loss {record.valid_loss:.4f} "
                   f"acc {record.accuracy:.3f}{' (cycle end)' if record.cycle_end else ''}")
        if self.bars and self.epoch_bar is not None:
            # figures first: they change; the params are on the trial's line when it ends
            self.epoch_bar.set_postfix_str(f"val_loss {record.valid_loss:.4f} acc {record.accuracy:.3f} | "
                                           f"{self.params}", refresh=False)
            self.epoch_bar.update(1)
        elif not self.bars:
            self.write(f"trial {trial.number} epoch {record.epoch + 1}/{self.planned}: {figures}")

    def on_result(self, trial, result) -> None:
        self._close_epoch_bar()

    def on_stop(self, trial, history, error) -> None:
        self._close_epoch_bar()

    def _close_epoch_bar(self) -> None:
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.epoch_bar = None

    # Optuna study callback: after each trial is stored

    def __call__(self, study, trial) -> None:
        self.finished.append(trial.number)
        self.write(describe_trial(trial))
        best = best_or_none(study)
        if best is not None:
            self.best = f", best {best.value:.4f} (trial {best.number})"
        if self.bars:
            self.trial_bar.set_postfix_str(self.best.lstrip(", "), refresh=False)
            self.trial_bar.update(1)

    def close(self) -> None:
        self._close_epoch_bar()
        if self.trial_bar is not None:
            self.trial_bar.close()
            self.trial_bar = None


def hours_label(device: str) -> str:
    """GPU-hours when the trials ran on CUDA, else CPU-hours."""
    if device == "auto":
        return "GPU-hours" if torch.cuda.is_available() else "CPU-hours"
    return "GPU-hours" if device.startswith("cuda") else "CPU-hours"


def summary_table(study, device: str, this_run=()) -> str:
    """The end-of-run table: best trial, how it compares with the notebook's runs, trials by
    state, epochs pruning saved, compute spent in the whole study and in the trials numbered
    `this_run`."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(1 for t in trials if t.state == state)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    label = hours_label(device)

    def hours(ts) -> float:
        return sum(t.duration.total_seconds() for t in ts if t.duration is not None) / 3600

    this_run = [t for t in trials if t.number in set(this_run)]
    best = best_or_none(study)
    rows = []
    if best is not None:
        rows += [("best trial", str(best.number)), ("best val_loss", f"{best.value:.4f}")]
        rows += [(f"  {k}", short(v)) for k, v in best.params.items()]
        accuracy = best.user_attrs.get("val_accuracy")
        if accuracy is not None:
            rows.append(("best val_accuracy", f"{accuracy:.4f}"))
    else:
        rows.append(("best trial", "none completed yet"))
    rows += gains_rows(study, search_gains(study))
    rows += [
        ("trials", f"{len(trials)} ({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
                   f"{counts[TrialState.FAIL]} failed)"),
        (label, f"{hours(trials):.4f} in the study, {hours(this_run):.4f} in this run ({len(this_run)} trials)"),
    ]
    width = max(len(key) for key, _ in rows)
    rule = "-" * (width + 2 + max(len(value) for _, value in rows))
    lines = [f"study '{study.study_name}'", rule] + [f"{key:<{width}}  {value}" for key, value in rows] + [rule]
    return "\n".join(lines)
