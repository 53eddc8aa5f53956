"""Fixtures: an engine on a fresh database of the backend under test.

TASKER_TEST_BACKEND=sqlite (default: a file in pytest's tmp_path) or postgres (DATABASE_URL,
one fresh schema per test). scripts/test.sh runs the suite on both.
"""

import os
import uuid

import pytest

import tasker

BACKEND = os.environ.get("TASKER_TEST_BACKEND", "sqlite")


def fresh_options(tmp_path):
    if BACKEND == "postgres":
        url = os.environ.get("DATABASE_URL")
        if not url:
            raise RuntimeError("TASKER_TEST_BACKEND=postgres needs DATABASE_URL (scripts/test.sh starts a server)")
        return {"url": url, "schema": "py_" + uuid.uuid4().hex[:12]}
    return {"url": f"sqlite://{tmp_path / 'tasker.db'}"}


@pytest.fixture
def db(tmp_path):
    """Keyword arguments for tasker.Engine on a fresh database."""
    return fresh_options(tmp_path)


@pytest.fixture
def engine(db):
    return tasker.Engine(**db)
