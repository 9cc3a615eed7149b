"""`swipr study run --dask ADDRESS`: every trial a task on a Dask cluster, Optuna still the search.

Here: connecting (a wrong address fails in seconds), choosing the device from the workers'
GPU slots (the worker resource `GPU`; a CPU study takes a worker thread a trial), and opening
the study's storage in the scheduler process as optuna-integration's DaskStorage, which the
tasks (search/running/dask_trial.py) reach it through: workers need no credentials. The loop
that asks, submits and collects is search/running/dask_driver.py.
"""
from __future__ import annotations

import logging
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna

from search.running.dask_driver import Driver, slots
from search.study.open import open_study
from search.study.storage import open_storage
from search.studyfile.url_text import redact, redact_text
from search.studyfile import StudyFile
from swipr_core.errors import SwiprError

CONNECT_TIMEOUT_S = 5      # a wrong scheduler address fails this fast, in one line
WAIT_FOR_WORKERS_S = 60    # a cluster with no worker at all (batch jobs still queued) may wait this long


def connect(address: str):
    """A Dask client for `address`, or a one-line SwiprError within CONNECT_TIMEOUT_S."""
    try:
        from distributed import Client
    except ImportError:
        raise SwiprError("--dask needs Dask: pip install 'swipr-search[dask]'") from None
    try:
        with _quiet_dask():
            return Client(address, timeout=CONNECT_TIMEOUT_S)
    except Exception as error:   # OSError, TimeoutError, ValueError for a malformed address
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise SwiprError(f"Dask scheduler {address}: can't connect within {CONNECT_TIMEOUT_S} s ({reason})") from None


@contextmanager
def _quiet_dask():
    """Dask logs each failed connection attempt; the one-line error says it all."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def plan_device(client, address: str, device: str) -> str:
    """"cuda" or "cpu" for every trial; a GPU study on a cluster without GPU slots is an error."""
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
    except TimeoutError:
        raise SwiprError(f"Dask scheduler {address}: no worker joined in {WAIT_FOR_WORKERS_S} s") from None
    gpus = slots(client, "GPU")
    if device == "cpu" or (device == "auto" and gpus == 0):
        return "cpu"
    if gpus == 0:
        raise SwiprError(f"the study runs on GPUs (device {device}), but no worker of the Dask cluster at {address} "
                         f"has a GPU slot: start workers with --resources GPU=1 (see the README)")
    return "cuda"   # each worker sees its own GPU (one worker per GPU), which is cuda to it


def register_storage(client, address: str, url: str, study_name: str):
    """The study's storage, opened in the scheduler process, for the workers to reach through it.
    The scheduler must find the study there: the same SQLite file, or the same database."""
    try:
        from optuna_integration.dask import DaskStorage
    except ImportError:
        raise SwiprError("--dask needs optuna-integration: pip install 'swipr-search[dask]'") from None
    storage = open_storage(url, create=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            remote = DaskStorage(storage, name=f"swipr-{uuid.uuid4().hex}", client=client)
    except Exception as error:   # the scheduler lacks optuna-integration, or can't open the storage
        reason = redact_text((str(error).splitlines() or [type(error).__name__])[0], url)
        raise SwiprError(f"Dask scheduler {address}: can't hold the study's storage ({reason}); install "
                         f"swipr-search[dask] where the scheduler runs") from None
    try:
        remote.get_study_id_from_name(study_name)
    except KeyError:
        raise SwiprError(f"Dask scheduler {address}: opens {redact(url)} but finds no study '{study_name}' there: "
                         f"run the driver on the scheduler's machine, or use a PostgreSQL storage") from None
    return remote


@dataclass
class Cluster:
    """A connected cluster and the device its trials run on."""

    client: Any   # a distributed.Client: dask is an optional extra, imported where used
    address: str
    device: str   # "cuda" or "cpu"


def open_cluster(address: str, device: str) -> Cluster:
    """Connect and choose the device first, so a wrong address or a cluster without GPU slots
    fails in seconds, before any data is prepared."""
    client = connect(address)
    try:
        return Cluster(client, address, plan_device(client, address, device))
    except BaseException:
        client.close()
        raise


def run_on_dask(cluster: Cluster, study_file: StudyFile, n_trials: int, timeout: float | None) -> int:
    """Run `n_trials` trials on the cluster; return the exit status (0, 1 or 2)."""
    try:
        s = study_file.study
        remote = register_storage(cluster.client, cluster.address, s.storage, s.name)
        # The driver itself asks and records straight in the storage: the scheduler's event loop,
        # which serves every worker's storage calls, carries only theirs.
        driver = Driver(cluster.client, open_study(study_file, create=False), study_file, remote.name, cluster.device)
        driver.fail_orphans()
        kind = "GPU" if cluster.device == "cuda" else "CPU"
        print(f"dask: {slots(cluster.client, kind)} {'GPU slots' if kind == 'GPU' else 'worker threads'} now",
              flush=True)
        return driver.run(n_trials, time.monotonic() + timeout if timeout else None)
    finally:
        with _quiet_dask():
            cluster.client.close()


