"""The Dask driver's loop: ask Optuna, submit each trial as a task, collect what it returns.

The driver asks for each trial with the whole space fixed up front (so the sampler and TPE's
constant liar see every running trial) and submits it to a worker with a free slot, keeping as
many trials in flight as the cluster has slots, counted again once a second, so workers that
join are used at once. It asks and records straight in the study's storage.

A lost worker shows up as the task's error (KilledWorker), or as a task Dask re-ran elsewhere,
which refuses to touch the trial: the driver records the trial FAIL once and queues one retry,
which resumes from the trial's checkpoint on whichever worker takes it; the retry doesn't count
against --n-trials. RUNNING trials left by a driver that died are failed and retried the same
way when the command runs again. Ctrl-C: each trial stops after its next epoch.
"""
from __future__ import annotations

import sys
import time
import uuid

import optuna
from optuna.trial import TrialState

from objectives.judging import INTERRUPTED_ATTR
from objectives.optuna_compat import attach, fix_params, storage_of, study_id, trial_id
from objectives.resume import Checkpoints
from objectives.space import conditional, distribution, drawn, param_name, skippable_stage2, stage2_name
from objectives.trial_attrs import set_attr
from search.running.dask_trial import STARTED_ATTR, STOP_EVENT, DaskTask, run_dask_trial
from search.running.failures import error_log
from search.running.stop import STOP_WAIT_S
from search.running.worker import checkpoint_root
from search.study.orphans import DASK_TOKEN_ATTR
from search.study.schedule_record import n_cycles_mode
from search.studyfile import StudyFile
from search.views.format import describe_trial

WAIT_FOR_SLOTS_S = 60      # every worker gone: how long the driver waits for one before it stops
MAX_LOST_IN_A_ROW = 3      # tasks lost one after another before the run gives up


