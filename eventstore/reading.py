"""Reading stored events, the same way on both backends: the ``SELECT`` and the decoding.

Both backends select the same ten columns (:func:`select_events`) and turn each row into a
:class:`~eventstore.base.RecordedEvent` with :func:`decode_rows`. A reader that never looks
at some of the ``stream``, ``metadata`` and ``hash`` (:data:`LEAVABLE`) may ask
:meth:`~eventstore.base.EventStore.read_all` to leave them out: they are then selected as
constants, and a left-out stream drops the join with ``streams``. A projection runner
does, for the fields none of its projections read: on ``bench/rebuild.py``'s log the
process rebuilding ``goal_stats``, ``profiles`` and ``deliveries`` (which read none of
the three) took 9.6 s instead of 10.3 to 10.6 s.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final

import orjson

from eventstore.base import RecordedEvent, Upcasters

LEAVABLE: Final = frozenset({"stream", "metadata", "hash"})
"""The fields a reader of the whole log may leave out (``read_all(leave_out=...)``); an event
read without them has ``""`` as its stream, ``{}`` as its metadata, ``b""`` as its hash."""


EVENT_COLUMNS: Final = (
    "e.position, s.name, e.version, e.event_id, e.type, e.schema_version,"
    " e.data, e.metadata, e.recorded_us, e.hash"
)
"""The columns of ``events e`` joined with ``streams s`` that :func:`decode_rows` takes."""


def select_events(leave_out: Collection[str], *, no_metadata: str, no_hash: str) -> str:
    """``SELECT`` :data:`EVENT_COLUMNS` ``FROM events e JOIN streams s``, with the fields of
    ``leave_out`` as constants: ``no_metadata`` (the backend's literal
    for the JSON text ``{}``) and ``no_hash`` (its empty bytes). ValueError for a field
    that is not in :data:`LEAVABLE`."""
    if not leave_out:
        return f"SELECT {EVENT_COLUMNS} FROM events e JOIN streams s ON s.stream_id = e.stream_id"
    unknown = set(leave_out) - LEAVABLE
    if unknown:
        raise ValueError(f"these fields cannot be left out: {sorted(unknown)}")
    stream = "''" if "stream" in leave_out else "s.name"
    metadata = no_metadata if "metadata" in leave_out else "e.metadata"
    hash_ = no_hash if "hash" in leave_out else "e.hash"
    join = "" if "stream" in leave_out else " JOIN streams s ON s.stream_id = e.stream_id"
    return (
        f"SELECT e.position, {stream}, e.version, e.event_id, e.type, e.schema_version,"
        f" e.data, {metadata}, e.recorded_us, {hash_} FROM events e{join}"
    )


def decode_row(row: Sequence[Any], upcasters: Upcasters | None) -> RecordedEvent:
    """A stored row (position, stream, version, event id bytes, type, schema version, data,
    metadata, recorded µs, hash), as both backends select it, as a RecordedEvent (whose
    id, metadata and time are decoded when first used)."""
    position, stream, version, event_id, type_, schema_version, data, meta, us, hash_ = row
    decoded = orjson.loads(data)
    if upcasters is not None:
        schema_version, decoded = upcasters.upcast(type_, schema_version, decoded)
    return RecordedEvent.stored(  # positional: a call with keywords costs more, per event
        position, stream, version, event_id, type_, schema_version, decoded, meta, us, hash_
    )


def decode_rows(rows: Sequence[Sequence[Any]], upcasters: Upcasters | None) -> list[RecordedEvent]:
    """:func:`decode_row` of each row; without upcasters in one comprehension, which saves
    a call per row (8 % of decoding a rebuild's million rows)."""
    if upcasters is not None:
        return [decode_row(row, upcasters) for row in rows]
    stored, loads = RecordedEvent.stored, orjson.loads
    return [
        stored(position, stream, version, event_id, type_, schema_version, loads(data), m, us, h)
        for position, stream, version, event_id, type_, schema_version, data, m, us, h in rows
    ]
