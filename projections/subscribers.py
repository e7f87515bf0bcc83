"""The ``subscribers`` projection: per subscriber, what ``GET /subscribers/{id}`` shows.

Its sources (docs/events.md) are ``SubscriberCreated`` (stream ``subscribers``), and
``GoalReached`` and ``ContactRecorded`` in the stream ``subscriber-{id}``. The numbers are
those of :func:`postback.views.subscriber_view`, the exact fold of the subscriber's stream:

* ``subscribers``: identity (from ``SubscriberCreated``), ``registered_us`` (the last
  ``reg``), the first deposit (time and amount of the last ``dep``: the service accepts only
  one), ``deposit_count`` and the exact total of ``dep`` and ``redep`` (a null amount counts,
  adding 0), ``rebill_count``, ``contact_count`` and ``last_position``, the position of the
  last event folded into the row.
* ``subscriber_goals``: per subscriber and goal (standard or custom), ``count`` and the
  first and last time reached; ``first_position`` keeps the order in which goals were first
  reached (the view's key order).

Times are microseconds since the Unix epoch (UTC) of ``recorded_at``; money is exact, as
``whole`` + ``frac`` 1e-8 units (see :mod:`projections.goal_stats`). A subscriber is told by
its stream name (what the view reads), or by ``subscriber_id`` for ``SubscriberCreated``;
``GoalReached`` without a string ``goal`` is skipped. ``apply_batch`` reads the rows of the
batch's subscribers in one query (per 512 of them), folds in Python, and writes with
``executemany``; events at or below a row's ``last_position`` are skipped, so applying a
batch twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Final

from eventstore.base import RecordedEvent, utc_from_micros
from projections.database import SqlConnection, in_chunks
from projections.goal_stats import (
    UNITS_PER_WHOLE,
    amount_units,
    format_amount,
    units_to_decimal,
)

SUBSCRIBER_CREATED: Final = "SubscriberCreated"
GOAL_REACHED: Final = "GoalReached"
PLAYER_ID_ASSIGNED: Final = "PlayerIdAssigned"
CONTACT_RECORDED: Final = "ContactRecorded"
DEPOSIT_GOALS: Final = frozenset({"dep", "redep"})
_SUBSCRIBER_PREFIX: Final = "subscriber-"
"""A subscriber's stream is this prefix and its id (digits, no leading zero)."""

