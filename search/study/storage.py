"""Open a study's storage from a URL, with errors that name the URL (never its password).

One machine: SQLite in WAL mode, so readers never block the writer, with a long busy timeout,
so 8 worker processes queue for the write lock instead of failing with "database is locked".
Several machines: PostgreSQL through an ordinary URL. Or Optuna's journal file
(journal:///path.log): an append-only log of operations, readable with any text tool and
needing no database, guarded by a lock file (so: a local or lock-capable filesystem). It is
the default nowhere because Optuna's heartbeats (a dead worker's trial is failed and
retried) exist only for RDBStorage; on a journal such a trial just stays RUNNING.
"""
from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import optuna
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError

from objectives.optuna_compat import rdb_engine
from search.study.guarded import GuardedStorage
from search.studyfile.url_text import (
    journal_path,
    normalize_url,
    passwords_of,
    redact,
    redact_text,
    refuse_ambiguous_password,
    split_url,
    sqlite_path,
)
from swipr_core.errors import SwiprError

SQLITE_BUSY_TIMEOUT_S = 300   # a worker waits this long for the write lock before it fails
SCHEMA_ATTEMPTS = 5           # tries to open a database whose tables another worker is creating


@dataclass(frozen=True)
class Heartbeat:
    """A running trial beats every `interval` s; one silent for `grace_period` s is failed,
    then retried (at most `max_retry` times) by whichever worker notices it first. The
    defaults are the study file's ([study] heartbeat_interval, grace_period, max_retry)."""

    interval: int
    grace_period: int
    max_retry: int = 0


NO_HEARTBEAT_NOTE = ("note: a journal file has no heartbeats, so a trial whose worker dies stays RUNNING "
                     "and is not retried; dead-worker retries need SQLite or PostgreSQL")


def supports_heartbeat(url: str) -> bool:
    """Whether the storage at `url` can fail and retry a dead worker's trial (RDBStorage only)."""
    return journal_path(url) is None


# Optuna's schema keeps study names in a varchar(512) (optuna/storages/_rdb/models.py,
# MAX_INDEXED_STRING_LENGTH): PostgreSQL and MySQL refuse longer ones, SQLite stores any length.
RDB_NAME_LIMIT = 512


def study_name_limit(url: str) -> int | None:
    """The longest study name the storage at `url` holds, or None for no limit."""
    if journal_path(url) is not None or sqlite_path(url) is not None:
        return None
    return RDB_NAME_LIMIT


