"""A worker's stop flag: set by SIGTERM from the supervisor, read by the trial it runs.

The flag is passed explicitly to what reads it (the objective's resume wrapper, the guarded
ask). A stop request that lands while a trial trains raises KeyboardInterrupt there, once;
outside a trial (Optuna's bookkeeping) it is only recorded, and read at the next check.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

# After a stop request (Ctrl-C, SIGTERM): how long a running trial gets to reach its next epoch and
# record itself before it is killed (a local process) or left to its retry (a Dask task).
STOP_WAIT_S = 60


class StopFlag:
    def __init__(self):
        self.requested = False
        self._in_trial = False

    def in_trial(self, flag: bool) -> None:
        """Marks the objective's span: a stop request interrupts a trial, not Optuna's bookkeeping."""
        self._in_trial = flag

    def on_signal(self, signum, frame) -> None:
        """The signal handler: the first request inside a trial interrupts it."""
        first = not self.requested
        self.requested = True
        if first and self._in_trial:
            raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a preempted machine, `kill`) stops this process as Ctrl-C does: the running
    trial is failed with one resumable retry, the image cache build cleans up after itself."""

    def on_term(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
