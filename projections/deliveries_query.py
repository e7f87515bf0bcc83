"""Reads of the ``deliveries`` projection: the sender's work list and the operator's view.

Run them through :meth:`projections.runner.ProjectionRunner.query`. Portable SQL only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from eventstore.base import utc_from_micros
from projections.database import SqlConnection
from projections.deliveries_schema import select_in

_PENDING_COLUMNS: Final = (
    "delivery_id",
    "account_id",
    "subscriber_id",
    "channel",
    "target",
    "source_event_id",
    "source_position",
    "source_us",
    "payload",
    "secret",
    "attempts",
    "version",
)
_LISTED_COLUMNS: Final = (
    "delivery_id",
    "seq",
    "channel",
    "target",
    "subscriber_id",
    "source_event_id",
    "source_type",
    "source_position",
    "source_us",
    "status",
    "attempts",
    "next_attempt_us",
    "reason",
    "completed_us",
    "payload",
)


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A delivery due to be sent: what it sends, to whom, and how far it has come.

    ``attempts`` is the number of attempts recorded so far, ``version`` the version of its
    ``delivery-{id}`` stream (the expected version of the next outcome append); ``secret``
    is the access token, bot token or webhook secret: it must never reach a log or answer.
    """

    delivery_id: str
    account_id: int
    subscriber_id: int | None
    channel: str
    target: str
    source_event_id: str
    source_position: int
    source_us: int
    payload: str
    secret: str
    attempts: int
    version: int

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"PendingDelivery({self.delivery_id}, {self.channel}, {self.target!r})"


def iso(us: int | None) -> str | None:
    return None if us is None else utc_from_micros(us).isoformat()


def due_deliveries(
    conn: SqlConnection, *, now_us: int, limit: int
) -> tuple[list[PendingDelivery], int | None]:
    """Pending deliveries due at ``now_us`` whose target is not paused, oldest due first (at
    most ``limit``); and the next time (µs) something else falls due: a later attempt or
    the end of a pause (None if nothing is waiting)."""
    columns = ", ".join(f"d.{c}" for c in _PENDING_COLUMNS)
    rows = conn.execute(
        f"SELECT {columns} FROM deliveries d LEFT JOIN delivery_circuits c"
        " ON c.account_id = d.account_id AND c.channel = d.channel AND c.target = d.target"
        " WHERE d.status = 'pending' AND d.next_attempt_us <= ?"
        " AND (c.paused_until_us IS NULL OR c.paused_until_us <= ?)"
        " ORDER BY d.next_attempt_us, d.seq LIMIT ?",
        (now_us, now_us, limit),
    ).fetchall()
    later = conn.execute(
        "SELECT MIN(next_attempt_us) FROM deliveries"
        " WHERE status = 'pending' AND next_attempt_us > ?",
        (now_us,),
    ).fetchone()
    unpaused = conn.execute(
        "SELECT MIN(paused_until_us) FROM delivery_circuits WHERE paused_until_us > ?", (now_us,)
    ).fetchone()
    times = [t for t in (later[0], unpaused[0]) if t is not None]
    return [PendingDelivery(*row) for row in rows], min(times) if times else None


def due_work(
    conn: SqlConnection, *, now_us: int, limit: int
) -> tuple[int, list[PendingDelivery], int | None]:
    """The ``deliveries`` projection's stored checkpoint (what it has in fact applied, even
    while another process rebuilds it), then :func:`due_deliveries`. Read in that order,
    the rows are at least as new as the checkpoint."""
    found = conn.execute(
        "SELECT position FROM projection_checkpoints WHERE name = 'deliveries'"
    ).fetchone()
    rows, next_us = due_deliveries(conn, now_us=now_us, limit=limit)
    return (0 if found is None else int(found[0])), rows, next_us


def circuit_states(conn: SqlConnection) -> list[tuple[int, str, str, int, int | None]]:
    """Every target with failures or a pause: ``(account, channel, target, consecutive
    failures, paused until µs)``; what a sender starts from."""
    rows = conn.execute(
        "SELECT account_id, channel, target, failures, paused_until_us FROM delivery_circuits"
        " WHERE failures > 0 OR paused_until_us IS NOT NULL"
    ).fetchall()
    return [(int(a), str(c), str(t), int(f), p) for a, c, t, f, p in rows]


def list_deliveries(
    conn: SqlConnection,
    *,
    account_id: int,
    status: str | None = None,
    channel: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The account's deliveries with ``seq`` greater than ``after``, in creation order, each
    with every attempt (JSON-ready; no secret)."""
    where = ["account_id = ?", "seq > ?"]
    params: list[object] = [account_id, after]
    for column, value in (("status", status), ("channel", channel)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = conn.execute(
        f"SELECT {', '.join(_LISTED_COLUMNS)} FROM deliveries WHERE {' AND '.join(where)}"
        " ORDER BY seq LIMIT ?",
        [*params, limit],
    ).fetchall()
    attempts: dict[str, list[dict[str, Any]]] = {}
    for row in select_in(
        conn,
        "SELECT delivery_id, attempt, position, attempted_us, status_code, error, response,"
        " outcome, retry_us FROM delivery_attempts",
        "delivery_id",
        (row[0] for row in rows),
    ):
        attempts.setdefault(row[0], []).append(
            {
                "attempt": row[1],
                "position": row[2],
                "at": iso(row[3]),
                "status_code": row[4],
                "error": row[5],
                "response": row[6],
                "outcome": row[7],
                "retry_at": iso(row[8]),
            }
        )
    result = []
    for row in rows:
        item = dict(zip(_LISTED_COLUMNS, row, strict=True))
        pending = item["status"] == "pending"
        result.append(
            {
                "id": item["delivery_id"],
                "seq": item["seq"],
                "channel": item["channel"],
                "target": item["target"],
                "subscriber_id": item["subscriber_id"],
                "source": {
                    "event_id": item["source_event_id"],
                    "type": item["source_type"],
                    "position": item["source_position"],
                    "recorded_at": iso(item["source_us"]),
                },
                "status": item["status"],
                "reason": item["reason"],
                "next_attempt_at": iso(item["next_attempt_us"]) if pending else None,
                "completed_at": iso(item["completed_us"]),
                "attempts": sorted(
                    attempts.get(item["delivery_id"], []), key=lambda a: int(a["attempt"])
                ),
                "payload": orjson.loads(item["payload"]),
            }
        )
    return result


def paused_targets(conn: SqlConnection, *, account_id: int, now_us: int) -> list[dict[str, Any]]:
    """The account's targets paused at ``now_us`` or failing in a row right now."""
    rows = conn.execute(
        "SELECT channel, target, failures, paused_until_us, last_error FROM delivery_circuits"
        " WHERE account_id = ? AND (failures > 0 OR paused_until_us > ?)",
        (account_id, now_us),
    ).fetchall()
    rows.sort(key=lambda row: (row[0], row[1]))  # in Python: PostgreSQL collates text
    return [
        {
            "channel": channel,
            "target": target,
            "consecutive_failures": failures,
            "paused": until is not None and until > now_us,
            "paused_until": iso(until) if until is not None and until > now_us else None,
            "last_error": error,
        }
        for channel, target, failures, until, error in rows
    ]


def subscriber_delivery_ids(conn: SqlConnection, *, subscriber_id: int) -> list[str]:
    """The ids of the subscriber's deliveries, in creation order."""
    rows = conn.execute(
        "SELECT delivery_id FROM deliveries WHERE subscriber_id = ? ORDER BY seq",
        (subscriber_id,),
    ).fetchall()
    return [str(row[0]) for row in rows]
