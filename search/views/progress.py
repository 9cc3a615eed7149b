"""What `swipr study run` shows while it works: fastai's per-epoch table, two progress bars,
then a summary table.

Every epoch is a row of search.views.epoch_table, as fastai's progress table prints it. On a
terminal the rows stay on screen above two tqdm bars, one for the study's trials and one for
the running trial's epochs, each labelled with the trial number and its params. Elsewhere
(CI logs, pipes) a bar redrawn with carriage returns is noise, so there are only the lines.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from optuna.trial import TrialState
from tqdm import tqdm  # not tqdm.auto: this is a terminal, never a notebook widget

from objectives.judging import interrupted
from objectives.pausing import paused_after
from objectives.record import record_of
from search.study.data_record import majority_baseline
from search.study.open import best_or_none
from search.views import epoch_table
from search.views.format import accuracy_text, count, describe_trial, params_text, short
from search.views.gains import gains_rows, search_gains
from search.views.results import accuracy_of, auc_of, schedule_text
from search.views.stages import stage_spans, stage_start_line


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

    def __init__(self, n_trials: int, stream=None, bars: bool | None = None, echo: Callable[[str], None] | None = None):
        self.stream = stream or sys.stdout
        self.echo = echo   # where lines go without bars (default: printed to the stream)
        self.bars = False if echo is not None else self.stream.isatty() if bars is None else bars
        self.n_trials = n_trials
        # tqdm bars on a terminal, else None (tqdm ships no types: Any)
        self.trial_bar: Any = None
        self.epoch_bar: Any = None
        self.finished: list[int] = []   # numbers of the trials this run finished
        self.planned = 0   # epochs of the running trial
        self.later_stages: list = []   # its stages after the first, each announced as its first epoch comes
        self.params = ""
        self.best = ""     # ", best <value> (trial <n>)" once a trial has completed
        if self.bars:
            self.trial_bar = tqdm(total=n_trials, position=0, file=self.stream, dynamic_ncols=True,
                                  bar_format=STUDY_BAR)

    def write(self, line: str) -> None:
        """A line that stays above the bars (or just a line, without bars)."""
        if self.bars:
            tqdm.write(line, file=self.stream)
        elif self.echo is not None:
            self.echo(line)
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
        last = f", epochs 0-{config.epochs - 1}" if config.epochs > 1 else ", epoch 0"
        spans = stage_spans(config)
        if spans:
            last += " (" + ", ".join(f"stage {s.stage} {s.epochs_text()}" for s in spans) + ")"
        self.later_stages = spans[1:]
        self.write(f"{label}: started{last}{_baseline_text(trial)}")
        self.write(epoch_table.header())   # above the bars on a terminal: rows stay, as fastai's table

    def on_stage2(self, trial, config) -> None:
        """Stage 2's params are drawn as the run reaches it: announce it with them."""
        self.later_stages = stage_spans(config)[1:]
        if self.epoch_bar is not None and config.epochs != self.planned:
            self.epoch_bar.total = self.planned = config.epochs
            self.epoch_bar.refresh()

    def on_epoch(self, trial, record) -> None:
        if self.bars and self.epoch_bar is not None:
            # figures first: they change; the params are on the trial's line when it ends
            self.epoch_bar.set_postfix_str(f"val_loss {record.valid_loss:.4f} acc {record.accuracy:.3f} | "
                                           f"{self.params}", refresh=False)
            self.epoch_bar.update(1)
        if self.later_stages and record.epoch >= self.later_stages[0].first_epoch:
            self.write(stage_start_line(self.later_stages.pop(0)))
        self.write(epoch_table.row(trial.number, record))

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


