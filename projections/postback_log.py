"""The postback log: one entry per partner request, accepted or rejected, read from the log.

What a partner request was, and what it was answered, is ``metadata.postback`` (see
docs/events.md) of the events it caused: goal events, ``ContactRecorded``, and
``PostbackRejected`` / ``PostbackRepeated`` in the ``postback-log`` stream. The log itself
is the record, hash-chained: this module does not copy it.

* The ``postback_index`` projection keeps only what listings filter and page on: per
  request, the ``position`` of its first event, its ``request_id``, ``account_id``,
  ``clickid`` and ``status``. Narrow rows keep a rebuild cheap (a copy of every request
  would cost as much as the rest of the projections together).
* :func:`list_postbacks` pages through the index and reads the entries' events from the
  log (:meth:`~eventstore.base.EventStore.read_at`), so what it shows is what the log holds.

One request may cause several events, all in one append, so at consecutive positions
(the store's guarantee): an event whose ``request_id`` is that of the entry just before
it (the latest row at a lower position) makes no row. That rule depends only on the log,
not on how it is split into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import msgspec

from eventstore.base import RecordedEvent
from projections.database import SqlConnection

if TYPE_CHECKING:
    from projections.runner import ProjectionRunner

TABLE: Final = "postback_index"
SCHEMA_SQL: Final[tuple[str, ...]] = (
    f"""
    CREATE TABLE IF NOT EXISTS {TABLE} (
        position BIGINT PRIMARY KEY,
        request_id TEXT NOT NULL,
        account_id BIGINT,
        clickid TEXT,
        status BIGINT NOT NULL
    ) WITHOUT ROWID
    """,
    # The copy of every request that the projection ``postback_log`` kept before, and its
    # checkpoint: an older version started again on this file must rebuild it from 0, not
    # take an empty table for an applied one. (The checkpoint table exists: the runner
    # creates it before any projection's schema.)
    "DROP TABLE IF EXISTS postback_log",
    "DELETE FROM projection_checkpoints WHERE name = 'postback_log'",
)
READ_INDEXES: Final[tuple[str, ...]] = (
    f"CREATE INDEX IF NOT EXISTS {TABLE}_account ON {TABLE} (account_id, position)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_account_clickid"
    f" ON {TABLE} (account_id, clickid, position)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_account_status ON {TABLE} (account_id, status, position)",
)
"""For listings only (``apply_batch`` reads the table by its key)."""

_INSERT: Final = (
    f"INSERT INTO {TABLE} (position, request_id, account_id, clickid, status)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_LATEST_BEFORE: Final = (
    f"SELECT request_id FROM {TABLE} WHERE position < ? ORDER BY position DESC LIMIT 1"
)

_TEXT_FIELDS: Final = ("endpoint", "clickid", "user_id", "spot", "goal", "txid")
_REQUEST_FIELDS: Final = ("ip", "method", "path", "query", "body", "body_base64", "received_at")
"""``body_base64`` is there only for a body that is not UTF-8 (its exact bytes)."""

COLUMNS: Final[tuple[str, ...]] = (
    "position",
    "request_id",
    *_TEXT_FIELDS,
    "status",
    *_REQUEST_FIELDS,
    "response",
)
"""The keys of a :func:`list_postbacks` entry, in order."""


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    """An integer the index's ``BIGINT`` columns hold; None for anything else (a bool, a
    float, and an integer JSON gave beyond 64 bits, which a decoder may give as a float
    or as an int: either way, no status)."""
    if type(value) is int and -(2**63) <= value < 2**63:  # not a bool: its type is bool
        return value
    return None


class _IndexedFields(msgspec.Struct):
    """The fields of ``metadata.postback`` that the index keeps, as JSON gives them."""

    request_id: Any = None
    status: Any = None
    clickid: Any = None


class _Metadata(msgspec.Struct):
    postback: _IndexedFields | None = None


_INDEXED_FIELDS: Final = msgspec.json.Decoder(_Metadata)
"""Decodes those three fields of stored metadata and skips the rest of the request
(query, body, answer...) unbuilt: a rebuild reads every event's metadata, and a full
parse cost 7 times as much."""


def _indexed_fields(event: RecordedEvent) -> tuple[Any, Any, Any] | None:
    """``metadata.postback``'s ``request_id``, ``status`` and ``clickid`` (each None if
    absent), or None if ``metadata.postback`` is not an object."""
    stored = event.stored_metadata
    if stored is not None:
        try:
            postback = _INDEXED_FIELDS.decode(stored).postback
        except msgspec.DecodeError:
            # Not an object, or its postback not one (or not JSON): decided below as
            # always, by the full parse (which raises on what is not JSON).
            pass
        else:
            if postback is None:
                return None
            return postback.request_id, postback.status, postback.clickid
    parsed = _postback_of(event)
    if parsed is None:
        return None
    return parsed.get("request_id"), parsed.get("status"), parsed.get("clickid")


def _postback_of(event: RecordedEvent) -> dict[str, Any] | None:
    """``metadata.postback`` by the full parse, None unless it is an object."""
    postback = event.metadata.get("postback")
    return postback if type(postback) is dict else None


def _request_id_and_status(
    event: RecordedEvent, request_id: object, status: object
) -> tuple[str, int] | None:
    """``request_id`` falls back to the event id; ``status`` to the data's (as in
    ``PostbackRejected``); an event with no integer status anywhere is no request."""
    found = _int(status)
    if found is None:
        found = _int(event.data.get("status"))
        if found is None:
            return None
    if type(request_id) is not str or not request_id:
        request_id = str(event.event_id)
    return request_id, found


def _request_of(event: RecordedEvent) -> tuple[dict[str, Any], str, int] | None:
    """``(metadata.postback, request_id, status)``, or None if no partner request caused
    ``event`` (see :func:`_request_id_and_status`)."""
    postback = _postback_of(event)
    if postback is None:
        return None
    found = _request_id_and_status(event, postback.get("request_id"), postback.get("status"))
    return None if found is None else (postback, *found)


def row_of(event: RecordedEvent) -> tuple[int, str, int | None, str | None, int] | None:
    """The index row of ``event`` (``position, request_id, account_id, clickid, status``),
    or None if no partner request caused it (as :func:`entry_of` decides)."""
    fields = _indexed_fields(event)
    if fields is None:
        return None
    request_id, status, clickid = fields
    found = _request_id_and_status(event, request_id, status)
    if found is None:
        return None
    account_id = _int(event.data.get("account_id"))
    return event.position, found[0], account_id, _text(clickid), found[1]


def entry_of(event: RecordedEvent) -> dict[str, Any] | None:
    """The JSON-ready entry of the request behind ``event`` (keys :data:`COLUMNS`), or None."""
    request = _request_of(event)
    if request is None:
        return None
    postback, request_id, status = request
    entry: dict[str, Any] = {"position": event.position, "request_id": request_id}
    entry.update((key, _text(postback.get(key))) for key in _TEXT_FIELDS)
    entry["status"] = status
    entry.update((key, _text(postback.get(key))) for key in _REQUEST_FIELDS)
    entry["response"] = postback.get("response")
    return entry


class PostbackLogProjection:
    """See the module docstring. Stateless: any number of runners may share one."""

    name = TABLE
    rebuild_weight = 3.3  # seconds per million events of bench/rebuild.py's log
    schema_sql: Sequence[str] = SCHEMA_SQL
    read_indexes: Sequence[str] = READ_INDEXES
    reads_event_fields = frozenset({"metadata"})  # the request: not its stream, nor its hash

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        rows = [row for row in map(row_of, events) if row is not None]
        if not rows:
            return
        before = conn.execute(_LATEST_BEFORE, (rows[0][0],)).fetchone()
        latest = None if before is None else before[0]
        kept = []
        for row in rows:
            if row[1] != latest:
                kept.append(row)
                latest = row[1]
        conn.executemany(_INSERT, kept)

    def reset(self, conn: SqlConnection) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def postback_positions(
    conn: SqlConnection,
    *,
    account_id: int | None,
    clickid: str | None = None,
    status: int | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[int]:
    """Positions of the requests after ``after``, oldest first, at most ``limit``.

    ``account_id`` None is the admin view: every request, including those whose account is
    unknown (NULL); otherwise only that account's. ``clickid`` and ``status`` filter
    exactly. Run it through :meth:`projections.runner.ProjectionRunner.query`.
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    where = ["position > ?"]
    params: list[object] = [after]
    for column, value in (("account_id", account_id), ("clickid", clickid), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    params.append(limit)
    sql = f"SELECT position FROM {TABLE} WHERE {' AND '.join(where)} ORDER BY position LIMIT ?"
    return [int(position) for (position,) in conn.execute(sql, params).fetchall()]


async def list_postbacks(
    runner: ProjectionRunner,
    *,
    account_id: int | None,
    clickid: str | None = None,
    status: int | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The requests of :func:`postback_positions` as JSON-ready entries (keys
    :data:`COLUMNS`), read from the runner's log."""
    find = partial(
        postback_positions,
        account_id=account_id,
        clickid=clickid,
        status=status,
        after=after,
        limit=limit,
    )
    positions = await runner.query(find)
    entries = map(entry_of, await runner.store.read_at(positions))
    return [entry for entry in entries if entry is not None]
