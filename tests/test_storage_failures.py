"""A storage on a bad day: a disk that fills mid-run, the database file deleted or replaced
under a run, PostgreSQL stopped mid-trial, read-only media, an error log that can't be
written. Each ends in one line, the right exit status, nothing left RUNNING for ever."""
from __future__ import annotations

import logging
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.trial import TrialState

from objectives.trial_attrs import attrs_of
from search.running.failures import FailureGuard, TracebacksToLog, TrialFailed
from search.study import guarded
from search.study.guarded import StorageFailed
from search.study.storage import open_storage
from tests import pg
from tests.studykit import run_cli, space_toml, write_study

QUICK_HEARTBEAT = "heartbeat_interval = 1\ngrace_period = 2\n"


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a disk that fills up."""
    folder = tmp_path / "small"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave_kb: int) -> Path:
    """Fill the disk under `folder` but for `leave_kb` KB."""
    free_kb = shutil.disk_usage(folder).free // 1024
    filler = folder / "filler"
    with open(filler, "wb") as file:
        file.write(b"\0" * max(0, free_kb - leave_kb) * 1024)
    return filler


def trials_of(url: str, name: str = "t") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False)).trials


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and "Should not reach" not in text, text


def when_it_counts(database, query: str, action, timeout: float = 240) -> None:
    """Poll the study's SQLite file (read-only) until `query` counts a row, then `action()`: how a
    test strikes at one moment inside a running `swipr study run`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
                counted = connection.execute(query).fetchone()[0]
        except sqlite3.Error:   # no tables yet
            counted = 0
        if counted:
            action()
            return
        time.sleep(0.05)


def test_a_disk_that_fills_mid_run_stops_in_one_line_and_its_trial_is_retried(small_disk, tmp_path, data_dir,
                                                                              capfd):
    # The study (database, error log) on a small disk that fills after one trial (the warm start's):
    # the second trial can't even write its first heartbeat. One line, exit 1; the next run fails that
    # trial and retries it, so nothing stays RUNNING.
    study = write_study(small_disk, data_dir, warm_start=True,
                        extra={"study": QUICK_HEARTBEAT, "data": f'cache_dir = "{tmp_path / "cache"}"\n'})
    url = f"sqlite:///{small_disk / 'study.db'}"
    assert run_cli("study", "run", study, "--n-trials", "1").returncode == 0
    filler = fill(small_disk, leave_kb=48)
    full = run_cli("study", "run", study, "--n-trials", "2")
    seen = capfd.readouterr()
    assert full.returncode == 1, full.stdout + full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("swipr:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and str(small_disk) in errors[0], full.stdout + full.stderr
    no_traceback(full.stdout, full.stderr, seen.out, seen.err)
    # The summary is still printed (docs/promises.md): the storage can be read though not written.
    assert "no summary" not in full.stdout and "\nstudy 't'\n" in full.stdout, full.stdout
    assert re.search(r"trials +\d+ \(\d+ complete", full.stdout), full.stdout
    filler.unlink()
    left = [t.number for t in trials_of(url) if t.state == TrialState.RUNNING]
    time.sleep(2.5)   # the grace period, after which no live worker can own a silent trial
    again = run_cli("study", "run", study, "--n-trials", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    trials = trials_of(url)
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == []
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for number in left:   # failed as its dead worker's, and retried
        assert trials[number].state == TrialState.FAIL and number in retried
    # The second trial, which the full disk stopped, has run after all, as its retry.
    assert any(t.state == TrialState.COMPLETE for t in trials if t.system_attrs.get("failed_trial") in left), \
        [(t.number, t.state.name, t.system_attrs.get("failed_trial"), attrs_of(t).get("fail_reason")) for t in trials]


def test_a_disk_that_fills_mid_trial_still_prints_the_summary(small_disk, tmp_path, data_dir):
    # Full to the last byte once trial 0 has reported an epoch: the run stops in one line
    # (exit 1), and the summary, which only reads the study, is printed before it.
    study = write_study(small_disk, data_dir, space=SLOW_SPACE,
                        extra={"study": QUICK_HEARTBEAT, "data": f'cache_dir = "{tmp_path / "cache"}"\n'})
    database = small_disk / "study.db"

    filler = threading.Thread(target=when_it_counts, args=(database, "SELECT count(*) FROM trial_intermediate_values",
                                                           lambda: fill(small_disk, leave_kb=0)))
    filler.start()
    result = run_cli("study", "run", study, "--n-trials", "2")
    filler.join()
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("swipr:")]
    assert len(errors) == 1 and "the disk is full" in errors[0], result.stderr
    assert "no summary" not in result.stdout, result.stdout + result.stderr
    assert re.search(r"^trials +1 \(0 complete", result.stdout, re.M), result.stdout
    no_traceback(result.stdout, result.stderr)


def test_a_full_disk_at_the_storage_is_one_line_for_a_plain_study(small_disk):
    # The same, under the storage alone: the write that hits the full disk raises StorageFailed
    # with the folder named; the heartbeat thread says nothing and dies not.
    url = f"sqlite:///{small_disk / 'plain.db'}"
    storage = open_storage(url)
    study = optuna.create_study(study_name="t", storage=storage)
    fill(small_disk, leave_kb=0)
    with pytest.raises(StorageFailed, match=r"the disk is full \("):
        for _ in range(200):
            study.set_user_attr("padding", "x" * 4096)
            study.set_user_attr("more", "y" * 4096)


def test_a_database_deleted_mid_run_stops_the_run(tmp_path, data_dir):
    # Deleted while trial 0 runs: the run stops, instead of writing on into the unlinked file and
    # exiting 0 with a summary of trials that exist nowhere.
    study = write_study(tmp_path, data_dir, extra={"study": QUICK_HEARTBEAT})
    database = tmp_path / "study.db"

    deleter = threading.Thread(target=when_it_counts, args=(database, "SELECT count(*) FROM trials WHERE state = "
                                                            "'RUNNING'", database.unlink))
    deleter.start()
    result = run_cli("study", "run", study, "--n-trials", "3")
    deleter.join()
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("swipr:")]
    assert len(errors) == 1 and "deleted or replaced" in errors[0] and str(database) in errors[0], result.stderr
    no_traceback(result.stdout, result.stderr)


