"""Shared fixtures: a PostgreSQL server for the tests that need one (tests/pg.py)."""
from __future__ import annotations

import itertools

import pytest

from tests import pg
from tests.studykit import demo_data

_names = itertools.count()


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
