"""A database for humaneval's tests: SQLite in a temporary directory, and PostgreSQL (the
throw-away server of tests/unit/serve/postgres_support.py, skipped with its reason when the
binaries are absent) for the tests that take the ``any_db`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.serve.postgres_support import postgres_url  # noqa: F401 - fixture
from tunesmith.humaneval import models  # noqa: F401 - registers the tables
from tunesmith.serve.db import Base, Database


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'tunesmith.db'}")
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tunesmith.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    database = Database(url)
    try:
        yield database
    finally:
        if request.param == "postgresql":
            Base.metadata.drop_all(database.engine)
        database.dispose()
