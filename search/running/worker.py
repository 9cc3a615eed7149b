"""One worker: trials one after another on the study, here or in a trial process.

Heartbeats, the data fingerprint check and the trial objective (objectives.trial), then
Optuna's optimize loop. A trial process (`--workers`/`--gpus`) runs one trial and exits.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import optuna

from objectives.oom import free_memory
from objectives.optuna_compat import skip_telling_finished_trials
from objectives.resume import Checkpoints, retries_first, take_no_trial_when_stopping
from objectives.trial import TrainSettings, trial_objective
from search.running.promotion import Turn, run_turns
from search.running.failures import FailureGuard, FailureStreak, TrialFailed, error_log, route_tracebacks
from search.running.stop import StopFlag
from search.study.data_record import check_fingerprint, prepare_study_data
from search.study.open import open_study, open_worker_study, quiet_optuna
from search.study.schedule_record import n_cycles_mode
from search.study.storage import redact_output
from search.studyfile.url_text import redact
from search.studyfile import StudyFile
from search.studyfile.trained_with import RecordTrainedWith
from search.views.artifacts import make_objective_hooks
from search.views.format import describe_trial
from search.views.progress import trial_lines
from swipr_core.data.dataset import Dataset
from swipr_core.errors import RunStopped, SwiprError

# run_trial_process's exit statuses, read by search.running.supervisor
DONE, FAILED, BAD_INPUT, STOPPED = 0, 3, 2, 130
STORAGE_FAILED = 4   # the storage failed (a full disk, the database gone): the run stops, exit 1


def checkpoint_root(study_file: StudyFile) -> Path:
    """Per-trial checkpoints live in the machine's cache folder, one folder per study, keyed by
    the storage and the exact study name: `exp 1` and `exp:1`, or two databases' `demo`, never
    share one. The readable part of the name is only for people. [cluster] checkpoint_dir puts
    them on a folder every worker reads, so a retry resumes on any machine."""
    study = study_file.study
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study.name)[:60]
    key = hashlib.sha256(f"{redact(study.storage)}\0{study.name}".encode()).hexdigest()[:12]
    return (study_file.cluster.checkpoint_dir or study_file.data.cache_dir / "checkpoints") / f"{safe}-{key}"


def train_settings(study_file: StudyFile, device: str | None, study: optuna.Study | None = None) -> TrainSettings:
    """How the study's trials train; `study` says how they get their cycles (schedule_record)."""
    train = study_file.train
    mode = n_cycles_mode(study, study_file) if study is not None else study_file.study.n_cycles or None
    return TrainSettings(head_epochs=train.head_epochs, seed=study_file.study.seed, device=device or train.device,
                         precision=train.precision, compile=train.compile, prune_at=study_file.study.prune_at,
                         n_cycles_mode=mode or TrainSettings.n_cycles_mode,
                         pause_at_cycle_ends=study_file.study.scheduler == "promote")


def run_worker(study_file: StudyFile, dataset: Dataset, *, n_trials: int, timeout: float | None = None,
               device: str | None = None, slot: str = "0", hooks=(), callbacks=(),
               stop: StopFlag | None = None, streak: FailureStreak | None = None,
               turn: Turn | None = None) -> optuna.Study:
    """`n_trials` trials on the study, with heartbeats, resumable retries and OOM handling;
    the data fingerprint is checked before anything trains. A trial's ordinary error fails that
    trial only; `streak` (default: [study] max_failures_in_a_row) stops the run. Under `scheduler =
    "promote"`, `turn` is the one turn to take (search.running.promotion). Returns the study."""
    stop = stop or StopFlag()   # only a trial process's SIGTERM sets it
    streak = streak or FailureStreak(study_file.study.max_failures_in_a_row)
    log = error_log(study_file)
    route_tracebacks(log)
    checkpoints = Checkpoints(checkpoint_root(study_file), study_file.study.max_retry)
    study = open_worker_study(study_file, checkpoints.on_stale, slot)
    take_no_trial_when_stopping(study, stop)
    retries_first(study)
    skip_telling_finished_trials()   # a trial failed as stale under this worker must not stop it
    check_fingerprint(study, dataset, study_file)
    hooks = [RecordTrainedWith(study_file), *hooks]   # what `swipr fit --trial N` replays
    objective = FailureGuard(trial_objective(dataset, study_file.space, study_file.model,
                                             train_settings(study_file, device, study), checkpoints, stop, hooks),
                           log)

    def tidy(study, trial) -> None:
        free_memory()   # what the trial left behind goes before the next one allocates

    if study_file.study.scheduler == "promote":   # trials pause at cycle ends: search.running.promotion
        run_turns(study, objective, n_trials=n_trials, eta=study_file.study.promotion_eta,
                  rule=study_file.study.promotion, timeout=timeout, callbacks=[*callbacks, tidy, streak],
                  catch=(TrialFailed,), stopped=lambda: streak.tripped or stop.requested, only=turn)
    else:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[*callbacks, tidy, streak],
                       catch=(TrialFailed,))
    if streak.tripped:
        raise RunStopped(streak.message(log))
    return study


def trial_process_data(study_file: StudyFile, verified: Dataset | None) -> Dataset:
    """The data a trial process trains on: the driver's, `verified` once for the run (labels
    read, every image statted for the cache key, the fingerprint checked against the study's),
    handed over in the task; prepared here only without it. At 255k images preparing it again
    cost every trial ~3 s. run_worker still checks its fingerprint against the
    study's record, which reads one study attribute."""
    return verified if verified is not None else prepare_study_data(study_file)


def run_trial_process(study_file: StudyFile, label: str, slot_index: int, device: str | None, stop: StopFlag,
                      verified: Dataset | None = None, turn: Turn | None = None) -> int:
    """A trial process under `--workers`/`--gpus`: one trial, then exit (status as the CLI's).
    `study_file` is the one the run parsed when it started, never the file read again: an edit
    made during the run must not change the study under it."""
    try:
        redact_output(study_file.study.storage)
        quiet_optuna()
        dataset = trial_process_data(study_file, verified)
        if stop.requested:
            return STOPPED

        def announce(study, trial) -> None:
            print(f"{label}: {describe_trial(trial)}", flush=True)

        # the per-epoch table's rows, as the single-process run prints them, each starting with the trial
        hooks = [trial_lines(), *make_objective_hooks(study_file, open_study(study_file, create=False), dataset)]
        streak = FailureStreak(limit=2)   # one trial here: the supervisor counts failures in a row
        run_worker(study_file, dataset, n_trials=1, device=device, slot=str(slot_index), hooks=hooks,
                   callbacks=[announce], stop=stop, streak=streak, turn=turn)
    except SwiprError as error:
        print(f"swipr: error: {label}: {error}", file=sys.stderr, flush=True)
        return BAD_INPUT if error.exit_code == BAD_INPUT else STORAGE_FAILED
    except KeyboardInterrupt:
        return STOPPED
    return FAILED if streak.in_a_row else DONE
