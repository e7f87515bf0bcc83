"""One group-commit transaction on SQLite: many appends, one ``BEGIN IMMEDIATE``, one sync.

Runs in the writer connection's thread. Each append of the batch is checked in order
against the state the earlier appends of the same batch left (idempotency first, then the
expected version), so a batch behaves exactly like the same appends run one by one; an
append that fails its checks gets its own error and the others still commit.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

from eventstore.appending import (
    AppendRequest,
    Outcome,
    Stored,
    verdict,
)
from eventstore.base import AppendResult
from eventstore.chain import GENESIS, event_hash

STREAM_VERSION = (
    "(SELECT COALESCE(MAX(e.version), 0) FROM events e WHERE e.stream_id = s.stream_id)"
)
"""A stream's version (``s``: its streams row): its last event's, found in the index."""

# SQLite's default limit of bound variables is 32766 since 3.32; stay well below it.
_IN_CHUNK = 900


def _chunks(items: Sequence[bytes] | Sequence[str]) -> Iterable[Sequence[bytes] | Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


class _Stream:
    __slots__ = ("stream_id", "version")

    def __init__(self, stream_id: int | None, version: int) -> None:
        self.stream_id = stream_id
        self.version = version


class WriterCache:
    """Stream ids and versions as of this writer's last commit, to skip their lookup.

    Valid only while no other connection has committed: SQLite's ``data_version``
    changes exactly then, and the cache is dropped. It is also dropped whenever a batch
    fails, since the batch may have advanced versions that were then rolled back.
    """

    MAX_STREAMS = 200_000

    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.data_version: int | None = None

    def refresh(self, conn: sqlite3.Connection) -> None:
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self.data_version or len(self.streams) > self.MAX_STREAMS:
            self.streams.clear()
            self.data_version = data_version

    def clear(self) -> None:
        self.streams.clear()
        self.data_version = None


def _load_streams(
    conn: sqlite3.Connection, cache: WriterCache, wanted: set[str]
) -> dict[str, _Stream]:
    found = cache.streams
    names = [name for name in wanted if name not in found]
    for chunk in _chunks(names):
        marks = ",".join("?" * len(chunk))
        for name, stream_id, version in conn.execute(
            f"SELECT name, stream_id, {STREAM_VERSION} FROM streams s WHERE name IN ({marks})",
            chunk,
        ):
            found[name] = _Stream(stream_id, version)
    return found


def _load_stored(conn: sqlite3.Connection, ids: list[bytes]) -> dict[bytes, Stored]:
    found: dict[bytes, Stored] = {}
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            "SELECT e.event_id, e.position, s.name, e.version, e.type, e.schema_version, e.data"
            " FROM events e JOIN streams s ON s.stream_id = e.stream_id"
            f" WHERE e.event_id IN ({marks})",
            chunk,
        ):
            found[row[0]] = Stored(*row[1:])
    return found


class _CheckIds(Exception):
    """The optimistic write of a batch cannot decide an outcome without the id lookup."""


def commit_batch(
    conn: sqlite3.Connection, batch: Sequence[AppendRequest], cache: WriterCache
) -> list[Outcome]:
    """Check and write a batch of appends in one transaction; an outcome per request.

    Raises ``sqlite3.Error`` (after rolling back) only when the transaction itself fails,
    in which case nothing of the batch was written.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        cache.refresh(conn)
        try:
            # Optimistic: new ids are the rule, so the batch is written without looking
            # them up; the unique index on event_id catches any already stored.
            outcomes = _write(conn, batch, cache, check_ids=False)
        except (sqlite3.IntegrityError, _CheckIds):
            # Some id is stored (a retry) or repeated in the batch, or an expected version
            # failed: write the batch again, checking every id first (idempotent results,
            # DuplicateEventError, and only then ConcurrencyError).
            conn.execute("ROLLBACK")
            cache.clear()
            conn.execute("BEGIN IMMEDIATE")
            cache.refresh(conn)
            outcomes = _write(conn, batch, cache, check_ids=True)
        conn.execute("COMMIT")
    except BaseException:
        cache.clear()
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _write(
    conn: sqlite3.Connection,
    batch: Sequence[AppendRequest],
    cache: WriterCache,
    *,
    check_ids: bool,
) -> list[Outcome]:
    position, previous, last_us = conn.execute(
        "SELECT position, hash, recorded_us FROM chain_head"
    ).fetchone() or (0, GENESIS, 0)
    streams = _load_streams(conn, cache, {r.stream for r in batch})
    ids = [e.event_id for r in batch for e in r.events]
    stored = _load_stored(conn, ids) if check_ids else {}
    # Later appends of the batch must see the ids of earlier ones only if an id repeats.
    ids_in_batch = len(set(ids)) != len(ids)
    # Recorded time never goes backwards along the log, so "as of T" is a prefix of it.
    recorded_us = max(time.time_ns() // 1000, last_us)

    rows: list[tuple[object, ...]] = []
    outcomes: list[Outcome] = []
    for request in batch:
        stream = streams.get(request.stream)
        outcome = verdict(request, stored, stream.version if stream is not None else 0)
        if outcome is not None:
            if not check_ids:
                # Unchecked, only a version can fail; but it may be a retry of a stored
                # append, whose answer is its original result: only the checked path knows.
                raise _CheckIds
            outcomes.append(outcome)
            continue
        if stream is None:
            cursor = conn.execute("INSERT INTO streams (name) VALUES (?)", (request.stream,))
            stream = streams[request.stream] = _Stream(cursor.lastrowid, 0)
        first = position + 1
        for event in request.events:
            position += 1
            stream.version += 1
            previous = event_hash(
                previous,
                position,
                request.stream_utf8,
                stream.version,
                event.event_id,
                event.type_utf8,
                event.schema_version,
                event.data,
                event.metadata,
                recorded_us,
            )
            rows.append(
                (
                    position,
                    stream.stream_id,
                    stream.version,
                    event.event_id,
                    event.type,
                    event.schema_version,
                    event.data,
                    event.metadata,
                    recorded_us,
                    previous,
                )
            )
            if ids_in_batch:
                stored[event.event_id] = Stored(
                    position,
                    request.stream,
                    stream.version,
                    event.type,
                    event.schema_version,
                    event.data,
                )
        outcomes.append(AppendResult(request.stream, first, position, stream.version))

    if rows:
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute(
            "UPDATE chain_head SET position = ?, hash = ?, recorded_us = ?",
            (position, previous, recorded_us),
        )
    return outcomes
