"""Fixtures: ``store`` (a SQLite log on tmp_path) and ``make_runner`` (runners on it)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from eventstore.sqlite import SQLiteEventStore
from projections.runner import Projection, ProjectionRunner

TEST_TIMEOUT = 30.0
"""Seconds an async test here may take: a lost wake-up fails the test, not the suite."""

HERE = Path(__file__).parent


def _with_timeout(
    test: Callable[..., Coroutine[Any, Any, Any]],
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await test(*args, **kwargs)

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and item.path.is_relative_to(HERE)
            and inspect.iscoroutinefunction(item.obj)
        ):
            item.obj = _with_timeout(item.obj)


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
