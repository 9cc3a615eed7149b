"""Storage URLs made to leak: a password that can't be split, and a password in every form
SQLAlchemy and libpq take (userinfo, query password=, libpq's query keys, a key=value
string), never shown by any command, the error log, the report or a process's command line.

No test resolves a made-up host name: every URL points at 127.0.0.1, at a closed port or at
the session's own PostgreSQL server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy

from search.studyfile.url_text import passwords_of, redact, redact_text, refuse_ambiguous_password
from swipr_core.errors import SwiprError
from tests import pg
from tests.studykit import ROOT, run_cli, write_study


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # nothing listens there once the socket is closed


CLOSED = _closed_port()


@pytest.fixture
def no_connections(monkeypatch):
    """Every engine SQLAlchemy is asked to make, recorded: a refused URL must make none (libpq
    resolves and connects in C, so the engine is where Python can see it happen)."""
    made: list[str] = []
    real = sqlalchemy.engine.create_engine

    def recorded(url, *args, **kwargs):
        made.append(str(url))
        return real(url, *args, **kwargs)

    monkeypatch.setattr(sqlalchemy.engine, "create_engine", recorded)   # how Optuna's RDBStorage calls it
    return made


# Two URLs a split by the first '@' reads wrong: '@' then '#' in the password, and '@', '/', '#' and '%' together.
SPLIT_WRONG = [
    (f"postgresql://u:pa@ss#SECRET@127.0.0.1:{CLOSED}/db", ("SECRET", "ss#", "pa@")),
    (f"postgresql://u:p@ss/w#rd%x@127.0.0.1:{CLOSED}/db", ("w#rd", "rd%x", "ss/w")),
    (f"postgresql://u:pass?word=Leak@127.0.0.1:{CLOSED}/db", ("Leak", "?word")),
    (f"postgresql://u:Leak9@127.0.0.1:{CLOSED}/db?user=a@b", ("Leak9",)),
]


# ids without the port: pytest-xdist's workers pick their own closed port, and must collect the same tests
@pytest.mark.parametrize("url, pieces", SPLIT_WRONG, ids=["at-then-hash", "at-slash-hash-percent", "question-mark",
                                                          "at-in-the-query"])
def test_a_url_without_one_split_is_refused_before_anything_connects(tmp_path, data_dir, monkeypatch,
                                                                     no_connections, url, pieces):
    path = write_study(tmp_path, data_dir)
    monkeypatch.setenv("SWIPR_STORAGE", url)
    for command in (("study", "status"), ("study", "best")):
        result = run_cli(*command, path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "percent-encode" in lines[0], result.stderr
        assert lines[0].startswith("swipr: error: SWIPR_STORAGE postgresql://***@"), lines[0]
        for piece in pieces:
            assert piece not in result.stdout + result.stderr
    assert no_connections == []
    with pytest.raises(SwiprError):
        refuse_ambiguous_password(url)


def test_redaction_is_by_position_never_by_substring():
    # Today's bug: SQLAlchemy read "p" as the password of p@ss/w#rd%x, and every "p" of the
    # message became ***, "psycopg2" turning into "***syco***g2".
    url = f"postgresql://u:p@ss/w#rd%x@127.0.0.1:{CLOSED}/db"
    assert redact(url) == f"postgresql://***@127.0.0.1:{CLOSED}/db"
    assert "p" not in passwords_of(url)
    assert redact_text("psycopg2 could not connect", url) == "psycopg2 could not connect"
    # A user name or host that happens to hold the password's letters is shown as it is.
    short = "postgresql://pw:pw@127.0.0.1/pwdb"
    assert redact(short) == "postgresql://pw:***@127.0.0.1/pwdb"
    assert redact_text(f"can't open {short}", short) == "can't open postgresql://pw:***@127.0.0.1/pwdb"


FORMS = {
    "userinfo": ("postgresql://swipr:Sekrit-Uinfo-41@127.0.0.1:{port}/db", ["Sekrit-Uinfo-41"]),
    "encoded userinfo": ("postgresql://swipr:Sek%40rit%2F44@127.0.0.1:{port}/db", ["Sek%40rit%2F44", "Sek@rit/44"]),
    "query password=": ("postgresql://swipr@127.0.0.1:{port}/db?password=Sekrit-Query-42", ["Sekrit-Query-42"]),
    "libpq query keys": ("postgresql:///db?host=127.0.0.1&port={port}&user=swipr&password=Sekrit-Libpq-43",
                         ["Sekrit-Libpq-43"]),
    "encoded key": ("postgresql://swipr@127.0.0.1:{port}/db?sslmode=disable&PASS%57ORD=Sek+rit%2145",
                    ["Sek+rit%2145", "Sek rit!45", "Sek+rit!45"]),
    "sslpassword": ("postgresql://swipr:Sekrit-Both-46@127.0.0.1:{port}/db?sslpassword=Sekrit-Key-47",
                    ["Sekrit-Both-46", "Sekrit-Key-47"]),
    "key=value string": ("host=127.0.0.1 port={port} user=swipr password=Sekrit-Dsn-48", ["Sekrit-Dsn-48"]),
    # libpq reads a passfile itself; swipr never opens it, so its contents can't reach a message.
    "passfile": ("postgresql://swipr@127.0.0.1:{port}/db?passfile={passfile}", ["Sekrit-Passfile-49"]),
}


@pytest.mark.parametrize("form", FORMS)
def test_no_command_shows_a_password_in_any_form(tmp_path, data_dir, monkeypatch, form):
    template, secrets = FORMS[form]
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{CLOSED}:*:swipr:Sekrit-Passfile-49\n")
    passfile.chmod(0o600)
    url = template.format(port=CLOSED, passfile=passfile)
    path = write_study(tmp_path, data_dir)
    monkeypatch.setenv("SWIPR_STORAGE", url)
    commands = [("study", "run", path, "--n-trials", "1"), ("study", "status", path), ("study", "best", path),
                ("study", "report", path, "--out", tmp_path / "report"), ("dashboard", path, "--port", "0"),
                ("fit", path, "--out", tmp_path / "model")]
    for command in commands:
        result = run_cli(*command)
        output = result.stdout + result.stderr
        assert result.returncode in (1, 2), (command, output)   # the storage can't be opened
        assert "Traceback" not in output and "storage" in output, (command, output)
        for secret in secrets:
            assert secret not in output, (command, output)
    for secret in secrets:
        assert secret not in redact(url)
        assert redact_text(f"connect({secret!r}) failed", url) == "connect('***') failed" or form in (
            "encoded key", "passfile")


def _tree_command_lines(session: int) -> list[str]:
    """The command lines of every process in `session` (the run and all it started)."""
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    return lines


@pytest.mark.slow
def test_a_query_password_on_a_real_server_shows_nowhere(tmp_path, data_dir, pg_url, monkeypatch):
    # pg_url carries the password in its userinfo; here it goes in the query instead, as libpq takes it.
    user_and_password, _, rest = pg_url.partition("://")[2].partition("@")
    assert user_and_password == f"{pg.USER}:{pg.PASSWORD}"
    url = f"postgresql://{pg.USER}@{rest}?password={pg.PASSWORD}"
    path = write_study(tmp_path, data_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWIPR_STORAGE": url}
    process = subprocess.Popen([sys.executable, "-m", "search.cli", "study", "run", str(path), "--workers", "2",
                                "--n-trials", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env=env)
    command_lines: set[str] = set()
    try:
        while process.poll() is None:
            command_lines |= set(_tree_command_lines(process.pid))
            time.sleep(0.2)
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err
    assert len(command_lines) >= 2, command_lines   # the run and at least one trial process were seen
    assert f"{pg.USER}@127.0.0.1" in out and "password=***" in out
    monkeypatch.setenv("SWIPR_STORAGE", url)
    shown = [out, err, *command_lines]
    for command in (("study", "status", path), ("study", "best", path),
                    ("study", "report", path, "--out", tmp_path / "report")):
        result = run_cli(*command)
        assert result.returncode == 0, result.stderr
        shown += [result.stdout, result.stderr]
    shown.append((tmp_path / "report" / "report.html").read_text(encoding="utf-8"))
    log = path.with_name(f"{path.stem}.errors.log")
    if log.exists():
        shown.append(log.read_text(encoding="utf-8"))
    for text in shown:
        assert pg.PASSWORD not in text
