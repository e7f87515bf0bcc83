"""Fixtures: ``store`` (an open store per backend) and ``store_factory`` (reopen the same log)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from eventstore.base import EventStore, Upcasters
from tests.eventstore.backends import BACKENDS
from tests.eventstore.helpers import StoreFactory

TEST_TIMEOUT = 30.0
"""Seconds an async test of this directory may take: a backend that hangs (a dead writer
task, a lost wake-up) fails its test instead of hanging the whole suite."""

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


@pytest.fixture(params=sorted(BACKENDS), ids=str)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def store_factory(backend: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores on this test's log (all the same one); closes them all at teardown."""
    opener = BACKENDS[backend]
    opened: list[EventStore] = []

    async def open_store(*, upcasters: Upcasters | None = None) -> EventStore:
        store = await opener(tmp_path, upcasters)
        opened.append(store)
        return store

    yield open_store
    for store in reversed(opened):
        # idempotent: fine for the stores a test closed itself
        await asyncio.wait_for(store.close(), TEST_TIMEOUT)


@pytest.fixture
async def store(store_factory: StoreFactory) -> EventStore:
    """An open store on an empty log; closed after the test (via ``store_factory``)."""
    return await store_factory()
