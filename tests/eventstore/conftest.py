"""Fixtures: ``store`` (an open store per backend) and ``store_factory`` (reopen the same log)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eventstore.base import EventStore, Upcasters
from tests.conftest import TEST_TIMEOUT
from tests.eventstore.backends import BACKENDS, CLEANUPS, POSTGRES_SCHEMAS, drop_postgres
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
    try:
        for store in reversed(opened):
            # idempotent: fine for the stores a test closed itself
            await asyncio.wait_for(store.close(), TEST_TIMEOUT)
    finally:
        cleanup = CLEANUPS.get(backend)
        if cleanup is not None:
            await cleanup(tmp_path)


@pytest.fixture
async def store(store_factory: StoreFactory) -> EventStore:
    """An open store on an empty log; closed after the test (via ``store_factory``)."""
    return await store_factory()


@pytest.fixture(scope="session", autouse=True)
def _drop_leftover_postgres_logs() -> Iterator[None]:
    """Drop the logs (schemas) that outlived their tests: the property tests' last ones."""
    yield
    if POSTGRES_SCHEMAS:

        async def drop_all() -> None:
            for workdir in list(POSTGRES_SCHEMAS):
                await drop_postgres(workdir)

        asyncio.run(drop_all())
