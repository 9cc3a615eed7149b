"""How many CPU threads torch uses in a trial: chosen for the machine, not torch's default.

torch's default is a thread per core. Beside the loader's prefetch thread, other trials or
other work on the machine, those threads outnumber the free cores, and torch's threads, which
wait for one another at every operator, end up waiting on one that is descheduled: on a
loaded 2-core machine two threads made the CPU loader about 10x slower than one (56 vs 607
images/s). So a trial gets the cores this process may run on (its CPU affinity,
which taskset and a container's cpuset narrow) shared among the trials that run at once,
less one core for the loader's prefetch thread where a trial has more than one.

Set by hand: SWIPR_CPU_THREADS=N (every trial), else OMP_NUM_THREADS=N (the variable torch
itself reads). docs/scale.md says when to.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from swipr_core.errors import SwiprError

THREADS_VARIABLE = "SWIPR_CPU_THREADS"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows: no affinity call
        return os.cpu_count() or 1


def cpu_threads(trials_at_once: int = 1, environ: Mapping[str, str] | None = None,
                cores: int | None = None) -> int:
    """Torch CPU threads for each of `trials_at_once` trials on this machine."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(THREADS_VARIABLE, "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise SwiprError(f"{THREADS_VARIABLE} must be a whole number of threads, 1 or more, got {chosen!r}")
        return int(chosen)
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:   # torch would warn about, and ignore, anything else
        return int(omp)
    share = (usable_cores() if cores is None else cores) // max(1, trials_at_once)
    return max(1, share - 1 if share > 1 else share)
