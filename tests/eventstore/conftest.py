"""Fixtures: ``store`` (an open store per backend) and ``store_factory`` (reopen the same log)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventstore.base import EventStore, Upcasters
from tests.conftest import TEST_TIMEOUT
from tests.eventstore.backends import BACKENDS
from tests.eventstore.helpers import StoreFactory


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
