"""A worker's stop flag: set by SIGTERM from the supervisor, read by the trial it runs.

The flag is passed explicitly to what reads it (the objective's resume wrapper, the guarded
ask). A stop request that lands while a trial trains raises KeyboardInterrupt there, once;
outside a trial (Optuna's bookkeeping) it is only recorded, and read at the next check.
"""
from __future__ import annotations


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
