"""The PostgreSQL schema migrations: upgrading an old schema in place, refusing a newer one."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from eventstore.base import AppendResult, NewEvent
from eventstore.chain import GENESIS, encode_json, event_hash
from eventstore.errors import SchemaVersionError
from eventstore.postgres_schema import MIGRATIONS, migrate
from tests.eventstore.helpers import assert_chain, assert_gap_free, micros
from tests.eventstore.pg_helpers import open_store, raw_connection

LATEST = max(migration.version for migration in MIGRATIONS)
BASE_US = 1_700_000_000_000_000  # 2023-11-14, microseconds since the epoch

PLAN: list[tuple[str, str, dict[str, object]]] = [
    ("order-1", "Placed", {"sku": "A", "qty": 1}),
    ("order-2", "Placed", {"sku": "B", "qty": 2}),
    ("order-1", "Paid", {"amount": 12.5}),
    ("order-1", "Shipped", {"carrier": "DHL", "tags": ["ü", None]}),
    ("order-3", "Placed", {}),
]


async def write_v1(conn: Any, plan: list[tuple[str, str, dict[str, object]]]) -> list[Any]:
    """A version-1 schema holding ``(stream, type, data)`` events, correctly chained.

    Returns the rows as written: (position, stream, version, event_id, type, data,
    metadata, recorded_us, hash).
    """
    assert await migrate(conn, target=1) == 1
    written = []
    versions: dict[str, int] = {}
    previous = GENESIS
    async with conn.transaction():
        for position, (stream, event_type, data) in enumerate(plan, start=1):
            if stream not in versions:
                await conn.execute("INSERT INTO streams (name, version) VALUES ($1, 0)", stream)
            versions[stream] = versions.get(stream, 0) + 1
            metadata: dict[str, object] = {"source": "v1", "n": position}
            event_id, recorded_us = uuid.uuid4(), BASE_US + 1000 * position
            previous = event_hash(
                previous,
                position,
                stream.encode(),
                versions[stream],
                event_id.bytes,
                event_type.encode(),
                1,
                encode_json(data),
                encode_json(metadata),
                recorded_us,
            )
            await conn.execute(
                "INSERT INTO events (position, stream_id, version, event_id, type,"
                " schema_version, data, metadata, recorded_us, hash)"
                " SELECT $1, stream_id, $2, $3, $4, 1, $5, $6, $7, $8 FROM streams"
                " WHERE name = $9",
                position,
                versions[stream],
                event_id.bytes,
                event_type,
                encode_json(data),
                encode_json(metadata),
                recorded_us,
                previous,
                stream,
            )
            row = (position, stream, versions[stream], event_id, event_type, data, metadata)
            written.append((*row, recorded_us, previous))
        for stream, version in versions.items():
            await conn.execute("UPDATE streams SET version = $1 WHERE name = $2", version, stream)
    return written


async def applied(conn: Any) -> list[int]:
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [row[0] for row in rows]


async def head(conn: Any) -> tuple[int, bytes, int]:
    row = await conn.fetchrow("SELECT position, hash, recorded_us FROM chain_head")
    return (row[0], row[1], row[2])


def test_migrations_are_numbered_one_to_latest() -> None:
    versions = [migration.version for migration in MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert len({migration.name for migration in MIGRATIONS}) == len(versions)


async def test_migrate_stepwise_and_backfill_the_chain_head(pg_schema: str) -> None:
    async with raw_connection(pg_schema) as conn:
        old = await write_v1(conn, PLAN)
        assert await applied(conn) == [1]
        assert await conn.fetchval("SELECT to_regclass('chain_head')") is None
        assert await migrate(conn) == LATEST
        assert await applied(conn) == list(range(1, LATEST + 1))
        assert await head(conn) == (old[-1][0], old[-1][8], old[-1][7])
        assert await migrate(conn) == LATEST  # nothing left to do
        assert await applied(conn) == list(range(1, LATEST + 1))


async def test_opening_a_v1_schema_upgrades_it_and_continues_the_chain(pg_schema: str) -> None:
    async with raw_connection(pg_schema) as conn:
        old = await write_v1(conn, PLAN)

    async with await open_store(pg_schema) as store:
        async with raw_connection(pg_schema) as conn:
            assert await applied(conn) == list(range(1, LATEST + 1))
        report = await store.verify()
        assert report.ok
        assert report.checked == len(old)
        assert (report.head_position, report.head_hash) == (old[-1][0], old[-1][8])

        events = await store.read_all()
        assert [
            (e.position, e.stream, e.version, e.event_id, e.type, e.data, e.metadata)
            for e in events
        ] == [row[:7] for row in old]
        assert [(micros(e.recorded_at), e.hash) for e in events] == [row[7:] for row in old]
        assert await store.stream_version("order-1") == 3

        result = await store.append("order-1", [NewEvent("Delivered", {"ok": True})], 3)
        assert result == AppendResult("order-1", 6, 6, 4)
        await store.append("order-4", [NewEvent("Placed", {"sku": "C"})])
        after = await store.verify()
        assert after.ok
        assert after.checked == len(old) + 2
        everything = await store.read_all()
        assert_gap_free(everything)
        assert_chain(everything)

    async with await open_store(pg_schema) as reopened:  # a no-op upgrade
        assert await reopened.read_all() == everything
        assert (await reopened.verify()) == after


async def test_opening_an_empty_v1_schema(pg_schema: str) -> None:
    async with raw_connection(pg_schema) as conn:
        await write_v1(conn, [])
    async with await open_store(pg_schema) as store:
        report = await store.verify()
        assert (report.ok, report.checked, report.head_position) == (True, 0, 0)
        assert report.head_hash == GENESIS
        assert (await store.append("s", [NewEvent("First", {})])).first_position == 1
        assert (await store.verify()).ok


async def test_concurrent_opens_of_a_new_schema_migrate_it_once(pg_schema: str) -> None:
    stores = await asyncio.gather(*(open_store(pg_schema) for _ in range(4)))
    try:
        async with raw_connection(pg_schema) as conn:
            rows = await conn.fetch("SELECT version, applied_at FROM schema_migrations")
        assert sorted(version for version, _ in rows) == list(range(1, LATEST + 1))
        assert all(applied_at <= datetime.now(UTC) for _, applied_at in rows)
        results = await asyncio.gather(*(s.append("s", [NewEvent("E", {})]) for s in stores))
        assert sorted(r.first_position for r in results) == [1, 2, 3, 4]
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused(pg_schema: str) -> None:
    async with raw_connection(pg_schema) as conn:
        assert await migrate(conn) == LATEST
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (999, 'from a newer release')"
        )
    with pytest.raises(SchemaVersionError):
        await open_store(pg_schema)
    async with raw_connection(pg_schema) as conn:
        assert await applied(conn) == [*range(1, LATEST + 1), 999]  # left as it was
        with pytest.raises(SchemaVersionError):
            await migrate(conn)
