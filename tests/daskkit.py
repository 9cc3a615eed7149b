"""A real Dask cluster for tests: a scheduler and workers as separate processes on 127.0.0.1.

Every process (scheduler, workers and their nannies) listens on 127.0.0.1 only, with no
dashboard, in a temp folder; each worker runs in a session of its own, so a test can kill it
whole (nanny and worker process) with one SIGKILL, as a lost machine would be.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60


def _env(extra: dict | None = None) -> dict:
    # Workers import this checkout's code; the scheduler must not re-run a task whose worker
    # died (the study's retry record is the single source of truth).
    return {**os.environ, "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
            **(extra or {})}


def _dask_cli(command: str) -> list[str]:
    """`dask scheduler` / `dask worker`, from this interpreter's environment."""
    return [sys.executable, "-m", f"distributed.cli.dask_{command}"]


class Cluster:
    """`with Cluster(workers=2) as cluster:` → cluster.address, cluster.workers (Popen)."""

    def __init__(self, workers: int = 2, resources: str | None = None, preload: str | None = None,
                 env: dict | None = None):
        self.n_workers, self.resources, self.preload, self.env = workers, resources, preload, env
        self.root = Path(tempfile.mkdtemp(prefix="swipr-dask-"))
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.root / log, "w")
        return subprocess.Popen([*_dask_cli(args[0]), *args[1:]], cwd=self.root, env=_env(self.env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> "Cluster":
        info = self.root / "scheduler.json"
        self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--dashboard-address", "127.0.0.1:0",
                                      "--scheduler-file", str(info)], "scheduler.log")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not info.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(info.read_text())["address"]
        for i in range(self.n_workers):
            self.add_worker(f"w{i}")
        self.wait_for_workers(self.n_workers)
        return self

    def add_worker(self, name: str) -> subprocess.Popen:
        args = ["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                "--dashboard-address", "127.0.0.1:0",
                "--name", name, "--local-directory", str(self.root / name), "--death-timeout", "60"]
        if self.resources:
            args += ["--resources", self.resources]
        if self.preload:
            args += ["--preload", self.preload]
        process = self._start(args, f"{name}.log")
        self.workers.append(process)
        return process

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=START_TIMEOUT_S) as client:
            client.wait_for_workers(n, timeout=START_TIMEOUT_S)

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL a worker's nanny and worker process at once: the machine is gone."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers, self.scheduler]:
            if process is None:
                continue
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
