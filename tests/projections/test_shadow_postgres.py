"""projections.shadow.swap_schemas: shadow schemas moved into the live PostgreSQL schema in
one transaction (what ``postback rebuild`` does on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from eventstore import EventStoreError
from eventstore.sqlite import SQLiteEventStore
from projections.catalog import all_projections
from projections.pg_database import PostgresProjectionDatabase
from projections.runner import Projection, ProjectionRunner
from projections.shadow import TablesBusyError, lock_for_reading, plan_shards, swap_schemas
from projections.verify import compare_databases, format_report, owned_tables
from tests import pg
from tests.projections.helpers import fill_service_log


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    opened = await SQLiteEventStore.open(tmp_path / "events.db", poll_interval=None)
    yield opened
    await opened.close()


@pytest.fixture
async def shadow_schemas(pg_schema: str) -> AsyncIterator[list[str]]:
    async with pg.schemas_beside(pg_schema, 2) as names:
        yield names


async def _build(store: SQLiteEventStore, schema: str, projections: Sequence[Projection]) -> None:
    database = PostgresProjectionDatabase(pg.dsn_for(schema))
    runner = ProjectionRunner(store, list(projections), database=database, batch_size=7)
    try:
        await runner.rebuild()
    finally:
        await runner.close()


async def _sql(schema: str, statement: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(pg.dsn_for(schema))
    try:
        return sorted((tuple(row) for row in await conn.fetch(statement)), key=repr)
    finally:
        await conn.close()


async def _swap(live: str, shards: Sequence[tuple[str, Sequence[Projection]]]) -> dict[str, int]:
    database = PostgresProjectionDatabase(pg.dsn_for(live))
    try:
        return await database.transaction(partial(swap_schemas, shards=shards), notify=True)
    finally:
        await database.close()


async def _state(schema: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = [table for p in all_projections() for table in owned_tables(p)]
    state = {table: await _sql(schema, f'SELECT * FROM "{table}"') for table in tables}
    state["checkpoints"] = await _sql(schema, "SELECT name, position FROM projection_checkpoints")
    return state


async def _shadows(
    store: SQLiteEventStore, schemas: list[str]
) -> list[tuple[str, list[Projection]]]:
    shards = list(zip(schemas, plan_shards(all_projections(), 2), strict=True))
    for schema, group in shards:
        await _build(store, schema, group)
    return shards


async def test_swap_moves_the_shadows_tables_in(
    store: SQLiteEventStore, pg_schema: str, shadow_schemas: list[str], tmp_path: Path
) -> None:
    head = await fill_service_log(store)
    await _build(store, pg_schema, all_projections())
    await _sql(pg_schema, "UPDATE goal_stats_hourly SET count = count + 5 RETURNING 1")
    await _sql(pg_schema, "DELETE FROM subscribers WHERE subscriber_id = 3 RETURNING 1")
    shards = await _shadows(store, shadow_schemas)

    assert await _swap(pg_schema, shards) == {p.name: head for p in all_projections()}

    fresh = f"{pg_schema}_shadow0"  # emptied by the swap: a fresh replay goes there
    await _build(store, fresh, all_projections())
    live_db = PostgresProjectionDatabase(pg.dsn_for(pg_schema))
    fresh_db = PostgresProjectionDatabase(pg.dsn_for(fresh))
    try:
        diffs = await compare_databases(live_db, fresh_db, all_projections())
    finally:
        await live_db.close()
        await fresh_db.close()
    assert all(diff.ok for diff in diffs), format_report(diffs)
    indexes = await _sql(
        pg_schema, f"SELECT indexname FROM pg_indexes WHERE schemaname = '{pg_schema}'"
    )
    assert ("goal_facts_time",) in indexes  # the read indexes came along
    assert ("postback_index_account_clickid",) in indexes
    # The second shadow holds no projection table any more (the first holds the replay).
    left = await _sql(
        pg_schema,
        f"SELECT tablename FROM pg_tables WHERE schemaname = '{shadow_schemas[1]}'",
    )
    assert left == [("projection_checkpoints",)]


async def test_a_failed_swap_changes_nothing(
    store: SQLiteEventStore, pg_schema: str, shadow_schemas: list[str]
) -> None:
    await fill_service_log(store)
    await _build(store, pg_schema, all_projections())
    await _sql(pg_schema, "UPDATE goal_stats_hourly SET count = count + 5 RETURNING 1")
    before = await _state(pg_schema)
    shards = await _shadows(store, shadow_schemas)

    # The second shadow lost a table: its move fails after the first shadow's went in.
    second, group = shards[1]
    await _sql(second, f'DROP TABLE "{owned_tables(group[-1])[-1]}" CASCADE')
    with pytest.raises(EventStoreError, match="does not exist"):
        await _swap(pg_schema, shards)
    assert await _state(pg_schema) == before

    # A shadow without a projection's checkpoint was not rebuilt there: refused.
    await _sql(shards[0][0], "DELETE FROM projection_checkpoints RETURNING 1")
    with pytest.raises(ValueError, match="no checkpoint for"):
        await _swap(pg_schema, shards[:1])
    assert await _state(pg_schema) == before


async def test_a_swap_never_waits_for_a_reader(
    store: SQLiteEventStore, pg_schema: str, shadow_schemas: list[str]
) -> None:
    """A session reading a live table (here: an open transaction) makes the swap fail at
    once, having changed nothing and blocked no one; once it is gone, the swap goes in."""
    head = await fill_service_log(store)
    await _build(store, pg_schema, all_projections())
    await _sql(pg_schema, "UPDATE goal_stats_hourly SET count = count + 5 RETURNING 1")
    before = await _state(pg_schema)
    shards = await _shadows(store, shadow_schemas)
    reader = await asyncpg.connect(pg.dsn_for(pg_schema))
    try:
        transaction = reader.transaction(isolation="repeatable_read", readonly=True)
        await transaction.start()
        await reader.fetch("SELECT count(*) FROM goal_facts")
        with pytest.raises(TablesBusyError, match="could not obtain lock"):
            await _swap(pg_schema, shards)
        assert await _state(pg_schema) == before
        await transaction.rollback()
    finally:
        await reader.close()
    assert await _swap(pg_schema, shards) == {p.name: head for p in all_projections()}


async def test_a_reader_that_locks_first_keeps_the_swap_out_until_it_ends(
    store: SQLiteEventStore, pg_schema: str, shadow_schemas: list[str]
) -> None:
    await fill_service_log(store)
    await _build(store, pg_schema, all_projections())
    shards = await _shadows(store, shadow_schemas)
    database = PostgresProjectionDatabase(pg.dsn_for(pg_schema))
    try:
        async with database.snapshot() as conn:
            await asyncio.to_thread(lock_for_reading, conn, all_projections())
            with pytest.raises(TablesBusyError):
                await _swap(pg_schema, shards)
    finally:
        await database.close()
    await _swap(pg_schema, shards)
