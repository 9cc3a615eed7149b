"""Shared fixtures: a PostgreSQL server for the tests that need one (tests/pg.py)."""
from __future__ import annotations

import itertools
import os

import pytest

from tests import pg
from tests.studykit import demo_data

_names = itertools.count()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core already: a torch of one thread in each (and in the
    # processes they start) keeps OpenMP's waiting threads from contending for the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items):
    # The multi-process scenarios (marked slow) take most of the suite's time: run them first,
    # so that pytest-xdist's other worker goes through the quick tests beside them, not after.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def pg_server():
    reason = pg.why_unavailable()
    if reason:
        pytest.skip(reason)
    server = pg.Server().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server: its URL, password included."""
    return pg_server.create_database(f"swipr_test_{next(_names)}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The demo dataset in a folder of its own, written once per test module."""
    folder = tmp_path_factory.mktemp("data")
    demo_data(folder)
    return folder
