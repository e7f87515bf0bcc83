"""One group-commit transaction on PostgreSQL: many appends, one lock, one commit.

Every transaction that adds events (a batch of appends, or an import) first locks the
``chain_head`` row (``SELECT ... FOR UPDATE``), reads the head, the streams and the event
ids it needs *under that lock*, assigns positions ``head + 1 ...``, writes, moves the head
and commits while still holding the lock. See :mod:`eventstore.postgres` for why.

Each append of a batch is checked in order against the state the earlier appends of the
same batch left (idempotency first, then the expected version), so a batch behaves exactly
like the same appends run one by one; an append that fails its checks gets its own error
and the others still commit. The write itself is one statement (new streams, stream
versions, events, head, and the NOTIFY that wakes other instances' waiters on commit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from eventstore.appending import (
    AppendRequest,
    Outcome,
    Stored,
    verdict,
)
from eventstore.base import AppendResult
from eventstore.chain import event_hash
from eventstore.errors import EventStoreError
from eventstore.postgres_driver import Connection

_LOCK_HEAD = (
    "SELECT position, hash, recorded_us,"
    " (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    " FROM chain_head FOR UPDATE"
)
_LOAD_STREAMS = "SELECT name, stream_id, version FROM streams WHERE name = ANY($1::text[])"
_LOAD_STORED = (
    "SELECT e.event_id, e.position, s.name, e.version, e.type, e.schema_version, e.data"
    " FROM events e JOIN streams s ON s.stream_id = e.stream_id"
    " WHERE e.event_id = ANY($1::bytea[])"
)
# Data-modifying CTEs see one snapshot, so events of a new stream take its id from the
# INSERT's RETURNING rather than from the streams table.
_WRITE = """
WITH new_streams AS (
    INSERT INTO streams (name, version)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    RETURNING stream_id, name
), moved AS (
    UPDATE streams s SET version = m.version
    FROM unnest($3::bigint[], $4::bigint[]) AS m (stream_id, version)
    WHERE s.stream_id = m.stream_id
), written AS (
    INSERT INTO events (position, stream_id, version, event_id, type, schema_version,
                        data, metadata, recorded_us, hash)
    SELECT e.position, coalesce(e.stream_id, n.stream_id), e.version, e.event_id, e.type,
           e.schema_version, e.data, e.metadata, e.recorded_us, e.hash
    FROM unnest($5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bytea[],
                $10::text[], $11::int[], $12::bytea[], $13::bytea[], $14::bigint[],
                $15::bytea[])
         AS e (position, stream_id, stream, version, event_id, type, schema_version,
               data, metadata, recorded_us, hash)
    LEFT JOIN new_streams n ON e.stream_id IS NULL AND n.name = e.stream
)
UPDATE chain_head SET position = $16::bigint, hash = $17::bytea, recorded_us = $18::bigint
RETURNING pg_notify($19::text, $16::bigint::text)
"""


@dataclass(slots=True)
class Head:
    """The chain head as read under its lock, and the server's clock then (µs)."""

    position: int
    hash: bytes
    recorded_us: int
    now_us: int


class StreamRow:
    """A stream's id (None until it is inserted) and version, as the batch moves it."""

    __slots__ = ("existed", "stream_id", "version")

    def __init__(self, stream_id: int | None, version: int) -> None:
        self.stream_id = stream_id
        self.version = version
        self.existed = stream_id is not None


@dataclass(slots=True)
class Rows:
    """The events to insert, column by column (as ``unnest`` takes them)."""

    positions: list[int] = field(default_factory=list)
    stream_ids: list[int | None] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    event_ids: list[bytes] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    schema_versions: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    metadata: list[bytes] = field(default_factory=list)
    recorded_us: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)

    def add(
        self,
        position: int,
        stream: StreamRow,
        name: str,
        event_id: bytes,
        event_type: str,
        schema_version: int,
        data: bytes,
        metadata: bytes,
        recorded_us: int,
        hash_: bytes,
    ) -> None:
        self.positions.append(position)
        self.stream_ids.append(stream.stream_id)
        self.streams.append(name)
        self.versions.append(stream.version)
        self.event_ids.append(event_id)
        self.types.append(event_type)
        self.schema_versions.append(schema_version)
        self.data.append(data)
        self.metadata.append(metadata)
        self.recorded_us.append(recorded_us)
        self.hashes.append(hash_)


