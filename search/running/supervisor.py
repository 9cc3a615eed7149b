"""Several worker processes on one study: slots, a fresh process per trial, signals.

Each slot (`--workers K`, or `--gpus 0,1 --trials-per-gpu K` with only its GPU visible) runs
its trials one after another, each in a FRESH process forked from a forkserver that has
already imported torch and fastai: GPU and host memory are given back to the system after
every trial, and a new process starts in well under a second. The storage URL travels in the
pickled task and the environment, never on a command line. Ctrl-C (or SIGTERM) asks every
trial process to stop once; Optuna records its trial FAIL and a retry is enqueued that resumes
from the trial's checkpoint. A process that ignores the request is killed after a while, and
the heartbeat fails and retries its trial.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait

import optuna
import torch

from search.running.promotion import Turn, next_turn
from search.running.stop import STOP_WAIT_S, StopFlag

# A trial process's exit status: its trial finished (complete or pruned), it failed, the
# process met bad input (a SwiprError: the next would too), or it was stopped by a signal.
from search.running.worker import BAD_INPUT, DONE, FAILED, STOPPED, STORAGE_FAILED, run_trial_process
from search.study.guarded import RUN_ENV, failure_in
from search.study.open import open_study
from search.studyfile import StudyFile
from swipr_core.data.dataset import Dataset
from swipr_core.errors import SwiprError
from swipr_core.train.threads import cpu_threads

MAX_CRASHES_IN_A_ROW = 3  # trial processes that die one after another before the run gives up
# Imported once by the forkserver; search.cli first, so its warning filter applies there too.
PRELOAD = ["search.cli", "torch", "fastai.learner", "timm", "search.running.supervisor"]


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: int | None = None

    @property
    def label(self) -> str:
        return f"worker {self.index}" + (f" (GPU {self.gpu})" if self.gpu is not None else "")


@dataclass(frozen=True)
class Task:
    """What one trial process needs; pickled to it, so the URL never reaches an argv. The study
    file goes parsed, as the run read it at its start: trials never see a later edit."""

    study_file: StudyFile
    slot: Slot
    device: str | None
    env: dict = field(default_factory=dict)
    cpu_threads: int = 1   # the machine's cores shared by the slots, so workers don't thrash
    dataset: Dataset | None = None   # the data the driver prepared and checked: not again per trial
    turn: Turn | None = None   # scheduler = "promote": the turn the supervisor gave it (search.running.promotion)


def parse_gpus(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise SwiprError(f"--gpus must be GPU numbers separated by commas (e.g. 0,1,2,3), got {text!r}") from None
    if not gpus or any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise SwiprError(f"--gpus must be distinct GPU numbers, 0 or more, separated by commas, got {text!r}")
    return gpus


def make_slots(workers: int | None, gpus: str | None, trials_per_gpu: int | None) -> list[Slot]:
    if gpus is None:
        if trials_per_gpu is not None:
            raise SwiprError("--trials-per-gpu needs --gpus")
        count = 1 if workers is None else workers
        if count < 1:
            raise SwiprError(f"--workers must be 1 or more, got {count}")
        return [Slot(i) for i in range(count)]
    if workers is not None:
        raise SwiprError("give --workers or --gpus, not both (--trials-per-gpu sets workers per GPU)")
    per_gpu = 1 if trials_per_gpu is None else trials_per_gpu
    if per_gpu < 1:
        raise SwiprError(f"--trials-per-gpu must be 1 or more, got {per_gpu}")
    return [Slot(i * per_gpu + k, gpu) for i, gpu in enumerate(parse_gpus(gpus)) for k in range(per_gpu)]


def visible_device(gpu: int, inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for the slot on GPU `gpu`. --gpus numbers the GPUs this process
    sees, so under an inherited CUDA_VISIBLE_DEVICES=2,3, GPU 0 is device 2."""
    ids = [part.strip() for part in inherited.split(",") if part.strip()] if inherited else []
    return ids[gpu] if gpu < len(ids) else str(gpu)


# --- inside a trial process -------------------------------------------------------------


def _trial_process(task: Task) -> None:
    # The terminal's Ctrl-C reaches every process in the group; only the supervisor acts on
    # it, and asks each trial process once, with SIGTERM, so no trial is interrupted twice.
    stop = StopFlag()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop.on_signal)
    os.environ.update(task.env)   # before anything touches CUDA
    torch.set_num_threads(task.cpu_threads)
    try:
        code = run_trial_process(task.study_file, task.slot.label, task.slot.index, task.device, stop, task.dataset,
                                 task.turn)
    except Exception as error:
        # A failed storage reaches here through Optuna's loop as another error (see failure_in).
        failure = failure_in(error)
        if failure is None:
            raise
        print(f"swipr: error: {task.slot.label}: {failure}", file=sys.stderr, flush=True)
        code = STORAGE_FAILED
    sys.exit(code)


# --- the supervisor ---------------------------------------------------------------------


