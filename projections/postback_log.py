"""The ``postback_log`` projection: one row per partner request, accepted or rejected.

Its source is ``metadata.postback`` (see docs/events.md), carried by every event a partner
request caused: goal events, ``ContactRecorded``, and ``PostbackRejected`` /
``PostbackRepeated`` in the ``postback-log`` stream. One request may cause two events with
the same ``request_id``; the first one (lowest position) makes the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from eventstore.base import RecordedEvent
from projections.database import SqlConnection

SCHEMA_SQL: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS postback_log (
        request_id TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        account_id BIGINT,
        endpoint TEXT,
        clickid TEXT,
        user_id TEXT,
        spot TEXT,
        goal TEXT,
        txid TEXT,
        status BIGINT NOT NULL,
        ip TEXT,
        method TEXT,
        path TEXT,
        query TEXT,
        body TEXT,
        received_at TEXT,
        response BLOB
    )
    """,
    "CREATE INDEX IF NOT EXISTS postback_log_position ON postback_log (position)",
    "CREATE INDEX IF NOT EXISTS postback_log_account ON postback_log (account_id, position)",
    "CREATE INDEX IF NOT EXISTS postback_log_account_clickid"
    " ON postback_log (account_id, clickid, position)",
    "CREATE INDEX IF NOT EXISTS postback_log_account_status"
    " ON postback_log (account_id, status, position)",
)

_INSERT = (
    "INSERT INTO postback_log (request_id, position, account_id, endpoint, clickid,"
    " user_id, spot, goal, txid, status, ip, method, path, query, body, received_at, response)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)

_TEXT_FIELDS: Final = ("endpoint", "clickid", "user_id", "spot", "goal", "txid")
_REQUEST_FIELDS: Final = ("ip", "method", "path", "query", "body", "received_at")

COLUMNS: Final[tuple[str, ...]] = (
    "position",
    "request_id",
    "endpoint",
    "clickid",
    "user_id",
    "spot",
    "goal",
    "txid",
    "status",
    "ip",
    "method",
    "path",
    "query",
    "body",
    "received_at",
    "response",
)
"""The keys of a :func:`list_postbacks` row, in order."""


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def row_of(event: RecordedEvent) -> tuple[object, ...] | None:
    """The ``postback_log`` row of ``event``, or None if no partner request caused it.

    ``request_id`` falls back to the event id; ``status`` to the data's ``status`` (as in
    ``PostbackRejected``); an event with no integer status anywhere has no row.
    """
    postback = event.metadata.get("postback")
    if not isinstance(postback, dict):
        return None
    status = _int(postback.get("status"))
    if status is None:
        status = _int(event.data.get("status"))
    if status is None:
        return None
    request_id = _text(postback.get("request_id")) or str(event.event_id)
    response = postback.get("response")
    return (
        request_id,
        event.position,
        _int(event.data.get("account_id")),
        *(_text(postback.get(key)) for key in _TEXT_FIELDS),
        status,
        *(_text(postback.get(key)) for key in _REQUEST_FIELDS),
        None if response is None else orjson.dumps(response),
    )


class PostbackLogProjection:
    """See the module docstring. Stateless: any number of runners may share one."""

    name = "postback_log"
    schema_sql: Sequence[str] = SCHEMA_SQL

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        rows = [row for row in map(row_of, events) if row is not None]
        if rows:
            conn.executemany(_INSERT, rows)

    def reset(self, conn: SqlConnection) -> None:
        conn.execute("DROP TABLE IF EXISTS postback_log")


def list_postbacks(
    conn: SqlConnection,
    *,
    account_id: int | None,
    clickid: str | None = None,
    status: int | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Postback requests with a position greater than ``after``, oldest first, at most ``limit``.

    ``account_id`` None is the admin view: every row, including those whose account is
    unknown (NULL); otherwise only that account's rows. ``clickid`` and ``status`` filter
    exactly. Rows are JSON-ready dicts with the keys of :data:`COLUMNS` (``response``
    decoded). Run it through :meth:`projections.runner.ProjectionRunner.query`.
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
    sql = (
        f"SELECT {', '.join(COLUMNS)} FROM postback_log WHERE {' AND '.join(where)}"
        " ORDER BY position LIMIT ?"
    )
    rows = conn.execute(sql, params).fetchall()
    result: list[dict[str, Any]] = []
    for row in rows:
        item = dict(zip(COLUMNS, row, strict=True))
        response = item["response"]
        item["response"] = None if response is None else orjson.loads(response)
        result.append(item)
    return result