def test_a_database_replaced_under_the_storage_is_noticed(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    shutil.copy(tmp_path / "s.db", tmp_path / "copy.db")
    (tmp_path / "copy.db").replace(tmp_path / "s.db")   # same name, another file
    with pytest.raises(StorageFailed, match="deleted or replaced"):
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)


def test_a_study_on_read_only_media_can_be_read(small_disk, data_dir, tmp_path):
    study = write_study(small_disk, data_dir)
    url = f"sqlite:///{small_disk / 'study.db'}"
    storage = open_storage(url)
    optuna.create_study(study_name="t", storage=storage).optimize(
        lambda trial: trial.suggest_float("lr", 1e-3, 3e-2), n_trials=2)
    storage.engine.dispose()   # no file of the study open here: the mount can be made read-only
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    assert remounted.returncode == 0, remounted.stderr
    status = run_cli("study", "status", study)
    assert status.returncode == 0, status.stderr
    assert "2 trials (2 complete)" in status.stdout
    best = run_cli("study", "best", study, "--json")
    assert best.returncode == 0 and '"number"' in best.stdout, best.stderr
    # The report only reads the study too (opened for writing it fails: "unable to open
    # database file"); its page goes to a writable folder elsewhere.
    report = run_cli("study", "report", study, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    assert "2 complete" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")


def test_an_error_log_that_cant_be_written_costs_no_trial(tmp_path, capsys):
    # The log's folder is gone (as a full disk's writes are): the trial still fails alone, with
    # its reason, and the log's trouble is said once.
    log = tmp_path / "gone" / "study.errors.log"
    study = optuna.create_study()

    def broken(trial):
        raise ZeroDivisionError("division by zero")

    study.optimize(FailureGuard(broken, log), n_trials=2, catch=(TrialFailed,))
    assert [attrs_of(t)["fail_reason"] for t in study.trials] == ["ZeroDivisionError: division by zero"] * 2
    try:
        raise ValueError("from Optuna's loop")
    except ValueError:
        record = logging.LogRecord("optuna", logging.WARNING, __file__, 1, "Trial 2 failed", None, sys.exc_info())
    assert TracebacksToLog(log).filter(record) is False
    assert capsys.readouterr().err.count(f"can't write the error log {log}") == 1


def test_a_run_counts_only_the_trials_it_ran(tmp_path, data_dir):
    # Another run on the same study adds a trial while this one runs: it is not "in this run".
    study = write_study(tmp_path, data_dir)
    database = tmp_path / "study.db"
    url = f"sqlite:///{database}"

    def another_run() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
                    running = connection.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()
            except sqlite3.Error:   # not created yet
                running = [0]
            if running[0]:
                storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
                other = optuna.load_study(study_name="t", storage=storage, sampler=optuna.samplers.RandomSampler())
                trial = other.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)})
                other.tell(trial, 1.0)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=another_run)
    thread.start()
    result = run_cli("study", "run", study, "--n-trials", "1")
    thread.join()
    assert result.returncode == 0, result.stderr
    assert len(trials_of(url)) == 2
    assert "in this run (1 trial)" in result.stdout, result.stdout


