"""`swipr study run`: prepare the data once, then run trials against the study's storage.

Without --workers/--gpus the trials run here, one after another. With them, a supervisor
(search/workers.py) runs each trial in a fresh process per slot. Either way a trial goes
through `run_worker`: heartbeats, the data fingerprint check, `build_objective`, then
Optuna's optimize loop.
"""
from __future__ import annotations

import argparse
import json
import math


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def build_objective(study_file, dataset, device: str | None, checkpoints, hooks=()):
    """The study file's objective: fine-tune with the trial's params, checkpoint every epoch."""
    from objectives.finetune import FinetuneObjective
    from swipr_core.model import ModelSpec

    model = study_file.model
    return FinetuneObjective(
        dataset, study_file.space, ModelSpec(model.arch, model.pretrained, model.weights),
        head_epochs=study_file.train.head_epochs, seed=study_file.study.seed,
        device=device or study_file.train.device, precision=study_file.train.precision,
        compile=study_file.train.compile,
        checkpoint_dir_for=checkpoints.dir_for, seed_number_for=checkpoints.seed_number_for, hooks=hooks,
    )


def run_worker(study_file, dataset, *, n_trials: int, timeout: float | None = None, device: str | None = None,
               slot: str = "0", hooks=(), callbacks=()):
    """One worker: `n_trials` trials on the study, with heartbeats, resumable retries and OOM
    handling; the data fingerprint is checked before anything trains. Returns the study."""
    from search.oom import OutOfMemoryGuard, free_memory
    from search.retry import Checkpoints, ResumableObjective, ask_unless_stopping, checkpoint_root, open_worker_study
    from search.study import check_fingerprint
    from search.workers import stop_requested

    checkpoints = Checkpoints(checkpoint_root(study_file), study_file.study.max_retry)
    study = open_worker_study(study_file, checkpoints, slot)
    ask_unless_stopping(study, stop_requested)   # only a trial process's SIGTERM requests a stop
    check_fingerprint(study, dataset, study_file)
    objective = build_objective(study_file, dataset, device, checkpoints, hooks)
    objective = ResumableObjective(OutOfMemoryGuard(objective, study_file.space), checkpoints)

    def tidy(study, trial) -> None:
        free_memory()   # what the trial left behind goes before the next one allocates

    study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[*callbacks, tidy],
                   catch=(RuntimeError, ValueError))
    return study


