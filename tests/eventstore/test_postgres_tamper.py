"""verify() finds tampering done to the PostgreSQL tables behind the store's back.

Each test fills a log through the store, closes it, edits the tables over a plain asyncpg
connection (as an operator or attacker with write access would), reopens and verifies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from eventstore.base import TamperKind, VerifyReport
from eventstore.chain import GENESIS, encode_json, event_hash
from tests.eventstore.pg_helpers import fill, open_store, raw_connection

EVENTS = 50
ROW = (
    "SELECT e.position, s.name, e.version, e.event_id, e.type, e.schema_version, e.data,"
    " e.metadata, e.recorded_us FROM events e JOIN streams s USING (stream_id)"
    " WHERE e.position = $1"
)

Edit = Callable[[Any, int], Awaitable[object]]


async def verify(schema: str, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
    async with await open_store(schema) as store:
        return await store.verify(anchor=anchor)


@pytest.fixture
async def log(pg_schema: str) -> str:
    """The schema of a closed log with EVENTS events over several streams, verified clean."""
    async with await open_store(pg_schema) as store:
        await fill(store, EVENTS)
        report = await store.verify()
    assert report.ok
    assert report.checked == EVENTS
    return pg_schema


def expect(report: VerifyReport, position: int, kind: TamperKind) -> None:
    assert not report.ok
    assert report.finding is not None
    assert (report.finding.position, report.finding.kind) == (position, kind), report.finding
    assert report.finding.detail


async def rehash(conn: Any, first: int, last: int) -> None:
    """Forge consistent hashes for positions first..last and the head (a careful attacker)."""
    previous = GENESIS
    if first > 1:
        previous = await conn.fetchval("SELECT hash FROM events WHERE position = $1", first - 1)
    for position in range(first, last + 1):
        p, stream, version, event_id, type_, schema_version, data, meta, us = await conn.fetchrow(
            ROW, position
        )
        previous = event_hash(
            previous, p, stream.encode(), version, event_id, type_.encode(), schema_version,
            data, meta, us,
        )  # fmt: skip
        await conn.execute("UPDATE events SET hash = $1 WHERE position = $2", previous, position)
    await conn.execute(
        "UPDATE chain_head SET (position, hash, recorded_us) ="
        " (SELECT position, hash, recorded_us FROM events ORDER BY position DESC LIMIT 1)"
    )


EDITS: dict[str, Edit] = {
    "data": lambda c, p: c.execute(
        "UPDATE events SET data = $1 WHERE position = $2", encode_json({"i": 999_999}), p
    ),
    "data-same-length": lambda c, p: c.execute(
        "UPDATE events SET data = convert_to(replace(convert_from(data, 'UTF8'), '\"k\"',"
        " '\"j\"'), 'UTF8') WHERE position = $1",
        p,
    ),
    "metadata": lambda c, p: c.execute(
        "UPDATE events SET metadata = $1 WHERE position = $2", encode_json({"ip": "evil"}), p
    ),
    "type": lambda c, p: c.execute("UPDATE events SET type = 'Refunded' WHERE position = $1", p),
    "schema_version": lambda c, p: c.execute(
        "UPDATE events SET schema_version = schema_version + 1 WHERE position = $1", p
    ),
    "recorded_us": lambda c, p: c.execute(
        "UPDATE events SET recorded_us = recorded_us - 1 WHERE position = $1", p
    ),
    "version": lambda c, p: c.execute(
        "UPDATE events SET version = version + 1000 WHERE position = $1", p
    ),
    "event_id": lambda c, p: c.execute(
        "UPDATE events SET event_id = decode(md5(random()::text), 'hex') WHERE position = $1", p
    ),
    "moved-to-other-stream": lambda c, p: c.execute(
        "UPDATE events SET stream_id = (SELECT max(stream_id) FROM streams WHERE stream_id <>"
        " (SELECT stream_id FROM events WHERE position = $1)), version = 1000"
        " WHERE position = $1",
        p,
    ),
    "stream-row-deleted": lambda c, p: c.execute(
        "DELETE FROM streams WHERE stream_id = (SELECT stream_id FROM events WHERE position = $1)",
        p,
    ),
    "hash": lambda c, p: c.execute(
        "UPDATE events SET hash = decode(repeat('00', 32), 'hex') WHERE position = $1", p
    ),
}


@pytest.mark.parametrize("position", [1, 20, EVENTS])
@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS)
async def test_an_edited_row_is_a_hash_mismatch_at_its_position(
    log: str, edit: Edit, position: int
) -> None:
    async with raw_connection(log) as conn:
        await edit(conn, position)
    report = await verify(log)
    if edit is EDITS["stream-row-deleted"]:
        # every event of that stream loses its name: the first of them is reported
        async with raw_connection(log) as conn:
            first = await conn.fetchval(
                "SELECT min(position) FROM events e"
                " WHERE NOT EXISTS (SELECT FROM streams s WHERE s.stream_id = e.stream_id)"
            )
        expect(report, first, TamperKind.HASH_MISMATCH)
    else:
        expect(report, position, TamperKind.HASH_MISMATCH)


@pytest.mark.parametrize("position", [1, 20, EVENTS - 1])
async def test_a_deleted_row_is_missing(log: str, position: int) -> None:
    async with raw_connection(log) as conn:
        await conn.execute("DELETE FROM events WHERE position = $1", position)
    expect(await verify(log), position, TamperKind.MISSING)


async def test_deleting_the_last_rows_is_a_truncation(log: str) -> None:
    async with raw_connection(log) as conn:
        await conn.execute("DELETE FROM events WHERE position > $1", EVENTS - 3)
    expect(await verify(log), EVENTS - 2, TamperKind.TRUNCATED)


async def test_deleting_the_last_rows_and_forging_the_head_needs_the_anchor(log: str) -> None:
    anchor_report = await verify(log)
    anchor = (anchor_report.head_position, anchor_report.head_hash)
    async with raw_connection(log) as conn:
        await conn.execute("DELETE FROM events WHERE position > $1", EVENTS - 3)
        await rehash(conn, 1, EVENTS - 3)
    assert (await verify(log)).ok  # a consistent shorter log...
    expect(await verify(log, anchor), EVENTS - 2, TamperKind.ANCHOR_MISMATCH)  # ...but not


async def test_swapped_rows_are_a_mismatch_at_the_first(log: str) -> None:
    async with raw_connection(log) as conn, conn.transaction():
        # swap every column but the position of rows 10 and 30 (around the unique indexes)
        await conn.execute(
            "UPDATE events SET position = -position WHERE position IN (10, 30);"
            " UPDATE events SET position = 30 WHERE position = -10;"
            " UPDATE events SET position = 10 WHERE position = -30;"
        )
    expect(await verify(log), 10, TamperKind.HASH_MISMATCH)


async def test_a_row_added_outside_the_store_is_a_head_mismatch(log: str) -> None:
    async with raw_connection(log) as conn:
        await conn.execute(
            "INSERT INTO events SELECT position + 1, stream_id, version + 1000,"
            " decode(md5('x'), 'hex'), type, schema_version, data, metadata, recorded_us,"
            " hash FROM events WHERE position = $1",
            EVENTS,
        )
        await rehash(conn, EVENTS + 1, EVENTS + 1)
        await conn.execute("UPDATE chain_head SET position = $1", EVENTS)  # as it was
    expect(await verify(log), EVENTS + 1, TamperKind.HEAD_MISMATCH)


async def test_rewritten_and_rehashed_history_is_an_anchor_mismatch(log: str) -> None:
    anchor_report = await verify(log)
    async with raw_connection(log) as conn:
        await EDITS["data"](conn, 5)
        await rehash(conn, 5, EVENTS)
    assert (await verify(log)).ok  # the chain alone cannot tell
    report = await verify(log, (anchor_report.head_position, anchor_report.head_hash))
    expect(report, EVENTS, TamperKind.ANCHOR_MISMATCH)