def test_a_zero_trial_report_prints_no_optuna_warnings(tmp_path, data_dir, capfd):
    study = write_study(tmp_path, data_dir)
    optuna.create_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"))
    capfd.readouterr()
    result = run_cli("study", "report", study, "--out", tmp_path / "report")
    seen = capfd.readouterr()
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report" / "report.html").is_file()
    assert result.stderr == "" and "[W " not in seen.err, seen.err


SLOW_SPACE = space_toml(batch_size="[16]", n_cycles="[3]")


@pytest.mark.slow
def test_postgres_stopped_mid_trial_is_retried_and_the_run_ends_cleanly(tmp_path, data_dir, capfd, monkeypatch):
    # The server stops for a few seconds while trial 0 trains: one line when the connection is
    # lost, one when it is back, the trial goes on, the run ends with its summary. A server that
    # stays away longer than RETRY_FOR_S stops the run with one line.
    reason = pg.why_unavailable()
    if reason:
        pytest.skip(reason)
    server = pg.Server().start()
    try:
        url = server.create_database("outage")
        study = write_study(tmp_path, data_dir, space=SLOW_SPACE,
                            extra={"study": f'storage = "{url}"\nheartbeat_interval = 1\ngrace_period = 30\n'})

        def outage_once_a_trial_reports() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    connection = psycopg2.connect(host="127.0.0.1", port=server.port, user=pg.USER,
                                                  password=pg.PASSWORD, dbname="outage")
                    with connection, connection.cursor() as cursor:
                        cursor.execute("SELECT count(*) FROM trial_intermediate_values")
                        reported = cursor.fetchone()[0]
                    connection.close()
                    if reported:
                        server.halt()
                        time.sleep(4)
                        server.resume()
                        return
                except psycopg2.Error:   # no tables yet
                    pass
                time.sleep(0.1)

        outage = threading.Thread(target=outage_once_a_trial_reports)
        outage.start()
        result = run_cli("study", "run", study, "--n-trials", "1")
        outage.join()
        seen = capfd.readouterr()
        assert result.returncode == 0, result.stdout + result.stderr
        no_traceback(result.stdout, result.stderr, seen.out, seen.err)
        assert result.stderr.count("lost the connection") == 1, result.stderr
        assert result.stderr.count("connection back after") == 1, result.stderr
        assert re.search(r"^trials +1 \(1 complete", result.stdout, re.M), result.stdout   # the summary, after the outage
        trials = trials_of(url)
        assert [t.state for t in trials] == [TrialState.COMPLETE] and len(trials[0].intermediate_values) == 3

        # Away for good: retried for RETRY_FOR_S, then one StorageFailed.
        monkeypatch.setattr(guarded, "RETRY_FOR_S", 2)
        storage = open_storage(url, create=False)
        server.halt()
        with pytest.raises(StorageFailed, match="did not come back in 2 s"):
            storage.get_all_trials(storage.get_study_id_from_name("t"))
    finally:
        server.stop()