def run_trial_process(task) -> int:
    """A trial process under `--workers`/`--gpus`: one trial, then exit (status as the CLI's)."""
    import sys
    import warnings

    from search.artifacts import make_objective_hooks
    from search.storage import redact_output
    from search.study import data_spec, describe_trial, open_study
    from search.study_file import load_study_file
    from search.workers import stop_requested
    from swipr_core.data import prepare_data
    from swipr_core.errors import SwiprError

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    try:
        study_file = load_study_file(task.study_file)
        redact_output(study_file.study.storage)
        _quiet_optuna()
        dataset = prepare_data(data_spec(study_file))
        if stop_requested():
            return 130

        def announce(study, trial) -> None:
            print(f"{task.slot.label}: {describe_trial(trial)}", flush=True)

        hooks = make_objective_hooks(study_file, open_study(study_file, create=False))
        run_worker(study_file, dataset, n_trials=1, device=task.device, slot=str(task.slot.index),
                   hooks=hooks, callbacks=[announce])
    except SwiprError as error:
        print(f"swipr: error: {task.slot.label}: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def run_study(args: argparse.Namespace) -> int:
    from search.dask_engine import open_cluster, run_on_dask
    from search.progress import StudyProgress, summary_table
    from search.study import check_fingerprint, data_spec, enqueue_warm_start, open_study
    from search.study_file import load_study_file
    from search.storage import NO_HEARTBEAT_NOTE, redact, redact_output, supports_heartbeat
    from search.workers import make_slots, supervise
    from swipr_core.data import prepare_data
    from swipr_core.errors import SwiprError
    from swipr_core.model import ModelSpec, check_model

    study_file = load_study_file(args.study_file)
    redact_output(study_file.study.storage)
    n_trials = study_file.study.n_trials if args.n_trials is None else args.n_trials
    if n_trials < 1:
        raise SwiprError(f"--n-trials must be 1 or more, got {n_trials}")
    timeout = args.timeout if args.timeout is not None else (study_file.study.timeout or None)
    if timeout is not None and (timeout <= 0 or not math.isfinite(timeout)):
        raise SwiprError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    slots = make_slots(getattr(args, "workers", None), getattr(args, "gpus", None),
                       getattr(args, "trials_per_gpu", None))
    parallel = getattr(args, "workers", None) is not None or getattr(args, "gpus", None) is not None
    address = getattr(args, "dask", None) or study_file.cluster.dask
    if address and parallel:
        raise SwiprError("give --dask (or [cluster] dask, $SWIPR_DASK) or --workers/--gpus, not both")
    # On Dask the workers' GPUs count, not this machine's: the engine checks the cluster's.
    device = args.device or study_file.train.device
    cluster = open_cluster(address, device) if address else None
    if cluster is None:
        device = _device(device, slots)
    else:
        device = cluster.device
    _quiet_optuna()

    # A typo in the arch or an offline hub should fail now, not after the image cache is built.
    check_model(ModelSpec(study_file.model.arch, study_file.model.pretrained, study_file.model.weights))
    dataset = prepare_data(data_spec(study_file))
    counts = dataset.split.counts()
    print(f"data: {len(dataset.split)} images, YES {counts['YES']}, NO {counts['NO']}, "
          f"valid {counts['valid']}, fingerprint {dataset.fingerprint}")
    study = open_study(study_file, create=True)
    check_fingerprint(study, dataset, study_file)
    done_before = len(study.trials)   # before the warm start's enqueued trials, which this run runs
    if enqueue_warm_start(study, study_file):
        print("warm start: the notebook's configurations go first")
    where = f" on {len(slots)} worker{'s' if len(slots) != 1 else ''}" if parallel else ""
    where = f" on the Dask cluster at {address}" if address else where
    print(f"study '{study.study_name}' in {redact(study_file.study.storage)}: "
          f"{done_before} trials so far, running {n_trials} more{where}", flush=True)
    if not supports_heartbeat(study_file.study.storage):
        print(NO_HEARTBEAT_NOTE, flush=True)

    status = 0
    if cluster is not None:
        status = run_on_dask(cluster, study_file, n_trials, timeout)
    elif parallel:
        status = supervise(study_file.path, study_file.study.storage, slots, n_trials, timeout, device)
    else:
        from search.artifacts import make_objective_hooks

        progress = StudyProgress(n_trials)
        try:
            run_worker(study_file, dataset, n_trials=n_trials, timeout=timeout, device=device,
                       hooks=[progress, *make_objective_hooks(study_file, study)], callbacks=[progress])
        finally:
            progress.close()
    this_run = [t.number for t in study.get_trials(deepcopy=False) if t.number >= done_before]
    print(summary_table(study, device, this_run=this_run))
    _print_best(study)
    return status


def _device(device: str, slots) -> str:
    """With --gpus each process sees only its GPU, which is cuda (cuda:0) to it."""
    from swipr_core.errors import SwiprError

    if slots[0].gpu is None:
        return device
    if device == "cpu":
        raise SwiprError("--gpus runs trials on GPUs, but the device is cpu ([train] device or --device)")
    import torch

    visible = torch.cuda.device_count()   # counts without initialising CUDA in this process
    missing = sorted({slot.gpu for slot in slots if slot.gpu >= visible})
    if missing:
        raise SwiprError(f"--gpus names GPU {', '.join(map(str, missing))}, but this machine has {visible} "
                         f"CUDA GPU{'s' if visible != 1 else ''} visible")
    return "cuda"


def _print_best(study) -> None:
    try:
        trial = study.best_trial
    except ValueError:
        print("no trial completed yet")
        return
    print(f"best: trial {trial.number} val_loss {trial.value:.4f} params {json.dumps(trial.params)}")