SCHEMA_SQL: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS subscribers (
        subscriber_id BIGINT PRIMARY KEY,
        account_id BIGINT,
        spot_id BIGINT,
        spot_token TEXT,
        user_id TEXT,
        clickid TEXT,
        registered_us BIGINT,
        first_deposit_us BIGINT,
        first_deposit_whole BIGINT,
        first_deposit_frac BIGINT,
        deposit_count BIGINT NOT NULL,
        deposit_whole BIGINT NOT NULL,
        deposit_frac BIGINT NOT NULL,
        rebill_count BIGINT NOT NULL,
        contact_count BIGINT NOT NULL,
        last_position BIGINT NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS subscriber_goals (
        subscriber_id BIGINT NOT NULL,
        goal TEXT NOT NULL,
        count BIGINT NOT NULL,
        first_us BIGINT NOT NULL,
        last_us BIGINT NOT NULL,
        first_position BIGINT NOT NULL,
        PRIMARY KEY (subscriber_id, goal)
    ) WITHOUT ROWID
    """,
)

_UPSERT_GOAL = (
    "INSERT INTO subscriber_goals (subscriber_id, goal, count, first_us, last_us,"
    " first_position) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (subscriber_id, goal) DO UPDATE SET"
    " count = subscriber_goals.count + excluded.count, last_us = excluded.last_us"
)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def subscriber_of(event: RecordedEvent) -> int | None:
    """The subscriber an event is about: from its ``subscriber-{id}`` stream, or the
    ``subscriber_id`` of a ``SubscriberCreated``; None for any other event."""
    if event.type == SUBSCRIBER_CREATED:
        return _int(event.data.get("subscriber_id"))
    # String methods, not a regular expression: this runs for every event.
    stream = event.stream
    if stream.startswith(_SUBSCRIBER_PREFIX):
        digits = stream[len(_SUBSCRIBER_PREFIX) :]
        if digits.isascii() and digits.isdigit() and digits[0] != "0":
            return int(digits)
    return None


def rows_by_id(
    conn: SqlConnection, table: str, columns: Sequence[str], ids: Collection[int]
) -> list[tuple[Any, ...]]:
    """The rows of ``table`` whose ``subscriber_id`` is in ``ids``: one query per
    :func:`~projections.database.in_chunks` list (512 ids)."""
    rows: list[tuple[Any, ...]] = []
    for marks, chunk in in_chunks(ids):
        sql = f"SELECT {', '.join(columns)} FROM {table} WHERE subscriber_id IN ({marks})"
        rows.extend(conn.execute(sql, chunk).fetchall())
    return rows


def upsert(table: str, columns: Sequence[str], key: str) -> str:
    """``INSERT`` of a whole row that replaces the row with the same ``key`` (portable)."""
    updates = ", ".join(f"{column} = excluded.{column}" for column in columns if column != key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


@dataclass(slots=True)
class _Row:
    """A ``subscribers`` row, its fields in column order."""

    subscriber_id: int
    account_id: int | None = None
    spot_id: int | None = None
    spot_token: str | None = None
    user_id: str | None = None
    clickid: str | None = None
    registered_us: int | None = None
    first_deposit_us: int | None = None
    first_deposit_whole: int | None = None
    first_deposit_frac: int | None = None
    deposit_count: int = 0
    deposit_whole: int = 0
    deposit_frac: int = 0
    rebill_count: int = 0
    contact_count: int = 0
    last_position: int = 0

    def values(self) -> tuple[Any, ...]:
        return _row_values(self)

    def created(self, data: dict[str, Any]) -> None:
        self.account_id = _int(data.get("account_id"))
        self.spot_id = _int(data.get("spot_id"))
        self.spot_token = _text(data.get("spot_token"))
        self.user_id = _text(data.get("user_id"))
        self.clickid = _text(data.get("clickid"))

    def reached(self, goal: str, at_us: int, amount: object) -> None:
        if goal == "reg":
            self.registered_us = at_us
        elif goal in DEPOSIT_GOALS:
            units = amount_units(amount)
            whole, frac = units or (0, 0)
            self.deposit_count += 1
            self.deposit_whole, self.deposit_frac = divmod(
                (self.deposit_whole + whole) * UNITS_PER_WHOLE + self.deposit_frac + frac,
                UNITS_PER_WHOLE,
            )
            if goal == "dep":
                self.first_deposit_us = at_us
                self.first_deposit_whole, self.first_deposit_frac = (
                    (None, None) if units is None else (whole, frac)
                )
        elif goal == "rebill":
            self.rebill_count += 1


COLUMNS: Final[tuple[str, ...]] = tuple(field.name for field in fields(_Row))
_row_values: Final = attrgetter(*COLUMNS)
_REPLACE = upsert("subscribers", COLUMNS, "subscriber_id")


@dataclass(slots=True)
class _Goal:
    """Increments of one ``subscriber_goals`` row within a batch."""

    count: int
    first_us: int
    last_us: int
    first_position: int


class SubscribersProjection:
    """See the module docstring. Stateless: any number of runners may share one."""

    name = "subscribers"
    rebuild_weight = 2.7  # seconds per million events of bench/rebuild.py's log
    schema_sql: Sequence[str] = SCHEMA_SQL
    reads_event_fields = frozenset({"stream"})  # the subscriber's id is in its stream's name

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        todo = [
            (subscriber_id, event)
            for event in events
            if event.type in (SUBSCRIBER_CREATED, GOAL_REACHED, CONTACT_RECORDED)
            and (subscriber_id := subscriber_of(event)) is not None
        ]
        if not todo:
            return
        ids = {subscriber_id for subscriber_id, _ in todo}
        rows = {row[0]: _Row(*row) for row in rows_by_id(conn, "subscribers", COLUMNS, ids)}
        changed: set[int] = set()
        goals: dict[tuple[int, str], _Goal] = {}
        for subscriber_id, event in todo:
            row = rows.get(subscriber_id) or rows.setdefault(subscriber_id, _Row(subscriber_id))
            if event.position <= row.last_position:
                continue  # already folded (a batch applied twice)
            data = event.data
            if event.type == SUBSCRIBER_CREATED:
                row.created(data)
            elif event.type == CONTACT_RECORDED:
                row.contact_count += 1
            else:
                goal = data.get("goal")
                if not isinstance(goal, str):
                    continue
                at_us = event.recorded_us
                row.reached(goal, at_us, data.get("amount"))
                if (key := (subscriber_id, goal)) in goals:
                    goals[key].count += 1
                    goals[key].last_us = at_us
                else:
                    goals[key] = _Goal(1, at_us, at_us, event.position)
            row.last_position = event.position
            changed.add(subscriber_id)
        conn.executemany(_REPLACE, [rows[subscriber_id].values() for subscriber_id in changed])
        conn.executemany(
            _UPSERT_GOAL,
            [
                (subscriber_id, goal, g.count, g.first_us, g.last_us, g.first_position)
                for (subscriber_id, goal), g in goals.items()
            ],
        )

    def reset(self, conn: SqlConnection) -> None:
        conn.execute("DROP TABLE IF EXISTS subscribers")
        conn.execute("DROP TABLE IF EXISTS subscriber_goals")


def iso(us: int | None) -> str | None:
    """``recorded_at.isoformat()`` of a time in microseconds (as the log's events show it)."""
    return None if us is None else utc_from_micros(us).isoformat()


def subscriber_row(conn: SqlConnection, subscriber_id: int) -> dict[str, Any] | None:
    """A subscriber as :func:`postback.views.subscriber_view` shows it, without ``player_id``
    and ``profile`` (see :func:`projections.profiles.profile_row`); None if unknown.
    Run it through :meth:`projections.runner.ProjectionRunner.query`."""
    found = rows_by_id(conn, "subscribers", COLUMNS, (subscriber_id,))
    if not found:
        return None
    row = _Row(*found[0])
    goals = conn.execute(
        "SELECT goal, count, first_us, last_us FROM subscriber_goals"
        " WHERE subscriber_id = ? ORDER BY first_position",
        (subscriber_id,),
    ).fetchall()
    first_amount = (
        None
        if row.first_deposit_whole is None
        else format_amount(units_to_decimal(row.first_deposit_whole, row.first_deposit_frac))
    )
    return {
        "id": row.subscriber_id,
        "spot": row.spot_token,
        "user_id": row.user_id,
        "clickid": row.clickid,
        "registered_at": iso(row.registered_us),
        "first_deposit": {"at": iso(row.first_deposit_us), "amount": first_amount},
        "deposits": {
            "count": row.deposit_count,
            "total": format_amount(units_to_decimal(row.deposit_whole, row.deposit_frac)),
        },
        "rebills": row.rebill_count,
        "goals": {
            goal: {"count": count, "first_at": iso(first_us), "last_at": iso(last_us)}
            for goal, count, first_us, last_us in goals
        },
        "contacts": row.contact_count,
    }
