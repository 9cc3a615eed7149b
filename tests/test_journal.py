"""Optuna's journal file as a study's storage: run, continue, status, best, dashboard, bad paths."""
from __future__ import annotations

import contextlib
import json
import threading
import urllib.request

import pytest

from objectives.optuna_compat import storage_of, study_id
from search.study.storage import NO_HEARTBEAT_NOTE, open_storage, supports_heartbeat
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from tests.studykit import one_line_error, run_cli, write_study

# One pytest-xdist worker runs this module, so its module-scoped study is built once.
pytestmark = pytest.mark.xdist_group("journal")


def journal_study(folder, storage: str, filename: str = "study.toml"):
    return write_study(folder, folder / "data", filename=filename, pruner="none",
                       extra={"study": f'storage = "{storage}"\n'})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """2 trials, then 1 more, on journal:///runs/study.log: a path relative to the study file."""
    folder = tmp_path_factory.mktemp("journal")
    (folder / "runs").mkdir()
    study = journal_study(folder, "journal:///runs/study.log")
    with contextlib.chdir(folder / "runs"):   # cwd must not matter
        first = run_cli("study", "run", study, "--n-trials", "2")
    assert first.returncode == 0, first.stderr
    second = run_cli("study", "run", study, "--n-trials", "1")
    assert second.returncode == 0, second.stderr
    return folder, study, first, second


def test_run_writes_the_journal_beside_the_study_file_and_continues_it(finished):
    folder, study, first, second = finished
    log = folder / "runs" / "study.log"
    assert log.is_file() and not (folder / "study.db").exists()
    assert f"journal:///{log}" in first.stdout
    assert "0 trials so far" in first.stdout and "2 trials so far" in second.stdout
    # No heartbeats on a journal: said once per run, and the run still succeeds.
    assert first.stdout.count(NO_HEARTBEAT_NOTE) == 1
    assert first.stderr.strip() == ""
    # The journal is Optuna's: JSON lines, one operation each.
    assert all(json.loads(line)["op_code"] is not None for line in log.read_text().splitlines())


def test_status_and_best_read_the_journal(finished):
    _, study, *_ = finished
    status = run_cli("study", "status", study, "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["trials"]
    assert [row["number"] for row in rows] == [0, 1, 2]
    assert all(row["state"] == "COMPLETE" for row in rows)
    best = json.loads(run_cli("study", "best", study, "--json").stdout)
    assert best["value"] == min(row["value"] for row in rows)
    assert best["number"] == next(row["number"] for row in rows if row["value"] == best["value"])


def test_the_dashboard_serves_the_journal_study(finished):
    from search.views.dashboard import make_dashboard_server

    _, study, *_ = finished
    server, opened = make_dashboard_server(load_study_file(study), port=0)
    assert type(storage_of(opened)).__name__ == "JournalStorage"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/api/studies"
        with urllib.request.urlopen(f"{base}/{study_id(opened)}", timeout=30) as answer:
            served = json.load(answer)
    finally:
        server.shutdown()
        server.server_close()
    assert served["name"] == "t" and len(served["trials"]) == 3


def test_a_missing_journal_is_one_line_error_and_no_file(tmp_path):
    study = journal_study(tmp_path, "never.log")
    for command in ("status", "best"):
        error = one_line_error(run_cli("study", command, study))
        assert "no such journal file" in error and "run `swipr study run` first" in error
    assert not (tmp_path / "never.log").exists()


def test_a_journal_in_a_missing_folder_is_one_line_error(tmp_path):
    study = journal_study(tmp_path, "journal:///no/such/folder/study.log")
    error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert f"folder {tmp_path / 'no/such/folder'} does not exist" in error
    assert not (tmp_path / "no").exists()


def test_a_file_that_is_not_a_journal_is_refused_and_kept(tmp_path):
    other = tmp_path / "notes.log"
    other.write_text("not json\nat all\n")
    with pytest.raises(SwiprError, match="can't open it as a journal file"):
        open_storage(f"journal:///{other}")
    assert other.read_text() == "not json\nat all\n"


def test_journal_paths_resolve_like_sqlite_paths(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_study(tmp_path, data)   # the demo data, once
    monkeypatch.delenv("SWIPR_STORAGE", raising=False)
    monkeypatch.chdir(data)       # relative paths follow the study file, not the cwd

    def url(storage: str) -> str:
        (tmp_path / "s.toml").write_text((tmp_path / "study.toml").read_text().replace(
            'name = "t"\n', f'name = "t"\nstorage = "{storage}"\n'))
        return load_study_file(tmp_path / "s.toml").study.storage

    assert url("journal:///runs/a.log") == f"journal:///{tmp_path / 'runs' / 'a.log'}"
    assert url("journal:////abs/a.log") == "journal:////abs/a.log"
    assert url("b.journal") == f"journal:///{tmp_path / 'b.journal'}"
    assert url("../c.log") == f"journal:///{tmp_path.parent / 'c.log'}"
    assert url("sqlite:///d.db") == f"sqlite:///{tmp_path / 'd.db'}"   # unchanged
    monkeypatch.setenv("SWIPR_STORAGE", "e.log")   # from the environment: relative to the cwd
    assert load_study_file(tmp_path / "s.toml").study.storage == f"journal:///{data / 'e.log'}"
    assert not supports_heartbeat(f"journal:///{data / 'e.log'}")
    assert supports_heartbeat(f"sqlite:///{data / 'e.db'}")
    assert not any(tmp_path.rglob("*.log")) and not any(tmp_path.rglob("*.journal"))
