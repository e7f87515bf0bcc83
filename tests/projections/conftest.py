"""Fixtures: ``store`` (a SQLite log on tmp_path) and ``make_runner`` (runners on it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from eventstore.sqlite import SQLiteEventStore
from projections.runner import Projection, ProjectionRunner
from tests.conftest import TEST_TIMEOUT


class RunnerFactory(Protocol):
    def __call__(
        self, projections: Sequence[Projection], *, batch_size: int = 5000
    ) -> ProjectionRunner: ...


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    # No polling: only this store's own appends wake wait_for_events (a poll would hide
    # a missing wake-up).
    opened = await SQLiteEventStore.open(tmp_path / "events.db", poll_interval=None)
    yield opened
    await asyncio.wait_for(opened.close(), TEST_TIMEOUT)


@pytest.fixture
async def make_runner(store: SQLiteEventStore) -> AsyncIterator[RunnerFactory]:
    """Makes runners on ``store``; closes them all (before the store) at teardown."""
    made: list[ProjectionRunner] = []

    def factory(projections: Sequence[Projection], *, batch_size: int = 5000) -> ProjectionRunner:
        runner = ProjectionRunner(store, projections, batch_size=batch_size)
        made.append(runner)
        return runner

    yield factory
    for runner in reversed(made):
        await asyncio.wait_for(runner.close(), TEST_TIMEOUT)