def _use_wal(path: Path) -> None:
    # WAL is a property of the database file: set once, every later connection uses it.
    connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def _serialize_transactions(engine) -> None:
    """Every SQLite transaction takes the write lock when it begins (BEGIN IMMEDIATE).

    Python's sqlite3 opens a transaction only before a write, so Optuna's read-then-write steps
    (take a WAITING trial: read its state, then set RUNNING; fail a stale trial once) ran their
    read outside any transaction, and two workers could both take one queued trial: measured,
    4 processes taking 40 queued trials handed 13-17 of them out twice. Inside one IMMEDIATE
    transaction the read and the write are one step. Readers of the file outside this process
    (WAL) are not blocked."""

    @event.listens_for(engine, "connect")
    def _driver_transactions_off(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None   # SQLAlchemy's "begin" below says when

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()   # connections made before the listeners (schema checks) are not reused


def _lost_schema_race(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, IntegrityError) or "already exists" in text or "unique constraint" in text


def _parse(url: str):
    try:
        return make_url(url)
    except ArgumentError:
        raise SwiprError(f"storage URL {redact(url)!r} is not a database URL (e.g. sqlite:///study.db, "
                         f"postgresql://user:pass@host/db, journal:///study.log)") from None
    except ValueError:   # SQLAlchemy's int() of the port: "invalid literal for int() ..."
        raise SwiprError(f"storage URL {redact(url)!r} can't be read: {_host_problem(url)}") from None


def _host_problem(url: str) -> str:
    """What is wrong with the host:port part of a URL that SQLAlchemy could not read."""
    parts = split_url(url)
    rest = parts.rest if parts else url.partition("://")[2]
    host_port = re.split(r"[/?]", rest, maxsplit=1)[0]
    if host_port.startswith("[") and "]" not in host_port:
        return f"the '[' of the IPv6 host {host_port!r} is not closed (write it as [::1] or [::1]:5432)"
    port = host_port.rpartition("]")[2].rpartition(":")[2] if ":" in host_port else host_port
    return f"the port {port!r} is not a number (host:port, e.g. 127.0.0.1:5432)"


def _read_only_url(path: Path) -> str:
    """A URL that opens the SQLite file read-only: status, best and report never write, and a
    study on read-only media (a DVD, a read-only mount) can be read. On such media no WAL index
    can be made beside the file, so it is opened as immutable: nothing can change it there."""
    writable = os.access(path.parent, os.W_OK) and not _on_read_only_mount(path)
    mode = "mode=ro" if writable else "mode=ro&immutable=1"
    return f"sqlite:///file:{quote(str(path.resolve()))}?{mode}&uri=true"


def _on_read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_storage(url: str, create: bool = True, heartbeat: Heartbeat | None = None, on_stale=None,
                 read_only: bool = False, reader: bool = False):
    """An Optuna storage for `url`. With create=False a missing SQLite file is an error
    instead of a new empty database (status and best must not create files); read_only opens a
    SQLite file read-only (for commands that only read); `reader` opens it as usual but takes no
    write lock to read (a SQLite reader in WAL mode reads the log through its index, which a
    read-only connection on a full disk can't; the run's summary reads that way). With
    `heartbeat`, running trials beat and stale ones are handed to `on_stale(study, trial)`;
    a journal file has no heartbeats, so there `heartbeat` is ignored (see supports_heartbeat)."""
    journal = journal_path(url)
    if journal is not None:
        return _open_journal(url, journal, create)
    url = normalize_url(url)
    refuse_ambiguous_password(url)
    parsed, shown, connect_url = _parse(url), redact(url), url
    engine_kwargs: dict = {}
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            what = "a folder, not a database file" if path.is_dir() else "no such database file"
            raise SwiprError(f"storage {redact(url)}: {what} (run `swipr study run` first)")
        if create and not path.parent.is_dir():
            raise SwiprError(f"storage {redact(url)}: folder {path.parent} does not exist")
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if read_only:
            connect_url = _read_only_url(path)
    elif parsed.get_backend_name() == "postgresql":
        # A worker holds its connection for hours; check it before use after a server restart.
        engine_kwargs["pool_pre_ping"] = True
    heartbeat_kwargs = {}
    if heartbeat is not None:
        heartbeat_kwargs = {"heartbeat_interval": heartbeat.interval, "grace_period": heartbeat.grace_period,
                            "heartbeat_stale_trial_callback": on_stale}
    try:
        if path is not None and create:
            _use_wal(path)
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # heartbeats
                    storage = GuardedStorage(connect_url, engine_kwargs=engine_kwargs, shown=shown, sqlite_file=path,
                                             skip_table_creation=connect_url != url or reader, **heartbeat_kwargs)
                if path is not None and not read_only and not reader:
                    _serialize_transactions(rdb_engine(storage))
                return storage
            except Exception as error:
                # Workers that start together on an empty database race to create its tables;
                # the losers find them there on the next try.
                if attempt + 1 == SCHEMA_ATTEMPTS or not _lost_schema_race(error):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except Exception as error:  # driver, DNS, auth and schema errors all land here
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SwiprError(f"storage {redact(url)}: can't open it: {_missing_driver(error) or redact_text(reason, url)}"
                         ) from None


# The extra that installs each database driver SQLAlchemy may import for a storage URL.
DRIVER_EXTRAS = {"psycopg2": "postgres"}


def _missing_driver(error: BaseException) -> str | None:
    """What to install when opening the storage failed because its database driver isn't
    there (SQLAlchemy imports it only when such a URL is opened; Optuna re-raises the
    ImportError with the missing module as its cause); None for any other error."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, ModuleNotFoundError) and found.name:
            module = found.name.split(".")[0]
            extra = DRIVER_EXTRAS.get(module)
            install = f"pip install 'swipr-search[{extra}]'" if extra else f"install the {module} package"
            return f"its database driver {module} is not installed ({install})"
        found = found.__cause__ or found.__context__
    return None


def _open_journal(url: str, path: Path, create: bool):
    # JournalFileBackend creates a missing file: status and best must not.
    if not create and not path.is_file():
        raise SwiprError(f"storage {url}: no such journal file (run `swipr study run` first)")
    if create and not path.parent.is_dir():
        raise SwiprError(f"storage {url}: folder {path.parent} does not exist")
    try:
        # Opening replays the whole log, so a file that isn't a journal fails here, not later.
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except Exception as error:   # a folder, no permission, not a journal
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, (ValueError, UnicodeDecodeError)):   # JSONDecodeError is a ValueError
            reason = f"it holds something else ({reason})"
        raise SwiprError(f"storage {url}: can't open it as a journal file: {reason}") from None


class RedactingStream:
    """A text stream that writes through to `stream` with the password replaced by ***:
    whatever a worker prints, a traceback included, can't show the storage password."""

    def __init__(self, stream, url: str):
        self._stream, self._url = stream, url

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text, self._url))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def redact_output(url: str) -> None:
    """From here on, this process's stdout and stderr never show `url`'s password."""
    if not passwords_of(url):
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream, url))