class Steps:
    """Progress through `total` steps of one long task (`swipr fit`'s epochs, `swipr lr-find`'s
    batches): a tqdm bar on a terminal; elsewhere a plain line at each of `lines` even shares of
    the steps (none with 0), so a pipe or CI log gets a few lines, not a redrawn bar."""

    def __init__(self, total: int, label: str, unit: str, lines: int = 4, stream=None, bars: bool | None = None):
        self.stream = stream or sys.stdout
        self.bars = self.stream.isatty() if bars is None else bars
        self.total, self.label, self.unit, self.done = total, label, unit, 0
        self.marks = {max(1, round(total * k / lines)) for k in range(1, lines + 1)} if lines and total else set()
        # redrawn every step (mininterval 0): a step is a batch or an epoch, never a hot loop
        self.bar: Any = (tqdm(total=total, file=self.stream, dynamic_ncols=True, leave=False, mininterval=0,
                              bar_format=f"{label} {{n_fmt}}/{{total_fmt}} {unit} |{{bar:20}}| "
                                         f"{{elapsed}}<{{remaining}}{{postfix}}") if self.bars else None)

    def update(self, postfix: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
        elif self.done in self.marks:
            print(f"{self.label}: {count(self.done, self.unit.rstrip('s'))} of {self.total}"
                  f"{', ' + postfix if postfix else ''}", file=self.stream, flush=True)

    def above(self, echo):
        """`echo` that prints its line above the bar (the bar cleared and redrawn round it)."""
        def write(line: str) -> None:
            if self.bar is None:
                echo(line)
                return
            with tqdm.external_write_mode(file=self.stream):
                echo(line)
        return write

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def trial_lines(echo: Callable[[str], None] | None = None) -> StudyProgress:
    """An objective hook for a trial run beside others (`--workers`, Dask): its start, stages and
    the per-epoch table's rows as plain lines, no bars (several processes share the terminal).
    Each row starts with the trial's number, so interleaved trials stay apart. `echo`: where
    the lines go (default: printed)."""
    return StudyProgress(1, bars=False, echo=echo)


def _baseline_text(trial) -> str:
    """'; majority baseline accuracy 0.806': what the accuracy column must beat."""
    study = getattr(trial, "study", None)
    baseline, majority_class = majority_baseline(study) if study is not None else (None, "")
    if baseline is None:
        return ""
    return f"; majority baseline accuracy {baseline:.3f}" + (f" (always {majority_class})" if majority_class else "")


def hours_label(device: str) -> str:
    """What the hours row adds up: each trial's wall-clock time, start to end, on its device.
    Not CPU time: a trial waiting on a loaded machine counts its waits too."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"trial hours ({'GPU' if device.startswith('cuda') else 'CPU'}, wall clock)"


@dataclass(frozen=True)
class Budget:
    """What a run was asked for, to say when its --timeout cut it short."""
    n_trials: int
    timeout: float | None = None


def budget_rows(budget: Budget | None, ran: int) -> list[tuple[str, str]]:
    if budget is None or budget.timeout is None or ran >= budget.n_trials:
        return []
    return [("stopped early", f"--timeout {budget.timeout:g} s reached: {ran} of the "
                              f"{count(budget.n_trials, 'trial')} asked for ran")]


def _best_rows(study) -> list[tuple[str, str]]:
    best = best_or_none(study)
    if best is None:
        return [("best trial", "none completed yet")]
    record = record_of(best)
    value_is = f" ({schedule_text(record)})" if record.result is not None else ""
    rows = [("best trial", str(best.number)), ("best val_loss", f"{best.value:.4f}{value_is}")]
    rows += [(f"  {k}", short(v)) for k, v in best.params.items()]
    accuracy, auc = accuracy_of(best), auc_of(best)
    if accuracy is not None:
        rows.append(("best val_accuracy", accuracy_text(accuracy, *majority_baseline(study))))
    if auc is not None:
        rows.append(("best val_roc_auc", f"{auc:.4f}"))
    return rows


def summary_table(study, device: str, this_run=(), budget: Budget | None = None) -> str:
    """The end-of-run table: best trial, how it compares with the notebook's pipeline, trials by
    state, epochs pruning saved, the hours the trials took in the whole study and in the trials
    numbered `this_run`, and whether `budget`'s --timeout cut the run short."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(1 for t in trials if t.state == state)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING)}

    def hours(ts) -> float:
        return sum(t.duration.total_seconds() for t in ts if t.duration is not None) / 3600

    this_run = [t for t in trials if t.number in set(this_run)]
    paused = sum(1 for t in trials if paused_after(t) is not None)   # WAITING in Optuna: scheduler = "promote"
    queued = counts[TrialState.WAITING] - paused
    waiting = (f", {queued} waiting" if queued else "") + (f", {paused} paused" if paused else "")
    stopped = sum(1 for t in trials if t.state == TrialState.FAIL and interrupted(t))   # FAIL in Optuna, not failed
    stopped_text = f", {stopped} interrupted" if stopped else ""
    rows = _best_rows(study) + gains_rows(study, search_gains(study))
    rows += [
        ("trials", f"{len(trials)} ({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
                   f"{counts[TrialState.FAIL] - stopped} failed{stopped_text}{waiting})"),
        (hours_label(device), f"{hours(trials):.4f} in the study, {hours(this_run):.4f} in this run "
                              f"({count(len(this_run), 'trial')})"),
    ]
    rows += budget_rows(budget, len(this_run))
    width = max(len(key) for key, _ in rows)
    # as wide as the rows, but never wider than the terminal (80 columns in a pipe): long values wrap there
    rule = "-" * min(width + 2 + max(len(value) for _, value in rows), shutil.get_terminal_size().columns)
    lines = [f"study '{study.study_name}'", rule] + [f"{key:<{width}}  {value}" for key, value in rows] + [rule]
    return "\n".join(lines)
