"""The SQLite schema migrations: upgrading an old file in place, refusing a newer one."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventstore.base import AppendResult, NewEvent
from eventstore.chain import GENESIS, encode_json, event_hash
from eventstore.errors import SchemaVersionError
from eventstore.sqlite import SQLiteEventStore
from eventstore.sqlite_schema import MIGRATIONS, migrate
from tests.eventstore.helpers import assert_chain, assert_gap_free, micros

LATEST = max(migration.version for migration in MIGRATIONS)
BASE_US = 1_700_000_000_000_000  # 2023-11-14, microseconds since the epoch


@dataclass(frozen=True)
class OldEvent:
    """An event written by hand into a version-1 database."""

    position: int
    stream: str
    version: int
    event_id: uuid.UUID
    type: str
    data: dict[str, object]
    metadata: dict[str, object]
    recorded_us: int
    hash: bytes


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit, as migrate() needs
    try:
        yield conn
    finally:
        conn.close()


def write_v1(path: Path, plan: list[tuple[str, str, dict[str, object]]]) -> list[OldEvent]:
    """A version-1 database holding ``(stream, type, data)`` events, correctly chained."""
    written: list[OldEvent] = []
    with connect(path) as conn:
        assert migrate(conn, target=1) == 1
        conn.execute("BEGIN")
        stream_ids: dict[str, int] = {}
        versions: dict[str, int] = {}
        previous = GENESIS
        for position, (stream, event_type, data) in enumerate(plan, start=1):
            if stream not in stream_ids:
                cursor = conn.execute(
                    "INSERT INTO streams (name, version) VALUES (?, 0)", (stream,)
                )
                assert cursor.lastrowid is not None
                stream_ids[stream] = cursor.lastrowid
            versions[stream] = versions.get(stream, 0) + 1
            metadata: dict[str, object] = {"source": "v1", "n": position}
            event = OldEvent(
                position,
                stream,
                versions[stream],
                uuid.uuid4(),
                event_type,
                data,
                metadata,
                BASE_US + 1000 * position,
                b"",
            )
            previous = event_hash(
                previous,
                position,
                stream.encode(),
                event.version,
                event.event_id.bytes,
                event_type.encode(),
                1,
                encode_json(data),
                encode_json(metadata),
                event.recorded_us,
            )
            conn.execute(
                "INSERT INTO events (position, stream_id, version, event_id, type,"
                " schema_version, data, metadata, recorded_us, hash)"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                (
                    position,
                    stream_ids[stream],
                    event.version,
                    event.event_id.bytes,
                    event_type,
                    encode_json(data),
                    encode_json(metadata),
                    event.recorded_us,
                    previous,
                ),
            )
            written.append(dataclasses.replace(event, hash=previous))
        for stream, version in versions.items():
            conn.execute("UPDATE streams SET version = ? WHERE name = ?", (version, stream))
        conn.execute("COMMIT")
    return written


PLAN: list[tuple[str, str, dict[str, object]]] = [
    ("order-1", "Placed", {"sku": "A", "qty": 1}),
    ("order-2", "Placed", {"sku": "B", "qty": 2}),
    ("order-1", "Paid", {"amount": 12.5}),
    ("order-1", "Shipped", {"carrier": "DHL", "tags": ["ü", None]}),
    ("order-3", "Placed", {}),
]


def applied(path: Path) -> list[tuple[int, str, str]]:
    with connect(path) as conn:
        return conn.execute(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()


def chain_head(path: Path) -> tuple[int, bytes, int] | None:
    with connect(path) as conn:
        head: tuple[int, bytes, int] | None = conn.execute(
            "SELECT position, hash, recorded_us FROM chain_head"
        ).fetchone()
        return head


def test_migrations_are_numbered_one_to_latest() -> None:
    versions = [migration.version for migration in MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert len({migration.name for migration in MIGRATIONS}) == len(versions)


def test_migrate_a_v1_database_backfills_the_chain_head(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = write_v1(path, PLAN)
    assert [version for version, _, _ in applied(path)] == [1]

    with connect(path) as conn:
        assert migrate(conn) == LATEST
    assert [version for version, _, _ in applied(path)] == list(range(1, LATEST + 1))
    assert chain_head(path) == (old[-1].position, old[-1].hash, old[-1].recorded_us)

    before = applied(path)
    with connect(path) as conn:
        assert migrate(conn) == LATEST  # nothing left to do
    assert applied(path) == before


def test_migrate_to_a_target_stops_there(tmp_path: Path) -> None:
    path = tmp_path / "stepwise.db"
    with connect(path) as conn:
        assert migrate(conn, target=1) == 1
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"streams", "events", "schema_migrations"} <= tables
        assert "chain_head" not in tables
        assert migrate(conn, target=2) == 2
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "chain_head" in tables


async def test_opening_a_v1_database_upgrades_it_and_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = write_v1(path, PLAN)

    async with await SQLiteEventStore.open(path) as store:
        assert [version for version, _, _ in applied(path)] == list(range(1, LATEST + 1))
        assert chain_head(path) == (old[-1].position, old[-1].hash, old[-1].recorded_us)

        report = await store.verify()
        assert report.ok
        assert report.checked == len(old)
        assert (report.head_position, report.head_hash) == (old[-1].position, old[-1].hash)

        events = await store.read_all()
        assert [
            (e.position, e.stream, e.version, e.event_id, e.type, e.schema_version) for e in events
        ] == [(o.position, o.stream, o.version, o.event_id, o.type, 1) for o in old]
        assert [(e.data, e.metadata, e.hash, micros(e.recorded_at)) for e in events] == [
            (o.data, o.metadata, o.hash, o.recorded_us) for o in old
        ]
        assert await store.last_position() == len(old)
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
        upgraded = applied(path)

    async with await SQLiteEventStore.open(path) as reopened:  # a no-op upgrade
        assert applied(path) == upgraded
        assert await reopened.read_all() == everything
        assert (await reopened.verify()) == after


async def test_opening_an_empty_v1_database(tmp_path: Path) -> None:
    path = tmp_path / "empty-v1.db"
    write_v1(path, [])
    async with await SQLiteEventStore.open(path) as store:
        report = await store.verify()
        assert report.ok
        assert (report.checked, report.head_position, report.head_hash) == (0, 0, GENESIS)
        assert await store.last_position() == 0
        assert (await store.append("s", [NewEvent("First", {})])).first_position == 1
        assert (await store.verify()).ok


async def test_a_new_file_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with await SQLiteEventStore.open(path) as store:
        assert await store.last_position() == 0
    rows = applied(path)
    assert [version for version, _, _ in rows] == list(range(1, LATEST + 1))
    for _, _, applied_at in rows:
        assert datetime.fromisoformat(applied_at).tzinfo is not None
        assert datetime.fromisoformat(applied_at) <= datetime.now(UTC)


def _from_the_future(path: Path) -> None:
    with connect(path) as conn:
        assert migrate(conn) == LATEST
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, ?, ?)",
            ("from a newer release", datetime.now(UTC).isoformat()),
        )


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    _from_the_future(path)
    before = applied(path)
    with pytest.raises(SchemaVersionError):
        await SQLiteEventStore.open(path)
    assert applied(path) == before  # left as it was

    with connect(path) as conn, pytest.raises(SchemaVersionError):
        migrate(conn)
