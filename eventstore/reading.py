"""Reading stored events, the same way on both backends: the ``SELECT`` and the decoding.

Both backends select the ten columns of :data:`EVENT_COLUMNS` and turn each row into a
:class:`~eventstore.base.RecordedEvent` with :func:`decode_rows`. A reader that never looks
at some of the ``stream``, ``metadata`` and ``hash`` (:data:`LEAVABLE`) may ask
:meth:`~eventstore.base.EventStore.read_all` to leave them out: :func:`lean_reader` then
gives a ``SELECT`` without those columns (without the join with ``streams`` when the
stream is left out) and the decoder that fills them in. A projection runner does, for
the fields none of its projections read: ``goal_stats``, ``profiles`` and ``deliveries``
read neither the metadata nor the hash, and reading ``bench/rebuild.py``'s million events
without them costs 4.5 to 5.3 s of CPU instead of 4.9 to 5.8 s with the two selected as
constants (and more with them read).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, NamedTuple

import orjson

from eventstore.base import RecordedEvent, Upcasters

LEAVABLE: Final = frozenset({"stream", "metadata", "hash"})
"""The fields a reader of the whole log may leave out (``read_all(leave_out=...)``); an event
read without them has ``""`` as its stream, ``{}`` as its metadata, ``b""`` as its hash."""

LEFT_OUT_VALUES: Final[Mapping[str, object]] = {"stream": "", "metadata": b"{}", "hash": b""}
"""What a left-out field holds (the metadata as its stored JSON text, decoded on use)."""

_COLUMNS: Final = (
    ("position", "e.position"),
    ("stream", "s.name"),
    ("version", "e.version"),
    ("event_id", "e.event_id"),
    ("type", "e.type"),
    ("schema_version", "e.schema_version"),
    ("data", "e.data"),
    ("metadata", "e.metadata"),
    ("recorded_us", "e.recorded_us"),
    ("hash", "e.hash"),
)

EVENT_COLUMNS: Final = ", ".join(column for _, column in _COLUMNS)
"""The columns of ``events e`` joined with ``streams s`` that :func:`decode_rows` takes."""

SELECT_EVENTS: Final = (
    f"SELECT {EVENT_COLUMNS} FROM events e JOIN streams s ON s.stream_id = e.stream_id"
)
"""Every field of the events (append ``WHERE ...``); rows for :func:`decode_rows`."""

RowDecoder = Callable[[Sequence[Sequence[Any]], Upcasters | None], list[RecordedEvent]]


class LeanReader(NamedTuple):
    """A ``SELECT`` of the events without some fields, and the decoder of its rows."""

    select: str
    """``SELECT ... FROM events e [JOIN streams s ...]``: append ``WHERE ...``."""
    decode: RowDecoder
    """The rows as events, the left-out fields as :data:`LEFT_OUT_VALUES`."""


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


def lean_reader(leave_out: Collection[str]) -> LeanReader:
    """The ``SELECT`` of every field but those of ``leave_out`` (a subset of
    :data:`LEAVABLE`; ValueError otherwise), and the decoder of its rows.

    Left-out fields are not selected as constants but filled in by the decoder: each
    column a row carries costs the driver an object per row (with the metadata and the
    hash selected as constants, reading ``bench/rebuild.py``'s million events took 4.9
    to 5.8 s of CPU, against 4.5 to 5.3 s)."""
    fields = frozenset(leave_out)
    if not fields <= LEAVABLE:
        raise ValueError(f"these fields cannot be left out: {sorted(fields - LEAVABLE)}")
    return _lean_reader(fields)


@functools.cache
def _lean_reader(leave_out: frozenset[str]) -> LeanReader:
    kept = [(name, column) for name, column in _COLUMNS if name not in leave_out]
    join = "" if "stream" in leave_out else " JOIN streams s ON s.stream_id = e.stream_id"
    select = f"SELECT {', '.join(column for _, column in kept)} FROM events e{join}"
    return LeanReader(select, _row_decoder(leave_out))


def _row_decoder(leave_out: frozenset[str]) -> RowDecoder:
    """A decoder for rows of the kept columns, generated as a single comprehension (as
    :func:`collections.namedtuple` generates its methods): a generic one, indexing each
    row or padding it to the ten columns, would spend per row in Python much of what
    leaving the columns out saves in the driver."""
    kept = ", ".join(f"c_{name}" for name, _ in _COLUMNS if name not in leave_out)
    fields = [f"left_{name}" if name in leave_out else f"c_{name}" for name, _ in _COLUMNS]
    arguments = ", ".join("loads(c_data)" if field == "c_data" else field for field in fields)
    constants = {f"left_{name}": LEFT_OUT_VALUES[name] for name in sorted(leave_out)}
    source = "\n".join(
        (
            f"def decode(rows, upcasters, *, stored, loads, decode_row, {', '.join(constants)}):",
            "    if upcasters is not None:",
            f"        return [decode_row(({', '.join(fields)}), upcasters) for {kept} in rows]",
            f"    return [stored({arguments}) for {kept} in rows]",
        )
    )
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    decode: Callable[..., list[RecordedEvent]] = namespace["decode"]
    stored, loads = RecordedEvent.stored, orjson.loads
    return functools.partial(decode, stored=stored, loads=loads, decode_row=decode_row, **constants)
