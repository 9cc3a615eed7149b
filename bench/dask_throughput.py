"""The Dask engine's cost: trivial trials through a local Dask cluster against the local
`--workers` path at the same parallelism, and what one epoch's report costs each way.

    .venv/bin/python bench/dask_throughput.py                  # 300 trials, 2 slots
    .venv/bin/python bench/dask_throughput.py --trials 1000 --slots 4 --local-trials 100

Dask: a scheduler and K one-thread workers on 127.0.0.1 (tests/daskkit.py); the driver is
`search.running.dask_driver.Driver`, unchanged except that its task is trivial (it opens the study
through DaskStorage, takes the params the driver asked for, reports once, tells). Local: the
`--workers` shape, a fresh forkserver process per trial that opens the SQLite storage with
heartbeats and runs one trial. Both on SQLite (WAL) in a temp folder, with the random sampler
(the engine is measured, not TPE). "ms a trial a slot" is K x wall / trials. The engine's
overhead a trial is the wall time a trial less the same storage work done inline (the same
calls, one after another, in one process, no engine). Then the cost of one epoch's
report (trial.report + should_prune with the median pruner on the finished study): from a
Dask worker through DaskStorage, and straight to SQLite and (when a server can be started)
PostgreSQL.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objectives.optuna_compat import attach, trial_id  # noqa: E402 - after the path is set
from objectives.space import distribution  # noqa: E402 - after the path is set

REPORTS = 200


def trivial_task(task) -> dict:
    """Pickled by value to the workers: one trial through DaskStorage, no training."""
    import optuna
    from optuna_integration.dask import DaskStorage

    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = DaskStorage(name=task.storage_name, register=False)
    study = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler())
    trial = optuna.Trial(study, task.trial_id)
    value = (math.log10(trial.suggest_float("lr", 1e-3, 3e-2, log=True)) + 2) ** 2
    trial.report(value, 0)
    study.tell(trial, value)
    return {"outcome": "COMPLETE", "worker": "bench", "host": "bench", "gpu": None,
            "seconds": time.perf_counter() - started}


def report_cost(storage) -> float:
    """ms per trial.report + should_prune (median pruner) on a fresh trial of the study."""
    import optuna

    study = optuna.load_study(study_name="bench", storage=storage, pruner=optuna.pruners.MedianPruner(0, 0))
    trial = study.ask()
    started = time.perf_counter()
    for step in range(REPORTS):
        trial.report(1.0 / (step + 1), step)
        trial.should_prune()
    elapsed = time.perf_counter() - started
    study.tell(trial, 0.5)
    return 1000 * elapsed / REPORTS


def report_cost_task(storage_name: str) -> float:
    from optuna_integration.dask import DaskStorage

    return report_cost(DaskStorage(name=storage_name, register=False))


def _study_file(folder: Path):
    from search.studyfile import load_study_file
    from tests.studykit import SPACE, study_toml

    path = folder / "bench.toml"
    space = SPACE.replace("batch_size = [16, 32]", "batch_size = [16]")   # lr the only param
    path.write_text(study_toml(folder, name="bench", space=space, sampler="random"))
    return load_study_file(path)


def dask_run(folder: Path, trials: int, slots: int) -> tuple[float, float]:
    """(trials/s, ms per report through DaskStorage) on a fresh local cluster."""
    import optuna

    from search.running.dask_driver import Driver
    from search.running.dask_engine import connect, register_storage
    from search.study.storage import open_storage
    from tests.daskkit import Cluster

    study_file = _study_file(folder)
    optuna.create_study(study_name="bench", storage=open_storage(study_file.study.storage))
    with Cluster(workers=slots) as cluster:
        client = connect(cluster.address)
        storage = register_storage(client, cluster.address, study_file.study.storage, "bench")
        study = optuna.load_study(study_name="bench", storage=open_storage(study_file.study.storage),
                                  sampler=optuna.samplers.RandomSampler(0))
        driver = Driver(client, study, study_file, storage.name, "cpu")
        driver.task_function = trivial_task
        with contextlib.redirect_stdout(io.StringIO()):   # a line a trial
            driver.run(slots * 2, None)   # warm-up: each worker's first task imports optuna
            started = time.perf_counter()
            status = driver.run(trials, None)
            wall = time.perf_counter() - started
        per_report = client.submit(report_cost_task, storage.name, pure=False).result()
        client.close()
    done = optuna.load_study(study_name="bench", storage=open_storage(study_file.study.storage)).trials
    states = {t.state.name for t in done}
    ok = status == 0 and len(done) == trials + slots * 2 + 1 and states == {"COMPLETE"}
    _print("dask", trials, slots, wall, ok, f"{len(done)} trials, states {sorted(states)}")
    return trials / wall, per_report


def _one_trial(url: str) -> None:
    import optuna

    from search.study.storage import Heartbeat, open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, create=False, heartbeat=Heartbeat(interval=60, grace_period=180))
    study = optuna.load_study(study_name="bench", storage=storage,
                              sampler=optuna.samplers.RandomSampler())

    def objective(trial):
        value = (math.log10(trial.suggest_float("lr", 1e-3, 3e-2, log=True)) + 2) ** 2
        trial.report(value, 0)
        return value

    study.optimize(objective, n_trials=1)


def local_run(folder: Path, trials: int, slots: int) -> float:
    """trials/s with a fresh forkserver process per trial, `slots` at a time (--workers)."""
    import optuna

    from search.study.storage import open_storage

    url = f"sqlite:///{folder}/local.db"
    optuna.create_study(study_name="bench", storage=open_storage(url))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["optuna", "search.study.storage", "sqlalchemy"])
    context.Process(target=_one_trial, args=(url,)).start()   # warm the forkserver up; not timed
    time.sleep(3)
    started = time.perf_counter()
    running, left = [], trials
    while left or running:
        while left and len(running) < slots:
            process = context.Process(target=_one_trial, args=(url,))
            process.start()
            running.append(process)
            left -= 1
        multiprocessing.connection.wait([p.sentinel for p in running], timeout=1.0)
        for process in [p for p in running if not p.is_alive()]:
            process.join()
            running.remove(process)
    wall = time.perf_counter() - started
    done = optuna.load_study(study_name="bench", storage=open_storage(url)).trials
    ok = len(done) == trials + 1 and {t.state.name for t in done} == {"COMPLETE"}
    _print("local --workers", trials, slots, wall, ok, f"{len(done)} trials")
    return trials / wall


def inline_run(folder: Path, trials: int) -> float:
    """ms a trial for the storage work alone: the driver's ask and mark, the task's load, suggest,
    report and tell, one after another in this process on SQLite (no engine, no parallelism)."""
    import optuna

    from search.study.orphans import DASK_TOKEN_ATTR
    from search.study.storage import open_storage

    study_file = _study_file(folder)
    storage = open_storage(study_file.study.storage)
    optuna.create_study(study_name="bench", storage=storage)
    driver = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler(0))
    distributions = {name: distribution(spec) for name, spec in study_file.space.items()}
    started = time.perf_counter()
    for _ in range(trials):
        asked = driver.ask(distributions)
        storage.set_trial_system_attr(trial_id(asked), DASK_TOKEN_ATTR, "bench")
        study = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler())
        trial = attach(study, trial_id(asked))
        value = (math.log10(trial.suggest_float("lr", 1e-3, 3e-2, log=True)) + 2) ** 2
        trial.report(value, 0)
        study.tell(trial, value)
        storage.get_trial(trial_id(asked))
    per_trial = 1000 * (time.perf_counter() - started) / trials
    print(f"inline (storage work only, one process): {per_trial:.1f} ms a trial", flush=True)
    return per_trial


def _print(name: str, trials: int, slots: int, wall: float, ok: bool, detail: str) -> None:
    print(f"{name}: {slots} slots, {trials} trivial trials in {wall:.1f} s -> {trials / wall:.1f} trials/s, "
          f"{1000 * slots * wall / trials:.1f} ms a trial a slot; {detail} -> {'OK' if ok else 'LOST OR FAILED'}",
          flush=True)
    if not ok:
        raise SystemExit(1)


def direct_report_costs(folder: Path) -> dict[str, float]:
    """ms per report straight to SQLite, and to a throwaway PostgreSQL when one can start."""
    import optuna

    from search.study.storage import open_storage

    costs = {"sqlite": report_cost(open_storage(f"sqlite:///{folder}/local.db"))}
    from tests import pg

    if pg.why_unavailable() is None:
        server = pg.Server().start()
        try:
            url = server.create_database("bench")
            optuna.copy_study(from_study_name="bench", from_storage=open_storage(f"sqlite:///{folder}/local.db"),
                              to_storage=open_storage(url))
            costs["postgresql"] = report_cost(open_storage(url))
        finally:
            server.stop()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--local-trials", type=int, default=60,
                        help="trials for the local path, whose process a trial makes it slow to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "dask").mkdir()
        dask_rate, dask_report = dask_run(folder / "dask", args.trials, args.slots)
        local_rate = local_run(folder, args.local_trials, args.slots)
        (folder / "inline").mkdir()
        inline = inline_run(folder / "inline", args.trials)
        direct = direct_report_costs(folder)
    print(f"engine overhead a trial (wall a trial at {args.slots} slots less the inline storage work): "
          f"dask {1000 / dask_rate - inline:.1f} ms, local --workers {1000 / local_rate - inline:.1f} ms "
          f"(target for dask: under 50 ms)")
    print(f"one report (trial.report + should_prune, median pruner, ~{args.trials} trials in the study): "
          f"DaskStorage {dask_report:.2f} ms, " + ", ".join(f"{k} direct {v:.2f} ms" for k, v in direct.items()))


if __name__ == "__main__":
    main()
