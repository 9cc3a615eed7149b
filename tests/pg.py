"""A throwaway PostgreSQL server on loopback for tests: initdb + pg_ctl in a temp folder.

initdb refuses to run as root, so as root the server runs as the `postgres` user.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")
USER = "swipr"
PASSWORD = "pg-Secret-7f3a9"   # tests assert it never shows in any output


def find_binaries() -> tuple[Path, Path] | None:
    for folder in BIN_DIRS:
        initdb, pg_ctl = Path(folder, "initdb"), Path(folder, "pg_ctl")
        if initdb.is_file() and pg_ctl.is_file():
            return initdb, pg_ctl
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (Path(initdb), Path(pg_ctl)) if initdb and pg_ctl else None


def why_unavailable() -> str | None:
    if find_binaries() is None:
        return f"PostgreSQL server binaries (initdb, pg_ctl) not found in {', '.join(BIN_DIRS)} or PATH"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user for initdb to run as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        self.initdb, self.pg_ctl = find_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="swipr-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()

    def _run(self, *args: str) -> None:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> "Server":
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
        self.root.chmod(0o700)
        self._run(self.initdb, "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "-A", "scram-sha-256",
                  "-E", "UTF8", "--no-sync")
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again, after `halt`), on the same port and data."""
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c max_connections=200 -c fsync=off"
        self._run(self.pg_ctl, "-D", self.data, "-o", options, "-l", self.root / "log", "-w", "start")

    def halt(self) -> None:
        """Stop the server, keeping its data, as an outage would (`resume` starts it again)."""
        self._run(self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                                      dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", self.data, "-m", "immediate", "stop")
        except subprocess.CalledProcessError:   # halted already
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