def slots(client, kind: str) -> int:
    """Trials the cluster can run at once: GPU slots, or worker threads for a CPU study."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if kind == "GPU":
        return int(sum(w.get("resources", {}).get("GPU", 0) for w in workers))
    return sum(w["nthreads"] for w in workers)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}".rstrip(": ")


class Driver:
    """The loop: ask, submit, collect. Each lost task's trial is failed once and retried once."""

    task_function = staticmethod(run_dask_trial)   # bench/dask_throughput.py swaps in a trivial one

    def __init__(self, client, study: optuna.Study, study_file: StudyFile, storage_name: str, device: str):
        self.client, self.study, self.storage = client, study, storage_of(study)
        self.study_file, self.storage_name, self.device = study_file, storage_name, device
        self.kind = "GPU" if device == "cuda" else "CPU"
        self.run_id = uuid.uuid4().hex
        self.checkpoints = Checkpoints(checkpoint_root(study_file), study_file.study.max_retry)
        # n_cycles as a budget is no param: the task's trial plans it (objectives.space.drawn)
        self.mode = n_cycles_mode(study, study_file)
        space = drawn(study_file.space, self.mode)
        self.distributions = {param_name(name, spec): distribution(spec) for name, spec in space.items()}
        self.running: dict = {}   # future -> trial id
        self.status = 0
        self.lost_in_a_row = self.failed_in_a_row = 0
        self._slots, self._slots_at = 0, -1.0

    def free_slots(self) -> int:
        """Slots the cluster has beyond the trials in flight; counted at most once a second."""
        if time.monotonic() - self._slots_at > 1.0:
            self._slots, self._slots_at = slots(self.client, self.kind), time.monotonic()
        return self._slots - len(self.running)

    def run(self, n_trials: int, deadline: float | None) -> int:
        """Until `n_trials` trials have ended (lost ones don't count) or the deadline; Ctrl-C
        (and SIGTERM, which search.running.driver turns into one) stops the trials first."""
        from distributed import wait

        budget, idle_since = n_trials, None
        try:
            while True:
                open_to_new = self.status == 0 and not (deadline and time.monotonic() >= deadline)
                while budget > 0 and open_to_new and self.free_slots() > 0:
                    self.submit()
                    budget -= 1
                if not self.running:
                    if budget == 0 or not open_to_new:
                        return self.status
                    idle_since = idle_since or time.monotonic()   # every worker has gone: wait a while
                    if time.monotonic() - idle_since > WAIT_FOR_SLOTS_S:
                        print(f"swipr: no Dask worker with a free slot for {WAIT_FOR_SLOTS_S} s; stopping",
                              file=sys.stderr, flush=True)
                        return 1
                    time.sleep(0.5)
                    continue
                idle_since = None
                try:
                    done, _ = wait(list(self.running), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in done:
                    budget += self.collect(future)
        except KeyboardInterrupt:
            self.stop()
            raise

    def submit(self) -> None:
        trial = self.study.ask(self.distributions)   # the sampler sees every running trial: constant liar
        self.fix_stage2(trial)
        self.storage.set_trial_system_attr(trial_id(trial), DASK_TOKEN_ATTR, self.run_id)
        token = uuid.uuid4().hex
        task = DaskTask(str(self.study_file.path), self.storage_name, trial_id(trial), token, self.run_id,
                        self.device, self.study_file.sha256)
        future = self.client.submit(self.task_function, task, key=f"swipr-trial-{trial.number}-{token[:8]}",
                                    resources={"GPU": 1} if self.kind == "GPU" else None, pure=False)
        self.running[future] = trial_id(trial)

    def fix_stage2(self, trial: optuna.Trial) -> None:
        """Stage 2's params are drawn where the trial reaches stage 2 (objectives.space.conditional),
        on a worker whose study hands back only what it is given: the study's sampler draws them
        here, kept as the trial's fixed params, so they become its params only if it gets there."""
        space = self.study_file.space
        later = conditional(space, self.mode)
        if not later or (skippable_stage2(space, self.mode) and trial.params.get(stage2_name("n_cycles")) == 0):
            return
        frozen = self.storage.get_trial(trial_id(trial))
        fixed = frozen.system_attrs.get("fixed_params", {})
        draws = {}
        for name, spec in later.items():
            if name not in fixed:   # a retry's come back as its original drew them
                dist = distribution(spec)
                draws[name] = dist.to_external_repr(dist.to_internal_repr(
                    self.study.sampler.sample_independent(self.study, frozen, name, dist)))
        fix_params(trial, draws)

    def collect(self, future) -> int:
        """Report a finished task; return how many trials go back to the budget (lost ones)."""
        stored = self.running.pop(future)
        try:
            result = future.result()
        except Exception as error:   # KilledWorker: its worker died; anything else: the task broke
            return self.lost(stored, f"its task ended with {_reason(error)}")
        outcome = result["outcome"]
        if outcome == "lost":
            return self.lost(stored, "its worker was lost (Dask re-ran the task)")
        if outcome == "error":
            print(f"swipr: error: {result['worker']}: {result['reason']}", file=sys.stderr, flush=True)
            self.status = 2
            return 0
        self.lost_in_a_row = 0
        if outcome != "returned":
            where = f"{result['worker']} on {result['host']}" + (f" (GPU {result['gpu']})" if result["gpu"] else "")
            print(f"{where}: {describe_trial(self.storage.get_trial(stored))}", flush=True)
        self.count_failures(outcome, result.get("reason", ""))
        return 0

    def count_failures(self, outcome: str, reason: str) -> None:
        """[study] max_failures_in_a_row ordinary failures stop the run, as they do local workers."""
        self.failed_in_a_row = self.failed_in_a_row + 1 if outcome == "FAIL" else 0
        if self.failed_in_a_row >= self.study_file.study.max_failures_in_a_row and self.status == 0:
            trials = "1 trial" if self.failed_in_a_row == 1 else f"{self.failed_in_a_row} trials in a row"
            print(f"swipr: {trials} failed (the last: {reason}); stopping the run. "
                  f"Their errors are in {error_log(self.study_file)} on the workers", file=sys.stderr, flush=True)
            self.status = 1

    def lost(self, stored: int, why: str) -> int:
        self.lost_in_a_row += 1
        if self.lost_in_a_row >= MAX_LOST_IN_A_ROW and self.status == 0:
            print(f"swipr: {self.lost_in_a_row} trials in a row lost their worker; stopping", file=sys.stderr,
                  flush=True)
            self.status = 1
        trial = self.storage.get_trial(stored)
        if trial.state != TrialState.RUNNING:
            return 0   # it recorded its end before the worker went
        print(f"trial {trial.number}: {why}", file=sys.stderr, flush=True)
        return self.give_up(stored, why)

    def give_up(self, stored: int, why: str, interrupt: bool = False) -> int:
        """A RUNNING trial no task will finish: FAIL once with one retry queued (if any are left),
        or back to the queue untouched if it never began; with `interrupt` (Ctrl-C), marked
        interrupted (objectives.judging.INTERRUPTED_ATTR). Returns 1 if the budget gets it back."""
        trial = self.storage.get_trial(stored)
        if STARTED_ATTR not in trial.system_attrs:
            self.storage.set_trial_state_values(stored, TrialState.WAITING)
            return 1
        self.storage.set_trial_user_attr(stored, "fail_reason", why)
        if interrupt:   # a system attr: the retry Optuna makes copies user attrs only, and is no interrupt
            set_attr(attach(self.study, stored), INTERRUPTED_ATTR, True)
        self.study.tell(trial.number, state=TrialState.FAIL)   # first: a crash here loses a retry, never doubles one
        return int(self.checkpoints.on_stale(self.study, self.storage.get_trial(stored)))

    def fail_orphans(self) -> None:
        """RUNNING trials of a Dask driver that died: failed and retried, as a lost worker's are."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if DASK_TOKEN_ATTR in trial.system_attrs:
                print(f"trial {trial.number}: left running by a driver that stopped", flush=True)
                stored = self.storage.get_trial_id_from_study_id_trial_number(study_id(self.study), trial.number)
                self.give_up(stored, "its driver stopped")

    def stop(self) -> None:
        """Ctrl-C: each trial stops after its next epoch, FAIL with a resumable retry queued."""
        from distributed import Event, wait

        print(f"stopping {len(self.running)} running trial{'s' if len(self.running) != 1 else ''}…",
              file=sys.stderr, flush=True)
        Event(STOP_EVENT.format(run=self.run_id), client=self.client).set()
        deadline = time.monotonic() + STOP_WAIT_S
        while self.running and time.monotonic() < deadline:
            try:
                done, _ = wait(list(self.running), timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            except KeyboardInterrupt:   # a second Ctrl-C: stop waiting
                break
            for future in done:
                self.collect(future)
        for future, stored in list(self.running.items()):
            if self.storage.get_trial(stored).state == TrialState.RUNNING:
                self.give_up(stored, "stopped (Ctrl-C) before its next epoch", interrupt=True)
            future.cancel()
        self.running.clear()
