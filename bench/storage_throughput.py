"""Storage throughput: many worker processes, a trivial objective, no trial lost or doubled.

    .venv/bin/python bench/storage_throughput.py                 # both storages
    .venv/bin/python bench/storage_throughput.py --trials 2000 --postgres-url postgresql://u:p@host/db

Each worker opens the storage the way `swipr study run` workers do (heartbeats on, a sampler
seed of its own) and runs its share of the trials. PostgreSQL: a throwaway server on loopback
(tests/pg.py) unless --postgres-url names one (its database must be empty). Single machine:
SQLite in WAL mode in a temp folder. Prints trials per second for each, from the first
trial's start to the last one's end as the storage recorded them (process start-up excluded),
and fails if any trial is missing, doubled or left running, or a configuration repeats.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _worker(url: str, slot: int, n_trials: int, sampler: str, ready, go) -> None:
    import optuna

    from search.study.samplers import make_sampler
    from search.study.storage import Heartbeat, open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="bench", storage=open_storage(url, heartbeat=Heartbeat(interval=60, grace_period=180)))
    study.sampler = make_sampler(sampler, 0)   # every worker the study seed, as swipr's do
    ready.release()
    go.wait()

    def objective(trial):
        return (trial.suggest_float("x", -10, 10) - 2) ** 2 + trial.suggest_float("y", -10, 10) ** 2

    study.optimize(objective, n_trials=n_trials)


def run(url: str, workers: int, trials: int, sampler: str) -> float:
    import optuna

    from search.study.storage import open_storage
    from search.studyfile.url_text import redact

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name="bench", storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    ready, go = context.Semaphore(0), context.Event()
    share = math.ceil(trials / workers)
    processes = [context.Process(target=_worker, args=(url, i, share, sampler, ready, go)) for i in range(workers)]
    for p in processes:
        p.start()
    for _ in processes:
        ready.acquire()
    started = time.perf_counter()
    go.set()
    for p in processes:
        p.join()
    wall = time.perf_counter() - started
    if any(p.exitcode != 0 for p in processes):
        raise SystemExit(f"a worker failed: exit codes {[p.exitcode for p in processes]}")

    done = optuna.load_study(study_name="bench", storage=open_storage(url, create=False)).trials
    expected = share * workers
    numbers = sorted(t.number for t in done)
    states = {t.state.name for t in done}
    configs = {(t.params["x"], t.params["y"]) for t in done}
    ok = numbers == list(range(expected)) and states == {"COMPLETE"} and len(configs) == expected
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    rate = expected / (last - first).total_seconds()
    print(f"{redact(url)}: {workers} workers, {len(done)} trials (expected {expected}), states {sorted(states)}, "
          f"{len(configs)} distinct configs -> {'OK' if ok else 'LOST OR DUPLICATED'}; "
          f"{rate:.1f} trials/s ({expected / wall:.1f} trials/s wall, {wall:.1f} s)", flush=True)
    if not ok:
        raise SystemExit(1)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--pg-workers", type=int, default=16)
    parser.add_argument("--sqlite-workers", type=int, default=8)
    parser.add_argument("--sampler", default="random", choices=("random", "tpe"),
                        help="random measures the storage; tpe adds the sampler's own cost")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database (default: a throwaway server)")
    parser.add_argument("--only", choices=("postgres", "sqlite"))
    args = parser.parse_args()

    if args.only != "postgres":
        with tempfile.TemporaryDirectory() as folder:
            run(f"sqlite:///{folder}/bench.db", args.sqlite_workers, args.trials, args.sampler)
    if args.only != "sqlite":
        if args.postgres_url:
            run(args.postgres_url, args.pg_workers, args.trials, args.sampler)
            return
        from tests import pg

        reason = pg.why_unavailable()
        if reason:
            raise SystemExit(f"postgres: skipped: {reason}")
        server = pg.Server().start()
        try:
            run(server.create_database("bench"), args.pg_workers, args.trials, args.sampler)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
