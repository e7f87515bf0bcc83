"""Fixtures: ``store`` (a SQLite log on tmp_path), ``projection_db`` (the projection database,
SQLite or PostgreSQL: every test that uses it runs on both) and ``make_runner`` (runners on
``store``, keeping their rows in ``projection_db``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from eventstore.sqlite import SQLiteEventStore
from projections.runner import Projection, ProjectionRunner
from tests.conftest import TEST_TIMEOUT
from tests.projections.backends import PostgresScope, Scope, SQLiteScope


class RunnerFactory(Protocol):
    def __call__(
        self,
        projections: Sequence[Projection],
        *,
        batch_size: int = 5000,
        place: str = "live",
        **options: Any,
    ) -> ProjectionRunner: ...


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    # No polling: only this store's own appends wake wait_for_events (a poll would hide
    # a missing wake-up).
    opened = await SQLiteEventStore.open(tmp_path / "events.db", poll_interval=None)
    yield opened
    await asyncio.wait_for(opened.close(), TEST_TIMEOUT)


@pytest.fixture(params=["sqlite", "postgres"])
def projection_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scope]:
    """Where the test's projections live (see :mod:`tests.projections.backends`). The
    PostgreSQL one skips without a server (fails under ``POSTBACK_REQUIRE_POSTGRES=1``)."""
    scope: Scope
    if request.param == "sqlite":
        scope = SQLiteScope(tmp_path)
    else:
        scope = PostgresScope(request.getfixturevalue("pg_schema"))
    yield scope
    scope.close()


@pytest.fixture
async def make_runner(
    store: SQLiteEventStore, projection_db: Scope
) -> AsyncIterator[RunnerFactory]:
    """Makes runners on ``store`` into ``projection_db`` (``place``: which of its databases;
    ``options``: of a PostgreSQL database); closes them all (before the store) at teardown."""
    made: list[ProjectionRunner] = []

    def factory(
        projections: Sequence[Projection],
        *,
        batch_size: int = 5000,
        place: str = "live",
        **options: Any,
    ) -> ProjectionRunner:
        runner = projection_db.runner(
            store, projections, place=place, batch_size=batch_size, **options
        )
        made.append(runner)
        return runner

    yield factory
    for runner in reversed(made):
        await asyncio.wait_for(runner.close(), TEST_TIMEOUT)
