"""`swipr study run`: prepare the data once, then run trials against the study's storage.

Without --workers/--gpus the trials run here, one after another (search.running.worker).
With them, the supervisor (search.running.supervisor) runs each trial in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import uuid

import optuna
import torch

from search.running.dask_engine import open_cluster, run_on_dask
from search.running.stop import sigterm_as_interrupt
from search.running.supervisor import Slot, make_slots, supervise
from search.running.worker import run_worker
from search.study.data_record import check_fingerprint, prepare_study_data
from search.study.guarded import RUN_ATTR, RUN_ENV, failure_in
from search.study.learn_from import learn_from_earlier, read_earlier
from search.study.open import best_or_none, open_study, quiet_optuna, refuse_long_name
from search.study.schedule_record import settle_n_cycles_mode
from search.study.space_record import check_space
from search.study.storage import NO_HEARTBEAT_NOTE, redact_output, supports_heartbeat
from search.studyfile.url_text import redact
from search.study.warm_start import enqueue_warm_start
from search.studyfile import StudyFile, load_study_file
from search.studyfile.fields import keyed
from search.views.artifacts import make_objective_hooks
from search.views.progress import Budget, StudyProgress, summary_table
from swipr_core.data.dataset import Dataset
from swipr_core.errors import SwiprError
from swipr_core.train.model import check_model
from swipr_core.train.run import resolve_device
from swipr_core.train.schedule import check_device
from swipr_core.train.threads import cpu_threads


def run_study(args: argparse.Namespace) -> int:
    with sigterm_as_interrupt():   # the supervisor, with --workers/--gpus, has its own as well
        try:
            return _run_study(args)
        except Exception as error:
            # A storage that failed mid-run (full disk, database gone) surfaces through Optuna's
            # loop as other errors; the storage's own one-line reason is what the user needs.
            failure = failure_in(error)
            if failure is None:
                raise
            raise failure from None


def _refuse_empty_flags(args: argparse.Namespace) -> None:
    """`--dask ""` (an unset variable in a script) must not quietly mean "the default"."""
    for flag, value in (("--device", args.device), ("--dask", args.dask)):
        if value is not None and not value.strip():
            raise SwiprError(f"{flag} is empty; give a value or leave the flag out")


def _run_study(args: argparse.Namespace) -> int:
    _refuse_empty_flags(args)
    study_file = load_study_file(args.study_file)
    refuse_long_name(study_file)   # before the data is prepared, not after
    # read-only, before anything is written: a study it can't learn from stops the run here
    earlier, learn_notes = read_earlier(study_file)
    for note in learn_notes:
        print(note)
    device_name, device_where = study_file.device_from(args.device)
    with keyed(device_where):
        check_device(device_name)   # --device is read here; [train] device was checked at load
    redact_output(study_file.study.storage)
    n_trials, timeout = _budget(args, study_file)
    slots = make_slots(args.workers, args.gpus, args.trials_per_gpu)
    parallel = args.workers is not None or args.gpus is not None
    address = args.dask or study_file.cluster.dask
    if address and parallel:
        raise SwiprError("give --dask (or [cluster] dask, $SWIPR_DASK) or --workers/--gpus, not both")
    if address and study_file.study.scheduler == "promote":   # docs/promotion.md, "Not done yet"
        raise SwiprError(f'{study_file.where("study")} scheduler = "promote" does not run on Dask yet; '
                         f'use --workers/--gpus, or scheduler = "pruner"')
    # On Dask the workers' GPUs count, not this machine's; a wrong address fails here, in seconds.
    cluster = open_cluster(address, device_name) if address else None
    device = cluster.device if cluster else _device(device_name, device_where, slots)
    quiet_optuna()
    # A typo in the arch or an offline hub should fail now, not after the image cache is built.
    with keyed(study_file.where("model")):
        check_model(study_file.model)
    dataset = prepare_study_data(study_file)
    counts = dataset.split.counts()
    print(f"data: {len(dataset.split)} images, YES {counts['YES']}, NO {counts['NO']}, "
          f"valid {counts['valid']}, fingerprint {dataset.fingerprint}")
    study = open_study(study_file, create=True)
    check_fingerprint(study, dataset, study_file)
    for note in [*check_space(study, study_file), *settle_n_cycles_mode(study, study_file)]:
        print(note)
    done_before = len(study.trials)   # before the warm start's enqueued trials, which this run runs
    # Each trial this run starts, here or in its trial processes, is marked with this token.
    os.environ[RUN_ENV] = run_token = uuid.uuid4().hex
    for line in [*enqueue_warm_start(study, study_file), *learn_from_earlier(study, study_file, earlier)]:
        print(line)
    where = f" on {len(slots)} worker{'s' if len(slots) != 1 else ''}" if parallel else ""
    where = f" on the Dask cluster at {address}" if cluster else where
    until = f" (or until --timeout {timeout:g} s)" if timeout else ""
    print(f"study '{study.study_name}' in {redact(study_file.study.storage)}: "
          f"{done_before} trial{'s' if done_before != 1 else ''} so far, running {n_trials} more{where}{until}",
          flush=True)
    if not supports_heartbeat(study_file.study.storage):
        print(NO_HEARTBEAT_NOTE, flush=True)
    budget = None   # set once the run ends as planned: then a --timeout is what cut it short
    try:
        if cluster:
            code = run_on_dask(cluster, study_file, n_trials, timeout)
        elif parallel:
            code = supervise(study_file, study_file.study.storage, slots, n_trials, timeout, device,
                             study_file.study.max_failures_in_a_row, dataset=dataset)
        else:
            code = _run_here(study_file, study, dataset, n_trials, timeout, device)
        budget = Budget(n_trials, timeout)
        return code
    finally:   # also when the run stops early: what it did is worth a look
        _print_summary(study_file, device, run_token, budget)


def _budget(args: argparse.Namespace, study_file: StudyFile) -> tuple[int, float | None]:
    """(trials to run, timeout in seconds or None) from the command line and the study file."""
    n_trials = study_file.study.n_trials if args.n_trials is None else args.n_trials
    if n_trials < 1:
        raise SwiprError(f"--n-trials must be 1 or more, got {n_trials}")
    timeout = args.timeout if args.timeout is not None else (study_file.study.timeout or None)
    if timeout is not None and (timeout <= 0 or not math.isfinite(timeout)):
        raise SwiprError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return n_trials, timeout


def _run_here(study_file: StudyFile, study: optuna.Study, dataset: Dataset, n_trials: int,
              timeout: float | None, device: str) -> int:
    torch.set_num_threads(cpu_threads())   # not torch's default of a thread a core: see swipr_core.train.threads
    progress = StudyProgress(n_trials)
    try:
        run_worker(study_file, dataset, n_trials=n_trials, timeout=timeout, device=device,
                   hooks=[progress, *make_objective_hooks(study_file, study, dataset)], callbacks=[progress])
    finally:
        progress.close()
    return 0


def _device(device: str, where: str, slots: list[Slot]) -> str:
    """The device trials run on here. With --gpus each process sees only its GPU, which is cuda
    (cuda:0) to it; without, a GPU named but not there fails now, not in every trial."""
    if slots[0].gpu is None:
        with keyed(where):
            resolve_device(device)
        return device
    if device == "cpu":
        raise SwiprError("--gpus runs trials on GPUs, but the device is cpu ([train] device or --device)")
    visible = torch.cuda.device_count()   # counts without initialising CUDA in this process
    missing = sorted({slot.gpu for slot in slots if slot.gpu is not None and slot.gpu >= visible})
    if missing:
        raise SwiprError(f"--gpus names GPU {', '.join(map(str, missing))}, but this machine has {visible} "
                         f"CUDA GPU{'s' if visible != 1 else ''} visible")
    return "cuda"


def _print_summary(study_file: StudyFile, device: str, run_token: str, budget: Budget | None) -> None:
    """The end-of-run table and best trial, read afresh from the storage without writing: a full
    disk (or any storage that can't be written any more) can still be read for it."""
    try:
        # Read afresh: the run's own view caches trials as it last saw them, without the marks
        # of the run that started them (search.study.guarded). As a reader: the run's own
        # connections begin even a read with the write lock (BEGIN IMMEDIATE, see
        # search.study.storage), which a full disk refuses.
        _summary_of(open_study(study_file, create=False, reader=True), device, run_token, budget)
    except SwiprError as error:   # the storage the run stops for (StorageFailed), or it can't be opened again
        print(f"no summary: the study's storage can't be read ({error})")


def _summary_of(study: optuna.Study, device: str, run_token: str, budget: Budget | None) -> None:
    # Trials this run started, queued ones (retries, the warm start) included; not those
    # another run on the same study started meanwhile.
    this_run = [t.number for t in study.get_trials(deepcopy=False) if t.system_attrs.get(RUN_ATTR) == run_token]
    text = summary_table(study, device, this_run=this_run, budget=budget)   # whole, before anything prints
    print(text)
    _print_best(study)


def _print_best(study: optuna.Study) -> None:
    trial = best_or_none(study)
    if trial is None:
        print("no trial completed yet")
        return
    print(f"best: trial {trial.number} val_loss {trial.value:.4f} params {json.dumps(trial.params)}")
