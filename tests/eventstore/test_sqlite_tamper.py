"""verify() finds tampering done to the SQLite file behind the store's back.

Each test fills a log through the store, closes it, edits the file with the ``sqlite3``
module (as an attacker with write access would), reopens the store and verifies.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstore.base import TamperKind, VerifyReport
from eventstore.chain import GENESIS, encode_json, event_hash
from eventstore.sqlite import SQLiteEventStore
from tests.eventstore.helpers import new

EVENTS = 50
STREAMS = ("orders", "payments", "refunds", "users")
ROW_COLUMNS = (
    "stream_id",
    "version",
    "event_id",
    "type",
    "schema_version",
    "data",
    "metadata",
    "recorded_us",
    "hash",
)


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection that commits on success (sqlite3's own context manager doesn't close)."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


async def verify(path: Path, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
    async with await SQLiteEventStore.open(path, poll_interval=None) as store:
        return await store.verify(anchor=anchor)


@pytest.fixture
async def log(tmp_path: Path) -> Path:
    """A closed SQLite file with EVENTS events over several streams, verified clean."""
    path = tmp_path / "tampered.db"
    async with await SQLiteEventStore.open(path, poll_interval=None) as store:
        written = i = 0
        while written < EVENTS:  # batches of 1..5 events, round-robin over the streams
            size = min(1 + i % 5, EVENTS - written)
            events = [new("Filled", i=i, k=k) for k in range(size)]
            await store.append(STREAMS[i % len(STREAMS)], events)
            written += size
            i += 1
        report = await store.verify()
    assert report.ok
    assert report.checked == EVENTS
    return path


def row(conn: sqlite3.Connection, position: int) -> dict[str, Any]:
    values = conn.execute(
        f"SELECT {', '.join(ROW_COLUMNS)} FROM events WHERE position = ?", (position,)
    ).fetchone()
    assert values is not None
    return dict(zip(ROW_COLUMNS, values, strict=True))


def stream_name(conn: sqlite3.Connection, stream_id: object) -> str:
    (name,) = conn.execute("SELECT name FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
    assert isinstance(name, str)
    return name


def hash_of(conn: sqlite3.Connection, position: int, previous: bytes) -> bytes:
    """The correct hash of the row at ``position`` as it is now, after ``previous``."""
    r = row(conn, position)
    return event_hash(
        previous,
        position,
        stream_name(conn, r["stream_id"]).encode(),
        r["version"],
        r["event_id"],
        r["type"].encode(),
        r["schema_version"],
        r["data"],
        r["metadata"],
        r["recorded_us"],
    )


def stored_hash(conn: sqlite3.Connection, position: int) -> bytes:
    if position == 0:
        return GENESIS
    return bytes(row(conn, position)["hash"])


def rehash(conn: sqlite3.Connection, first: int, last: int) -> None:
    """Forge consistent hashes for positions first..last (what a careful attacker does)."""
    previous = stored_hash(conn, first - 1)
    for position in range(first, last + 1):
        previous = hash_of(conn, position, previous)
        conn.execute("UPDATE events SET hash = ? WHERE position = ?", (previous, position))


def forge_head(conn: sqlite3.Connection) -> None:
    """Point chain_head at the (forged) last event, as the store itself would."""
    position, hash_, recorded_us = conn.execute(
        "SELECT position, hash, recorded_us FROM events ORDER BY position DESC LIMIT 1"
    ).fetchone()
    conn.execute(
        "UPDATE chain_head SET position = ?, hash = ?, recorded_us = ?",
        (position, hash_, recorded_us),
    )


def swap_rows(conn: sqlite3.Connection, a: int, b: int) -> None:
    """Swap every column but the position of rows a and b (around the unique indexes)."""
    row_a, row_b = row(conn, a), row(conn, b)
    assignments = ", ".join(f"{column} = :{column}" for column in ROW_COLUMNS)
    conn.execute(
        "UPDATE events SET event_id = randomblob(16), version = -version WHERE position = ?",
        (a,),
    )
    conn.execute(f"UPDATE events SET {assignments} WHERE position = {b}", row_a)
    conn.execute(f"UPDATE events SET {assignments} WHERE position = {a}", row_b)


def expect(report: VerifyReport, position: int, kind: TamperKind) -> None:
    assert not report.ok
    assert report.finding is not None
    assert (report.finding.position, report.finding.kind) == (position, kind), report.finding
    assert report.finding.detail


# -- edits of one row are reported at that row --------------------------------------------

EDITS: dict[str, Callable[[sqlite3.Connection, int], object]] = {
    "data": lambda c, p: c.execute(
        "UPDATE events SET data = ? WHERE position = ?", (encode_json({"i": 999_999}), p)
    ),
    "data-same-length": lambda c, p: c.execute(
        "UPDATE events SET data = CAST(replace(data, '\"k\"', '\"j\"') AS BLOB) WHERE position = ?",
        (p,),
    ),
    "metadata": lambda c, p: c.execute(
        "UPDATE events SET metadata = ? WHERE position = ?", (encode_json({"ip": "evil"}), p)
    ),
    "type": lambda c, p: c.execute("UPDATE events SET type = 'Refunded' WHERE position = ?", (p,)),
    "schema_version": lambda c, p: c.execute(
        "UPDATE events SET schema_version = schema_version + 1 WHERE position = ?", (p,)
    ),
    "recorded_us": lambda c, p: c.execute(
        "UPDATE events SET recorded_us = recorded_us - 1 WHERE position = ?", (p,)
    ),
    "version": lambda c, p: c.execute(
        "UPDATE events SET version = version + 1000 WHERE position = ?", (p,)
    ),
    "event_id": lambda c, p: c.execute(
        "UPDATE events SET event_id = randomblob(16) WHERE position = ?", (p,)
    ),
    "moved-to-other-stream": lambda c, p: c.execute(
        "UPDATE events SET stream_id = (SELECT max(stream_id) FROM streams WHERE stream_id !="
        " (SELECT stream_id FROM events WHERE position = :p)), version = 1000 WHERE position = :p",
        {"p": p},
    ),
    "hash": lambda c, p: c.execute(
        "UPDATE events SET hash = zeroblob(32) WHERE position = ?", (p,)
    ),
    "data-as-text": lambda c, p: c.execute(
        "UPDATE events SET data = CAST(data AS TEXT) || ' ' WHERE position = ?", (p,)
    ),
    "empty-text-metadata": lambda c, p: c.execute(
        "UPDATE events SET metadata = '' WHERE position = ?", (p,)
    ),
}


@pytest.mark.parametrize("position", [1, 20, EVENTS])
@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS)
async def test_an_edited_row_is_a_hash_mismatch_at_its_position(
    log: Path, edit: Callable[[sqlite3.Connection, int], object], position: int
) -> None:
    with connect(log) as conn:
        edit(conn, position)
    expect(await verify(log), position, TamperKind.HASH_MISMATCH)


async def test_renaming_a_stream_is_a_mismatch_at_its_first_event(log: Path) -> None:
    with connect(log) as conn:
        first = conn.execute(
            "SELECT min(position) FROM events e JOIN streams s USING (stream_id)"
            " WHERE s.name = 'payments'"
        ).fetchone()[0]
        conn.execute("UPDATE streams SET name = 'paymentz' WHERE name = 'payments'")
    assert first > 1
    expect(await verify(log), first, TamperKind.HASH_MISMATCH)


async def test_only_the_first_of_several_edits_is_reported(log: Path) -> None:
    with connect(log) as conn:
        for position in (33, 12, 40):
            EDITS["data"](conn, position)
    expect(await verify(log), 12, TamperKind.HASH_MISMATCH)


# -- deleting and reordering ----------------------------------------------------------------


@pytest.mark.parametrize(("first", "last"), [(20, 20), (20, 24), (1, 1), (1, 3)])
async def test_deleted_middle_rows_are_missing(log: Path, first: int, last: int) -> None:
    with connect(log) as conn:
        conn.execute("DELETE FROM events WHERE position BETWEEN ? AND ?", (first, last))
    expect(await verify(log), first, TamperKind.MISSING)


async def test_renumbered_positions_are_a_mismatch(log: Path) -> None:
    # Close the gap after a delete by shifting later positions down: the chain still breaks.
    with connect(log) as conn:
        conn.execute("DELETE FROM events WHERE position = 20")
        conn.execute("UPDATE events SET position = position - 1 WHERE position > 20")
        forge_head(conn)
    expect(await verify(log), 20, TamperKind.HASH_MISMATCH)


@pytest.mark.parametrize(("a", "b"), [(10, 30), (1, 2), (49, 50), (5, 45)])
async def test_swapped_rows_are_a_mismatch_at_the_lower_position(log: Path, a: int, b: int) -> None:
    with connect(log) as conn:
        swap_rows(conn, a, b)
        assert row(conn, a)["hash"] != row(conn, b)["hash"]
    expect(await verify(log), a, TamperKind.HASH_MISMATCH)


@pytest.mark.parametrize("deleted", [1, 3, EVENTS - 1])
async def test_deleting_the_last_rows_is_truncation(log: Path, deleted: int) -> None:
    with connect(log) as conn:
        conn.execute("DELETE FROM events WHERE position > ?", (EVENTS - deleted,))
    report = await verify(log)
    expect(report, EVENTS - deleted + 1, TamperKind.TRUNCATED)


async def test_deleting_every_row_is_truncation(log: Path) -> None:
    with connect(log) as conn:
        conn.execute("DELETE FROM events")
    expect(await verify(log), 1, TamperKind.TRUNCATED)


# -- forged hashes ---------------------------------------------------------------------------


@pytest.mark.parametrize("position", [1, 20, EVENTS - 1])
async def test_a_consistently_rehashed_row_breaks_the_next_one(log: Path, position: int) -> None:
    # The attacker edits a row and gives it a correct hash, but the next row's hash was
    # computed over the old one.
    with connect(log) as conn:
        EDITS["data"](conn, position)
        rehash(conn, position, position)
    expect(await verify(log), position + 1, TamperKind.HASH_MISMATCH)


async def test_a_consistently_rehashed_last_row_breaks_the_chain_head(log: Path) -> None:
    with connect(log) as conn:
        EDITS["data"](conn, EVENTS)
        rehash(conn, EVENTS, EVENTS)
    expect(await verify(log), EVENTS, TamperKind.HEAD_MISMATCH)


async def test_an_edited_chain_head_hash_is_a_head_mismatch(log: Path) -> None:
    with connect(log) as conn:
        conn.execute("UPDATE chain_head SET hash = zeroblob(32)")
    expect(await verify(log), EVENTS, TamperKind.HEAD_MISMATCH)


async def test_rows_added_behind_the_chain_head_are_a_head_mismatch(log: Path) -> None:
    # A correctly chained row appended by hand, without moving the chain head.
    with connect(log) as conn:
        last = row(conn, EVENTS)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, randomblob(16), 'Forged', 1, ?, ?, ?, ?)",
            (
                EVENTS + 1,
                last["stream_id"],
                1000,
                encode_json({"forged": True}),
                b"{}",
                last["recorded_us"],
                b"",
            ),
        )
        rehash(conn, EVENTS + 1, EVENTS + 1)
    expect(await verify(log), EVENTS + 1, TamperKind.HEAD_MISMATCH)


async def test_anchors_catch_a_fully_recomputed_chain(log: Path) -> None:
    anchor_report = await verify(log)
    anchor = (anchor_report.head_position, anchor_report.head_hash)
    early = 5

    with connect(log) as conn:
        EDITS["data"](conn, early)
        rehash(conn, early, EVENTS)
        forge_head(conn)

    # Someone who can write the file can recompute every later hash and the chain head:
    # the chain is then self-consistent, so verify() without an anchor cannot tell. That
    # is why anchors exist: a (position, hash) kept outside the database (printed,
    # mailed, published) pins history up to that position.
    forged = await verify(log)
    assert forged.ok
    assert forged.checked == EVENTS
    assert forged.head_hash != anchor[1]

    expect(await verify(log, anchor=anchor), anchor[0], TamperKind.ANCHOR_MISMATCH)


async def test_an_anchor_before_the_forgery_still_passes(log: Path) -> None:
    # An anchor only vouches for history up to its position.
    with connect(log) as conn:
        anchor = (30, stored_hash(conn, 30))
        EDITS["data"](conn, 40)
        rehash(conn, 40, EVENTS)
        forge_head(conn)
    assert (await verify(log, anchor=anchor)).ok
    expect(await verify(log, anchor=(45, anchor[1])), 45, TamperKind.ANCHOR_MISMATCH)


async def test_an_anchor_catches_a_consistent_truncation(log: Path) -> None:
    # Delete the last rows and move the chain head back: consistent, but not to the anchor.
    report = await verify(log)
    anchor = (report.head_position, report.head_hash)
    with connect(log) as conn:
        conn.execute("DELETE FROM events WHERE position > ?", (EVENTS - 3,))
        forge_head(conn)
    assert (await verify(log)).ok
    expect(await verify(log, anchor=anchor), EVENTS - 2, TamperKind.ANCHOR_MISMATCH)
