"""Copying a log between backends: ``iter_raw`` out of one, ``import_raw`` into PostgreSQL.

The copy keeps positions, versions, ids, recorded times and hashes, so ``verify`` passes
on PostgreSQL with the very head hash SQLite reported; rows that do not continue the log
(edited, out of order, already there) are refused, naming the position.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from eventstore.base import NewEvent, RawEvent
from eventstore.chain import encode_json
from eventstore.errors import TamperedLogError
from eventstore.postgres import PostgresEventStore
from eventstore.sqlite import SQLiteEventStore
from tests import pg
from tests.eventstore.helpers import assert_gap_free, new, read_everything
from tests.eventstore.pg_helpers import fill, open_store

EVENTS = 60
WAIT = 10.0


async def raw_log(store: SQLiteEventStore | PostgresEventStore, **options: Any) -> list[RawEvent]:
    return [event async for batch in store.iter_raw(**options) for event in batch]


async def sqlite_log(path: Path) -> SQLiteEventStore:
    """A SQLite log with events over several streams, some with odd names and content."""
    store = await SQLiteEventStore.open(path, poll_interval=None)
    await fill(store, EVENTS - 2)
    await store.append("ström 😀", [NewEvent("Ünïcode", {"ß": [1.5, None]}, {"who": "me"})])
    await store.append("old", [NewEvent("Renamed", {"name": "Ada"}, schema_version=3)])
    return store


@pytest.fixture
async def source(tmp_path: Path) -> Any:
    store = await sqlite_log(tmp_path / "source.db")
    yield store
    await store.close()


@pytest.fixture
async def target(pg_schema: str) -> Any:
    store = await open_store(pg_schema)
    yield store
    await store.close()


async def test_iter_raw_is_the_stored_log(source: SQLiteEventStore) -> None:
    raw = await raw_log(source, batch_size=7)
    recorded = await read_everything(source)
    assert [e.position for e in raw] == list(range(1, EVENTS + 1))
    for row, event in zip(raw, recorded, strict=True):
        assert (row.stream, row.version, row.event_id, row.type, row.schema_version) == (
            event.stream,
            event.version,
            event.event_id.bytes,
            event.type,
            event.schema_version,
        )
        assert (row.data, row.metadata) == (encode_json(event.data), encode_json(event.metadata))
        assert row.hash == event.hash
    assert await raw_log(source, after=EVENTS - 3) == raw[-3:]
    assert await raw_log(source, after=EVENTS) == []
    batches = [len(batch) async for batch in source.iter_raw(batch_size=25)]
    assert batches == [25, 25, 10]


async def test_a_sqlite_log_imported_into_postgres_verifies_with_the_same_hashes(
    source: SQLiteEventStore, target: PostgresEventStore
) -> None:
    async for batch in source.iter_raw(batch_size=13):
        assert await target.import_raw(batch) == batch[-1].position
    assert await target.last_position() == EVENTS

    there, here = await source.verify(), await target.verify()
    assert here.ok
    assert (here.checked, here.head_position, here.head_hash) == (
        there.checked,
        there.head_position,
        there.head_hash,
    )
    assert await read_everything(target) == await read_everything(source)
    assert await raw_log(target, batch_size=11) == await raw_log(source)
    for stream in ("orders", "payments", "ström 😀", "old"):
        assert await target.stream_version(stream) == await source.stream_version(stream)

    # The log goes on in PostgreSQL: versions and the chain continue from the copy.
    version = await target.stream_version("orders")
    result = await target.append("orders", [new()], version)
    assert (result.first_position, result.stream_version) == (EVENTS + 1, version + 1)
    everything = await read_everything(target)
    assert_gap_free(everything)
    assert (await target.verify()).ok
    assert (await target.verify(anchor=(there.head_position, there.head_hash))).ok


def _edit(rows: list[RawEvent], position: int, **change: Any) -> list[RawEvent]:
    return [dataclasses.replace(r, **change) if r.position == position else r for r in rows]


REFUSALS: dict[str, tuple[Any, int]] = {
    # name: (how the copied rows are changed, the position named)
    "edited-data": (lambda rows: _edit(rows, 20, data=encode_json({"i": -1})), 20),
    "edited-metadata": (lambda rows: _edit(rows, 7, metadata=b'{"ip":"evil"}'), 7),
    "edited-type": (lambda rows: _edit(rows, 33, type="Refunded"), 33),
    "edited-recorded-time": (
        lambda rows: _edit(rows, 40, recorded_us=rows[39].recorded_us + 1),
        40,
    ),
    "forged-hash": (lambda rows: _edit(rows, 12, hash=bytes(32)), 12),
    "not-json": (lambda rows: _edit(rows, 5, data=b"{oops"), 5),
    "dropped-row": (lambda rows: rows[:9] + rows[10:], 11),
    "swapped-rows": (
        lambda rows: [
            *rows[:14],
            dataclasses.replace(rows[15], position=15),
            dataclasses.replace(rows[14], position=16),
            *rows[16:],
        ],
        15,
    ),
    "skipped-version": (lambda rows: _edit(rows, 25, version=rows[24].version + 1), 25),
    "repeated-id": (lambda rows: _edit(rows, 30, event_id=rows[3].event_id), 30),
    "time-going-back": (lambda rows: _edit(rows, 50, recorded_us=0), 50),
    "nul-in-stream": (lambda rows: _edit(rows, 2, stream="a\x00b"), 2),
    "surrogate-in-type": (lambda rows: _edit(rows, 3, type="bad\udcff"), 3),
    "short-event-id": (lambda rows: _edit(rows, 4, event_id=b"1234"), 4),
}


@pytest.mark.parametrize(("change", "position"), REFUSALS.values(), ids=REFUSALS)
async def test_rows_that_do_not_continue_the_log_are_refused(
    source: SQLiteEventStore, target: PostgresEventStore, change: Any, position: int
) -> None:
    rows = change(await raw_log(source))
    with pytest.raises(TamperedLogError) as caught:
        await target.import_raw(rows)
    assert caught.value.position == position
    assert await target.last_position() == 0  # one transaction: nothing imported
    assert await read_everything(target) == []
    assert await target.import_raw(await raw_log(source)) == EVENTS  # the real copy goes in
    assert (await target.verify()).ok


async def test_an_import_must_start_right_after_the_head(
    source: SQLiteEventStore, target: PostgresEventStore
) -> None:
    rows = await raw_log(source)
    with pytest.raises(TamperedLogError) as caught:
        await target.import_raw(rows[5:])  # the log is empty: position 1 comes first
    assert caught.value.position == 6
    assert await target.import_raw(rows[:10]) == 10
    for again in (rows[:10], rows[5:], rows[11:]):  # already there, overlapping, a gap
        with pytest.raises(TamperedLogError):
            await target.import_raw(again)
    assert await target.import_raw([]) == 10
    assert await target.import_raw(rows[10:]) == EVENTS
    assert (await target.verify()).ok


async def test_an_import_into_a_log_with_other_events_is_refused(
    source: SQLiteEventStore, target: PostgresEventStore
) -> None:
    await target.append("mine", [new()])
    with pytest.raises(TamperedLogError) as caught:
        await target.import_raw(await raw_log(source))
    assert caught.value.position == 1


async def test_an_import_wakes_waiters_of_other_instances(
    source: SQLiteEventStore, target: PostgresEventStore, pg_schema: str
) -> None:
    async with await open_store(pg_schema) as other:
        waiter = asyncio.create_task(other.wait_for_events(0))
        done, _ = await asyncio.wait({waiter}, timeout=0.05)
        assert not done
        await target.import_raw(await raw_log(source))
        assert await asyncio.wait_for(waiter, WAIT) == EVENTS


async def test_postgres_to_postgres(target: PostgresEventStore, pg_schema: str) -> None:
    await fill(target, 25)
    copy_schema = pg_schema + "_copy"
    await pg.create_schema(copy_schema)
    try:
        async with await open_store(copy_schema) as copy:
            async for batch in target.iter_raw(batch_size=10):
                await copy.import_raw(batch)
            assert await read_everything(copy) == await read_everything(target)
            assert await copy.verify() == await target.verify()
    finally:
        await pg.drop_schema(copy_schema)
