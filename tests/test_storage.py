"""Storage: plain PostgreSQL URLs, SQLite in WAL mode, many worker processes on one study,
and a password that never shows."""
from __future__ import annotations

import multiprocessing
import sqlite3

import optuna
import pytest

from search.study.storage import Heartbeat, open_storage, redact, redact_output
from search.study.samplers import make_sampler, worker_seed
from swipr_core.errors import SwiprError
from tests import pg


def _trivial_worker(url: str, slot: int, n_trials: int) -> None:
    # What a worker does, minus the training: heartbeats on, a sampler seed of its own.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, heartbeat=Heartbeat(interval=5, grace_period=20))
    study = optuna.load_study(study_name="s", storage=storage)
    study.sampler = make_sampler("tpe", worker_seed(0, "host", slot, len(study.trials)))

    def objective(trial):
        return (trial.suggest_float("x", -10, 10) - 2) ** 2 + trial.suggest_float("y", -10, 10) ** 2

    study.optimize(objective, n_trials=n_trials)


def _run_parallel(url: str, workers: int, per_worker: int) -> list:
    optuna.create_study(study_name="s", storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_trivial_worker, args=(url, i, per_worker)) for i in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0] * workers
    return optuna.load_study(study_name="s", storage=open_storage(url, create=False)).trials


def _assert_all_once(trials, expected: int) -> None:
    assert len(trials) == expected
    assert sorted(t.number for t in trials) == list(range(expected))
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    configs = {(t.params["x"], t.params["y"]) for t in trials}
    assert len(configs) == expected   # no two workers proposed the same configuration


def test_eight_workers_share_one_sqlite_study(tmp_path):
    # 8 processes at once on one SQLite file: no "database is locked", every trial once.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _assert_all_once(_run_parallel(url, workers=8, per_worker=5), 40)
    with sqlite3.connect(tmp_path / "study.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_workers_share_one_postgres_study(pg_url):
    _assert_all_once(_run_parallel(pg_url, workers=6, per_worker=5), 30)


def test_plain_postgres_urls_open(pg_url):
    # As an admin hands them out: postgresql://user:pass@host/db and the older postgres://.
    optuna.create_study(study_name="a", storage=open_storage(pg_url))
    assert optuna.get_all_study_names(open_storage(pg_url.replace("postgresql://", "postgres://"))) == ["a"]


def test_wrong_password_error_names_url_without_password(pg_server):
    url = pg_server.url(password="Wrong-Pass-123")
    with pytest.raises(SwiprError) as caught:
        open_storage(url)
    assert "Wrong-Pass-123" not in str(caught.value)
    assert "password authentication failed" in str(caught.value)
    assert "***" in str(caught.value)


def test_redact_hides_the_password():
    assert redact(f"postgresql://u:{pg.PASSWORD}@h/db") == "postgresql://u:***@h/db"


def test_redacted_output_replaces_the_password(capsys):
    import sys

    saved = sys.stdout, sys.stderr
    try:
        redact_output(f"postgresql://u:{pg.PASSWORD}@h/db")
        print(f"connecting with {pg.PASSWORD}")
        print(f"error: {pg.PASSWORD}", file=sys.stderr)
    finally:
        sys.stdout, sys.stderr = saved
    out, err = capsys.readouterr()
    assert pg.PASSWORD not in out + err
    assert "connecting with ***" in out


def test_worker_seeds_differ_by_slot_and_are_stable():
    assert worker_seed(0, "h", 0, 5) == worker_seed(0, "h", 0, 5)
    assert len({worker_seed(0, "h", slot, 5) for slot in range(16)}) == 16
    assert worker_seed(0, "a", 0, 5) != worker_seed(0, "b", 0, 5)


# A password with an unencoded "@" and "/" whose wrong split still lands on loopback.
TRICKY = "postgresql://swipr:Hunter2_ZQX$p@localhost/w%rd@127.0.0.1:9/db"


def test_no_part_of_a_tricky_password_is_shown(capsys):
    assert redact(TRICKY) == "postgresql://swipr:***@127.0.0.1:9/db"
    for piece in ("Hunter2", "ZQX", "w%rd", "localhost/"):
        assert piece not in redact(TRICKY)
    assert redact("mysql://u:p@ss@") == "mysql://u:***@"
    assert redact("u:secret@somewhere") == "<storage URL hidden: it can't be read as scheme://user:password@host/db>"
    with pytest.raises(SwiprError) as error:
        open_storage(TRICKY)
    assert "percent-encode" in str(error.value)
    for piece in ("Hunter2", "ZQX", "w%rd"):
        assert piece not in str(error.value)


def test_redacted_output_hides_every_form_of_the_password(capsys):
    import sys

    url = "postgresql://u:p%40ss%2Fw@127.0.0.1:9/db"
    stdout = sys.stdout
    try:
        redact_output(url)
        print("raw p%40ss%2Fw decoded p@ss/w")
    finally:
        sys.stdout = stdout
    assert capsys.readouterr().out == "raw *** decoded ***\n"


def _take_queued_trials(url: str, n: int, out) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="queue", storage=open_storage(url, create=False))
    taken = []
    for _ in range(n):
        trial = study.ask()
        taken.append(trial.number)
        try:
            study.tell(trial, 0.0)
        except Exception as error:  # noqa: BLE001 - what a double hand-out looks like
            taken.append(f"{type(error).__name__}: {error}")
    out.put(taken)


def test_each_queued_trial_is_handed_out_once_under_concurrent_workers(tmp_path):
    # Without BEGIN IMMEDIATE, 4 processes taking 40 queued trials took 13-17 of them twice.
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name="queue", storage=open_storage(url))
    for x in range(40):
        study.enqueue_trial({"x": x})
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    processes = [context.Process(target=_take_queued_trials, args=(url, 15, out)) for _ in range(4)]
    for process in processes:
        process.start()
    taken = [number for _ in processes for number in out.get(timeout=120)]
    for process in processes:
        process.join(timeout=60)
    assert [t for t in taken if not isinstance(t, int)] == []
    numbers = [t for t in taken if isinstance(t, int)]
    assert len(numbers) == len(set(numbers)) == 60
    assert set(range(40)) <= set(numbers)   # every queued trial ran, exactly once