async def lock_head(conn: Connection) -> Head:
    """Lock the chain head row until the transaction ends, and read it."""
    row = await conn.fetchrow(_LOCK_HEAD)
    if row is None:
        raise EventStoreError("the chain_head row is missing: the log was tampered with")
    return Head(int(row[0]), bytes(row[1]), int(row[2]), int(row[3]))


async def load_streams(conn: Connection, names: Iterable[str]) -> dict[str, StreamRow]:
    rows = await conn.fetch(_LOAD_STREAMS, list(set(names)))
    return {name: StreamRow(stream_id, version) for name, stream_id, version in rows}


async def load_stored(conn: Connection, ids: list[bytes]) -> dict[bytes, Stored]:
    rows = await conn.fetch(_LOAD_STORED, ids)
    return {row[0]: Stored(*row[1:]) for row in rows}


async def write(
    conn: Connection, rows: Rows, streams: dict[str, StreamRow], head: Head, channel: str
) -> None:
    """Insert ``rows``, create or move the streams, move the head and NOTIFY ``channel``.

    ``streams`` holds every stream the rows belong to, at its new version.
    """
    touched = set(rows.streams)
    created = [(n, s.version) for n, s in streams.items() if n in touched and not s.existed]
    moved = [(s.stream_id, s.version) for n, s in streams.items() if n in touched and s.existed]
    await conn.fetchval(
        _WRITE,
        [name for name, _ in created],
        [version for _, version in created],
        [stream_id for stream_id, _ in moved],
        [version for _, version in moved],
        rows.positions,
        rows.stream_ids,
        rows.streams,
        rows.versions,
        rows.event_ids,
        rows.types,
        rows.schema_versions,
        rows.data,
        rows.metadata,
        rows.recorded_us,
        rows.hashes,
        head.position,
        head.hash,
        head.recorded_us,
        channel,
    )


async def commit_batch(
    conn: Connection, batch: Sequence[AppendRequest], channel: str
) -> list[Outcome]:
    """Check and write a batch of appends in one transaction; an outcome per request.

    Raises a driver error only when the transaction itself fails (nothing of the batch was
    written then, unless the connection was lost while committing: the outcome is then
    unknown, and a retry with the same event ids learns it).
    """
    async with conn.transaction():
        head = await lock_head(conn)
        streams = await load_streams(conn, (r.stream for r in batch))
        ids = [e.event_id for r in batch for e in r.events]
        stored = await load_stored(conn, ids)
        rows, outcomes = plan(batch, head, streams, stored, ids_repeat=len(set(ids)) != len(ids))
        if rows.positions:
            await write(conn, rows, streams, head, channel)
    return outcomes


def plan(
    batch: Sequence[AppendRequest],
    head: Head,
    streams: dict[str, StreamRow],
    stored: dict[bytes, Stored],
    *,
    ids_repeat: bool,
) -> tuple[Rows, list[Outcome]]:
    """Check each append against the state the earlier ones left; the rows to insert.

    Moves ``head`` and the versions in ``streams`` along with the accepted appends.
    ``ids_repeat``: some event id occurs in more than one append of the batch, so later
    appends must see the events of earlier ones as stored.
    """
    # Recorded time never goes backwards along the log, so "as of T" is a prefix of it;
    # the server's clock is the one clock of every instance.
    recorded_us = head.recorded_us = max(head.now_us, head.recorded_us)
    rows = Rows()
    outcomes: list[Outcome] = []
    for request in batch:
        stream = streams.get(request.stream)
        outcome = verdict(request, stored, stream.version if stream is not None else 0)
        if outcome is not None:
            outcomes.append(outcome)
            continue
        if stream is None:
            stream = streams[request.stream] = StreamRow(None, 0)
        first = head.position + 1
        for event in request.events:
            head.position += 1
            stream.version += 1
            head.hash = event_hash(
                head.hash,
                head.position,
                request.stream_utf8,
                stream.version,
                event.event_id,
                event.type_utf8,
                event.schema_version,
                event.data,
                event.metadata,
                recorded_us,
            )
            rows.add(
                head.position,
                stream,
                request.stream,
                event.event_id,
                event.type,
                event.schema_version,
                event.data,
                event.metadata,
                recorded_us,
                head.hash,
            )
            if ids_repeat:
                stored[event.event_id] = Stored(
                    head.position,
                    request.stream,
                    stream.version,
                    event.type,
                    event.schema_version,
                    event.data,
                )
        outcomes.append(AppendResult(request.stream, first, head.position, stream.version))
    return rows, outcomes