def supervise(study_file: StudyFile, storage_url: str, slots: list[Slot], n_trials: int, timeout: float | None,
              device: str | None, max_failures_in_a_row: int = MAX_CRASHES_IN_A_ROW,
              dataset: Dataset | None = None) -> int:
    """Run `n_trials` trials over `slots`; return the exit status (0, 1 or 2). `dataset`: the
    data already prepared and checked against the study, handed to every trial process."""
    run = _Supervisor(study_file, storage_url, slots, device, max_failures_in_a_row, dataset)

    def on_term(signum, frame) -> None:
        raise KeyboardInterrupt   # a preempted machine's SIGTERM stops the run like Ctrl-C

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return run.until_done(n_trials, time.monotonic() + timeout if timeout else None)
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(run.running)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Supervisor:
    """Trial processes on free slots, and what their exit statuses mean for the run."""

    def __init__(self, study_file: StudyFile, storage_url: str, slots: list[Slot], device: str | None, limit: int,
                 dataset: Dataset | None = None):
        self.study_file, self.storage_url, self.device, self.limit = study_file, storage_url, device, limit
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.running: dict = {}   # sentinel -> (process, slot)
        self.free = list(slots)
        self.threads = cpu_threads(len(slots))   # the machine's cores shared by the slots
        self.dataset = dataset
        self.status, self.crashes, self.failures = 0, 0, 0
        self.study: optuna.Study | None = None   # opened for the promote scheduler's turns only
        self.turns: dict = {}   # sentinel -> the Turn its process was given

    def until_done(self, budget: int, deadline: float | None) -> int:
        """Under `scheduler = "promote"` `budget` counts configurations, each turn decided here
        when a slot is free; otherwise it counts trial processes."""
        promote = self.study_file.study.scheduler == "promote"
        while True:
            while self.free and self.status == 0 and not (deadline and time.monotonic() >= deadline):
                turn = self.next_turn(budget > 0) if promote else None
                if (promote and turn is None) or (not promote and budget <= 0):
                    break
                with stop_held():
                    self.start(self.free.pop(0), turn)
                budget -= 1 if turn is None or turn.starts_one else 0
            if not self.running:
                return self.status
            for sentinel in wait(list(self.running), timeout=1.0):
                process, slot = self.running.pop(sentinel)
                self.turns.pop(sentinel, None)
                process.join()
                self.free.append(slot)
                self.ended(slot, process.exitcode)

    def next_turn(self, may_start_new: bool) -> Turn | None:
        """The next turn under the promote scheduler, none of the running turns' trials again."""
        if self.study is None:
            self.study = open_study(self.study_file, create=False)
        busy = frozenset(turn.number for turn in self.turns.values() if turn.number is not None)
        settings = self.study_file.study
        return next_turn(self.study.get_trials(deepcopy=False), settings.promotion_eta, settings.promotion,
                         may_start_new, busy)

    def start(self, slot: Slot, turn: Turn | None = None) -> None:
        # The run's token too: a forkserver started by an earlier run would hand out that one.
        env = {"SWIPR_STORAGE": self.storage_url, RUN_ENV: os.environ.get(RUN_ENV, "")}
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible_device(slot.gpu, os.environ.get("CUDA_VISIBLE_DEVICES"))
        process = self.context.Process(target=_trial_process, name=f"swipr-{slot.index}",
                                       args=(Task(self.study_file, slot, self.device, env, self.threads, self.dataset,
                                                  turn),))
        process.start()
        self.running[process.sentinel] = (process, slot)
        if turn is not None:
            self.turns[process.sentinel] = turn

    def ended(self, slot: Slot, code: int) -> None:
        if code in (DONE, FAILED):
            self.crashes = 0
            self.failures = self.failures + 1 if code == FAILED else 0
            if self.failures >= self.limit and self.status == 0:
                trials = "1 trial" if self.failures == 1 else f"{self.failures} trials in a row"
                print(f"swipr: {trials} failed; stopping the run (see the lines above; "
                      f"[study] max_failures_in_a_row sets how many are tolerated)", file=sys.stderr, flush=True)
                self.status = 1
        elif code == BAD_INPUT:   # the process printed a SwiprError: the same would happen again
            self.status = 2
        elif code == STORAGE_FAILED:   # it said why; every other trial process meets the same storage
            self.status = self.status or 1
        elif code != STOPPED:   # stopped by a signal someone sent it: its trial was recorded
            self.crashed(slot, code)

    def crashed(self, slot: Slot, code: int) -> None:
        self.crashes += 1
        why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        print(f"{slot.label}: trial process {why}; a trial it left running is failed after the "
              f"grace period and retried", file=sys.stderr, flush=True)
        if self.crashes >= MAX_CRASHES_IN_A_ROW:
            print(f"swipr: {self.crashes} trial processes in a row died; stopping", file=sys.stderr, flush=True)
            self.status = 1


@contextmanager
def stop_held():
    """Ctrl-C (or SIGTERM) while a trial process starts is acted on once the process is in
    `running`. Raised inside Process.start, it would leave a process that no one asks to stop
    (trial processes ignore SIGINT) training on, maybe on a retry just queued by a stopped one."""
    held = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if callable(handler):   # an ignored SIGINT (a job started in the background) stays ignored
            signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt


def _stop_all(running: dict) -> None:
    print(f"stopping {len(running)} running trial{'s' if len(running) != 1 else ''}…", file=sys.stderr, flush=True)
    for process, _ in running.values():
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for process, slot in running.values():
        while process.is_alive():
            try:
                process.join(max(0.0, deadline - time.monotonic()))
                break
            except KeyboardInterrupt:   # a second Ctrl-C: stop waiting
                deadline = 0
        if process.is_alive():
            print(f"{slot.label}: did not stop in {STOP_WAIT_S} s; killed (its trial is retried later)",
                  file=sys.stderr, flush=True)
            process.kill()
            process.join()
