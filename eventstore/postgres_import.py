"""Importing a log copied from another backend, row for row, into PostgreSQL.

:func:`import_events` appends :class:`~eventstore.base.RawEvent` rows exactly as they were
stored elsewhere (positions, versions, ids, recorded times and hashes preserved), in one
transaction under the same chain-head lock as appends, and only if every row continues
this log: the next position, the next version of its stream, a new id, a recorded time
not before its predecessor's, valid content, and a hash that
:func:`eventstore.chain.event_hash` recomputes from the row and its predecessor. Otherwise
:class:`~eventstore.errors.TamperedLogError` names the first offending position and
nothing is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from eventstore.base import RawEvent
from eventstore.chain import event_hash
from eventstore.errors import TamperedLogError
from eventstore.postgres_batch import (
    Head,
    Rows,
    StreamRow,
    load_streams,
    lock_head,
    write,
)
from eventstore.postgres_driver import Connection

_STORED_IDS = "SELECT event_id FROM events WHERE event_id = ANY($1::bytea[])"


async def import_events(conn: Connection, events: Sequence[RawEvent], channel: str) -> int:
    """Append ``events`` as they are, in one transaction; the new last position."""
    async with conn.transaction():
        # (a pooled connection: plan for these arrays, as the writer does; see postgres_writer)
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        head = await lock_head(conn)
        if not events:
            return head.position
        streams = await load_streams(conn, (e.stream for e in events if _is_text(e.stream)))
        ids = [e.event_id for e in events if isinstance(e.event_id, bytes)]
        seen = {bytes(row[0]) for row in await conn.fetch(_STORED_IDS, ids)}
        rows = Rows()
        for event in events:
            _check(event, head, streams, seen)
            stream = streams[event.stream]
            rows.add(
                event.position,
                stream,
                event.stream,
                event.event_id,
                event.type,
                event.schema_version,
                event.data,
                event.metadata,
                event.recorded_us,
                event.hash,
            )
            head.position, head.hash, head.recorded_us = (
                event.position,
                event.hash,
                event.recorded_us,
            )
        await write(conn, rows, streams, head, channel)
    return head.position


def _check(event: RawEvent, head: Head, streams: dict[str, StreamRow], seen: set[bytes]) -> None:
    """Raise TamperedLogError unless ``event`` continues the log at ``head``; then note it."""

    def refuse(reason: str) -> TamperedLogError:
        return TamperedLogError(event.position, reason)

    if not isinstance(event, RawEvent):
        raise TamperedLogError(head.position + 1, f"not a RawEvent: {event!r}")
    if event.position != head.position + 1:
        raise refuse(f"the log ends at position {head.position}: the next one is expected")
    for name, value in (("stream", event.stream), ("type", event.type)):
        if not _is_text(value):
            raise refuse(f"the {name} is not a non-empty Unicode text without NUL")
    stream_utf8, type_utf8 = event.stream.encode(), event.type.encode()
    if not isinstance(event.event_id, bytes) or len(event.event_id) != 16:
        raise refuse("the event id is not 16 bytes")
    if event.event_id in seen:
        raise refuse("its event id is already stored")
    if type(event.schema_version) is not int or event.schema_version < 1:
        raise refuse("the schema version is not an integer from 1")
    for what, content in (("data", event.data), ("metadata", event.metadata)):
        if not isinstance(content, bytes) or not _is_json_object(content):
            raise refuse(f"the {what} is not a JSON object")
    if type(event.recorded_us) is not int or event.recorded_us < head.recorded_us:
        raise refuse("it is recorded before its predecessor")
    stream = streams.setdefault(event.stream, StreamRow(None, 0))
    if event.version != stream.version + 1:
        raise refuse(
            f"stream {event.stream!r} is at version {stream.version}: "
            f"version {event.version} does not follow"
        )
    computed = event_hash(
        head.hash,
        event.position,
        stream_utf8,
        event.version,
        event.event_id,
        type_utf8,
        event.schema_version,
        event.data,
        event.metadata,
        event.recorded_us,
    )
    if computed != event.hash:
        raise refuse(
            "its hash does not chain from its predecessor's "
            "(the row was edited, or belongs to another log)"
        )
    stream.version = event.version
    seen.add(event.event_id)


def _is_json_object(value: bytes) -> bool:
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False


def _is_text(value: object) -> bool:
    """Whether ``value`` can be a stream name or type in PostgreSQL (and is one at all)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
