"""postback.shadows on PostgreSQL: the swap tries again while the live tables are in use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from eventstore.sqlite import SQLiteEventStore
from postback import shadows
from postback.config import Config
from postback.shadows import swap_shadows_in
from projections.catalog import all_projections
from projections.runner import Projection
from projections.shadow import TablesBusyError
from tests import pg
from tests.projections.helpers import fill_service_log
from tests.projections.test_shadow_postgres import _build, _shadows

Shards = list[tuple[str, list[Projection]]]


@pytest.fixture
async def built(pg_schema: str, tmp_path: Path) -> AsyncIterator[tuple[int, Shards]]:
    """Live projections in ``pg_schema`` and two shadow schemas rebuilt from the same log:
    the log's head and the shards."""
    async with pg.schemas_beside(pg_schema, 2) as names:
        store = await SQLiteEventStore.open(tmp_path / "events.db", poll_interval=None)
        try:
            head = await fill_service_log(store)
            await _build(store, pg_schema, all_projections())
            yield head, await _shadows(store, names)
        finally:
            await store.close()


async def _reading(schema: str) -> tuple[Any, Any]:
    """A session in a transaction that has read a live table (and holds its lock)."""
    reader = await asyncpg.connect(pg.dsn_for(schema))
    transaction = reader.transaction()
    await transaction.start()
    await reader.fetch("SELECT count(*) FROM goal_facts")
    return reader, transaction


async def test_the_swap_tries_again_until_the_tables_are_free(
    built: tuple[int, Shards], pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    head, shards = built
    reader, transaction = await _reading(pg_schema)
    loop = asyncio.get_running_loop()
    refused_twice = asyncio.Event()
    attempts: list[bool] = []
    real = shadows.swap_schemas

    def counted(conn: Any, shards: Sequence[tuple[str, Sequence[Projection]]]) -> Any:
        try:
            return real(conn, shards)
        except TablesBusyError:
            attempts.append(False)
            if len(attempts) == 2:
                loop.call_soon_threadsafe(refused_twice.set)
            raise

    monkeypatch.setattr(shadows, "swap_schemas", counted)
    try:
        swapping = asyncio.ensure_future(swap_shadows_in(Config(dsn=pg.dsn_for(pg_schema)), shards))
        await refused_twice.wait()
        await transaction.rollback()  # the reader is done: the next try goes in
        assert await swapping == {p.name: head for p in all_projections()}
    finally:
        await reader.close()
    assert len(attempts) >= 2


async def test_the_swap_gives_up_after_its_patience(
    built: tuple[int, Shards], pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _head, shards = built
    monkeypatch.setattr(shadows, "SWAP_PATIENCE", 0.0)
    reader, _transaction = await _reading(pg_schema)
    try:
        with pytest.raises(TablesBusyError, match="the live tables stayed in use for 0 s"):
            await swap_shadows_in(Config(dsn=pg.dsn_for(pg_schema)), shards)
    finally:
        await reader.close()
