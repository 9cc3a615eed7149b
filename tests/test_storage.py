"""Storage: plain PostgreSQL URLs, SQLite in WAL mode, many worker processes on one study,
and a password that never shows."""
from __future__ import annotations

import multiprocessing
import sqlite3
from urllib.parse import quote

import optuna
import psycopg2
import pytest
from psycopg2 import sql

from search.study.open import open_study
from search.study.samplers import make_sampler
from search.study.storage import Heartbeat, open_storage, redact_output
from search.studyfile.url_text import redact
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from tests import pg
from tests.studykit import one_line_error, run_cli, write_study


def _trivial_worker(url: str, slot: int, n_trials: int) -> None:
    # What a worker does, minus the training: heartbeats on, the study's sampler with the
    # study's seed (search.study.samplers seeds each trial by its number).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, heartbeat=Heartbeat(interval=5, grace_period=20))
    study = optuna.load_study(study_name="s", storage=storage)
    study.sampler = make_sampler("tpe", 0)

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


# A password with an unencoded "@" and "/" whose wrong split still lands on loopback.
TRICKY = "postgresql://swipr:Hunter2_ZQX$p@localhost/w%rd@127.0.0.1:9/db"


def test_no_part_of_a_tricky_password_is_shown(capsys):
    # No single split: everything before the last "@" is hidden, the user name too.
    assert redact(TRICKY) == "postgresql://***@127.0.0.1:9/db"
    for piece in ("Hunter2", "ZQX", "w%rd", "localhost/"):
        assert piece not in redact(TRICKY)
    assert redact("mysql://u:p@ss@") == "mysql://***@"
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


def _role_with_password(server, name: str, password: str) -> str:
    """A role and its own database on `server`; the URL with the password percent-encoded."""
    connection = psycopg2.connect(host="127.0.0.1", port=server.port, user=pg.USER, password=pg.PASSWORD,
                                  dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)), (password,))
        cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    connection.close()
    return f"postgresql://{name}:{quote(password, safe='')}@127.0.0.1:{server.port}/{name}"


def test_a_percent_encoded_password_opens_a_real_server(pg_server, capsys):
    # '#', '@', '/' and '%' percent-encoded, as the refusal of an unencoded '@' asks: accepted,
    # and the study works on a real server.
    url = _role_with_password(pg_server, "swipr_encoded", "Pa#ss@wo/rd%9z")
    assert "%23" in url and "%40" in url and "%2F" in url and "%25" in url
    study = optuna.create_study(study_name="enc", storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="enc", storage=open_storage(url, create=False)).trials) == 2
    assert redact(url) == f"postgresql://swipr_encoded:***@127.0.0.1:{pg_server.port}/swipr_encoded"


@pytest.mark.parametrize("url, problem", [
    ("postgresql://u:Secret-Pw1@127.0.0.1:abc/db", "the port 'abc' is not a number"),
    ("postgresql://u:Secret-Pw1@[::1/db", "'[' of the IPv6 host '[::1' is not closed"),
])
def test_an_unreadable_host_or_port_is_one_line(tmp_path, data_dir, url, problem):
    study = write_study(tmp_path, data_dir, extra={"study": f'storage = "{url}"\n'})
    error = one_line_error(run_cli("study", "status", study))
    assert problem in error and "Secret-Pw1" not in error


def test_a_study_name_over_the_postgres_limit_is_refused_at_load(tmp_path, data_dir, pg_url):
    storage = {"study": f'storage = "{pg_url}"\n'}
    too_long = write_study(tmp_path, data_dir, "long.toml", name="n" * 513, extra=storage)
    for command in ("run", "status"):
        error = one_line_error(run_cli("study", command, too_long))
        assert "long.toml: [study] name: 513 characters" in error and "at most 512" in error
    # 512 is the limit itself: such a study is created and kept.
    longest = write_study(tmp_path, data_dir, "longest.toml", name="n" * 512, extra=storage)
    assert open_study(load_study_file(longest)).study_name == "n" * 512
    # SQLite has no such limit.
    sqlite = write_study(tmp_path, data_dir, "sqlite.toml", name="n" * 600)
    assert open_study(load_study_file(sqlite)).study_name == "n" * 600


@pytest.mark.parametrize("flag", ["--dask", "--device"])
def test_an_empty_flag_is_refused_not_taken_as_the_default(tmp_path, data_dir, flag):
    study = write_study(tmp_path, data_dir)
    assert f"{flag} is empty" in one_line_error(run_cli("study", "run", study, flag, ""))
