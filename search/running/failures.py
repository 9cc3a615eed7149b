"""A trial that fails with an ordinary error fails alone: one line on the terminal, the
traceback in the study's error log, and the run goes on. Several failures in a row stop the
run with one line saying why: the same error would most likely fail every trial after them.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import re
import sys
import traceback
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from objectives.optuna_compat import OPTIMIZE_LOGGER
from objectives.pausing import TrialPaused
from objectives.trial_attrs import attrs_of, set_attr
from search.study.guarded import StorageFailed
from search.studyfile import StudyFile
from swipr_core.errors import SwiprError

_VALUE_NONE = re.compile(r"Trial \d+ failed with value None\.")


class TrialFailed(Exception):
    """The one exception type `study.optimize` catches: a trial's error, already reported."""


def error_log(study_file: StudyFile) -> Path:
    return study_file.path.parent / f"{study_file.path.stem}.errors.log"


_unwritable_logs: set[Path] = set()   # said once per process: the log can't be written


def _append(log: Path, heading: str, text: str) -> None:
    """Add an entry to the error log. A log that can't be written (a full disk, a read-only
    folder) must not turn one failed trial into a crash, here or inside a logging filter: it is
    said once, and the trial's one line still names its error."""
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"--- {stamp} {heading}\n{text.rstrip()}\n")
    except OSError as error:
        if log not in _unwritable_logs:
            _unwritable_logs.add(log)
            print(f"swipr: can't write the error log {log}: {error.strerror or error}; "
                  f"tracebacks are not kept", file=sys.stderr, flush=True)


class TracebacksToLog(logging.Filter):
    """On Optuna's optimize logger: a failed trial's traceback goes to the log, not the terminal
    (the worker has printed its one line already)."""

    def __init__(self, log: Path):
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] in (TrialFailed, StorageFailed):
            return False   # FailureGuard has logged the real error; the run's last line names the storage's
        if record.exc_info:
            _append(self.log, record.getMessage(), "".join(traceback.format_exception(*record.exc_info)))
            return False
        # Optuna follows each error with "Trial N failed with value None.": the same news again.
        return not _VALUE_NONE.fullmatch(record.getMessage())


def route_tracebacks(log: Path) -> None:
    """From here on, Optuna's failed-trial tracebacks in this process go to `log`."""
    logger = logging.getLogger(OPTIMIZE_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, TracebacksToLog)]:
        logger.removeFilter(old)
    logger.addFilter(TracebacksToLog(log))


def describe_error(error: BaseException) -> str:
    """One line: the error's type and first line, or where it was raised when it says nothing
    (a bare `assert` in a library)."""
    text = (str(error).splitlines() or [""])[0].strip()
    if not text and error.__traceback__ is not None:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        text = f"at {Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno} ({frame.line})"
    return f"{type(error).__name__}: {text}"


class FailureGuard:
    """Wraps a trial objective: an ordinary error becomes FAIL with its reason, said once."""

    def __init__(self, objective, log: Path):
        self.objective, self.log = objective, log

    def __call__(self, trial: optuna.Trial):
        try:
            return self.objective(trial)
        except StorageFailed as error:   # the run stops for it; the trial's record says why, if it can
            with contextlib.suppress(StorageFailed):
                set_attr(trial, "fail_reason", str(error))
            raise
        except (optuna.TrialPruned, TrialPaused, SwiprError, KeyboardInterrupt):
            raise
        except UpdateFinishedTrialError:   # nothing more may be written to the trial
            print(f"trial {trial.number}: another worker failed it as stale while it ran (its heartbeat was "
                  f"later than [study] grace_period); its retry runs it again, this worker goes on", flush=True)
            raise TrialFailed("finished elsewhere") from None
        except Exception as error:  # noqa: BLE001 - any bug in a trial fails that trial only
            reason = describe_error(error)
            if "fail_reason" not in attrs_of(trial):   # the OOM guard has written a better one
                set_attr(trial, "fail_reason", reason)
            _append(self.log, f"trial {trial.number} failed", traceback.format_exc())
            print(f"trial {trial.number}: failed: {reason} (the full error is in {self.log})", flush=True)
            raise TrialFailed(reason) from None


class FailureStreak:
    """A study callback that stops the run after `limit` failed trials in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.last = limit, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.last = attrs_of(trial).get("fail_reason", "")
        if self.in_a_row >= self.limit:
            study.stop()

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit

    def message(self, log: Path) -> str:
        trials = "1 trial" if self.in_a_row == 1 else f"{self.in_a_row} trials in a row"   # max_failures_in_a_row = 1
        return (f"{trials} failed (the last: {self.last}); stopping the run. "
                f"Their errors are in {log}; [study] max_failures_in_a_row sets how many are tolerated")
