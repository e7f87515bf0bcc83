"""The tables of the ``deliveries`` projection (:mod:`projections.deliveries`) and their
row types and statements. Portable SQL only (the rule of :mod:`projections.database`).

* ``deliveries``: one row per delivery: what to send (``payload``, ``secret``: the access
  token, bot token or webhook secret, never shown by the API), where (``channel``,
  ``target``), from which event, its status, attempts, next attempt time, and the version
  of its ``delivery-{id}`` stream; ``seq`` numbers deliveries in creation order.
* ``delivery_attempts``: every recorded attempt; ``delivery_circuits``: per target, the
  transient failures in a row and the pause.
* ``delivery_facebook``, ``delivery_telegram``, ``delivery_goal_notify``,
  ``delivery_webhooks``, ``delivery_subscribers``: the configuration as folded so far.
* ``delivery_counter``: the last ``seq``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

from eventstore.base import micros_from_utc
from projections import delivery_payloads as p
from projections.database import SqlConnection, in_chunks

SCHEMA_SQL: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS deliveries (
        delivery_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        account_id BIGINT NOT NULL,
        subscriber_id BIGINT,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        source_event_id TEXT NOT NULL,
        source_type TEXT NOT NULL,
        source_position BIGINT NOT NULL,
        source_us BIGINT NOT NULL,
        payload TEXT NOT NULL,
        secret TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        version BIGINT NOT NULL,
        next_attempt_us BIGINT,
        reason TEXT,
        completed_us BIGINT,
        last_position BIGINT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS deliveries_seq ON deliveries (seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_account ON deliveries (account_id, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_subscriber ON deliveries (subscriber_id, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_us, seq)"
    " WHERE status = 'pending'",
    """
    CREATE TABLE IF NOT EXISTS delivery_attempts (
        delivery_id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        position BIGINT NOT NULL,
        attempted_us BIGINT,
        status_code BIGINT,
        error TEXT,
        response TEXT,
        outcome TEXT,
        retry_us BIGINT,
        PRIMARY KEY (delivery_id, attempt)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS delivery_circuits (
        account_id BIGINT NOT NULL,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        failures BIGINT NOT NULL,
        paused_until_us BIGINT,
        last_error TEXT,
        PRIMARY KEY (account_id, channel, target)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS delivery_facebook (
        spot_id BIGINT PRIMARY KEY,
        pixel_id TEXT NOT NULL,
        access_token TEXT NOT NULL,
        test_event_code TEXT
    ) WITHOUT ROWID
    """,
    "CREATE TABLE IF NOT EXISTS delivery_telegram"
    " (spot_id BIGINT PRIMARY KEY, bot_token TEXT NOT NULL) WITHOUT ROWID",
    """
    CREATE TABLE IF NOT EXISTS delivery_goal_notify (
        account_id BIGINT NOT NULL,
        name TEXT NOT NULL,
        notify TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS delivery_webhooks (
        account_id BIGINT NOT NULL,
        webhook_id BIGINT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        PRIMARY KEY (account_id, webhook_id)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS delivery_subscribers (
        subscriber_id BIGINT PRIMARY KEY,
        user_id TEXT NOT NULL,
        clickid TEXT,
        fbclid TEXT,
        fbp TEXT,
        created_us BIGINT NOT NULL,
        player_id TEXT
    ) WITHOUT ROWID
    """,
    "CREATE TABLE IF NOT EXISTS delivery_counter"
    " (name TEXT PRIMARY KEY, value BIGINT NOT NULL) WITHOUT ROWID",
)
TABLES: Final = (
    "deliveries",
    "delivery_attempts",
    "delivery_circuits",
    "delivery_facebook",
    "delivery_telegram",
    "delivery_goal_notify",
    "delivery_webhooks",
    "delivery_subscribers",
    "delivery_counter",
)


def as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def micros_of(text: object) -> int | None:
    """Microseconds of an ISO time with a zone (as outcome events carry them), else None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return micros_from_utc(moment) if moment.tzinfo is not None else None


@dataclass(slots=True)
class Delivery:
    """A ``deliveries`` row, its fields in column order."""

    delivery_id: str
    seq: int
    account_id: int
    subscriber_id: int | None
    channel: str
    target: str
    source_event_id: str
    source_type: str
    source_position: int
    source_us: int
    payload: str
    secret: str
    status: str = p.PENDING
    attempts: int = 0
    version: int = 0
    next_attempt_us: int | None = None
    reason: str | None = None
    completed_us: int | None = None
    last_position: int = 0


@dataclass(slots=True)
class SubscriberRow:
    subscriber_id: int
    user_id: str
    clickid: str | None
    fbclid: str | None
    fbp: str | None
    created_us: int
    player_id: str | None = None


@dataclass(slots=True)
class CircuitRow:
    account_id: int
    channel: str
    target: str
    failures: int = 0
    paused_until_us: int | None = None
    last_error: str | None = None


DELIVERY_COLUMNS: Final = tuple(f.name for f in fields(Delivery))
SUBSCRIBER_COLUMNS: Final = tuple(f.name for f in fields(SubscriberRow))
CIRCUIT_COLUMNS: Final = tuple(f.name for f in fields(CircuitRow))
# A row's values in column order (``dataclasses.astuple`` deep-copies, ten times slower).
delivery_values: Final = attrgetter(*DELIVERY_COLUMNS)
subscriber_values: Final = attrgetter(*SUBSCRIBER_COLUMNS)
circuit_values: Final = attrgetter(*CIRCUIT_COLUMNS)


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


UPSERT_DELIVERY: Final = (
    _upsert("deliveries", DELIVERY_COLUMNS, ("delivery_id",))
    # A row only moves forward: folding an event twice never takes it back.
    + " WHERE deliveries.last_position < excluded.last_position"
)
UPSERT_SUBSCRIBER: Final = _upsert("delivery_subscribers", SUBSCRIBER_COLUMNS, ("subscriber_id",))
UPSERT_CIRCUIT: Final = _upsert(
    "delivery_circuits", CIRCUIT_COLUMNS, ("account_id", "channel", "target")
)
UPSERT_FACEBOOK: Final = _upsert(
    "delivery_facebook", ("spot_id", "pixel_id", "access_token", "test_event_code"), ("spot_id",)
)
UPSERT_TELEGRAM: Final = _upsert("delivery_telegram", ("spot_id", "bot_token"), ("spot_id",))
UPSERT_NOTIFY: Final = _upsert(
    "delivery_goal_notify", ("account_id", "name", "notify"), ("account_id", "name")
)
UPSERT_WEBHOOK: Final = _upsert(
    "delivery_webhooks", ("account_id", "webhook_id", "url", "secret"), ("account_id", "webhook_id")
)
INSERT_ATTEMPT: Final = (
    "INSERT INTO delivery_attempts (delivery_id, attempt, position, attempted_us, status_code,"
    " error, response, outcome, retry_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (delivery_id, attempt) DO NOTHING"
)
UPSERT_COUNTER: Final = _upsert("delivery_counter", ("name", "value"), ("name",))


def select_in(
    conn: SqlConnection, sql: str, column: str, keys: Iterable[Any]
) -> list[tuple[Any, ...]]:
    """``sql WHERE column IN (keys)``, in chunks of bound parameters (portable, any size)."""
    rows: list[tuple[Any, ...]] = []
    for marks, chunk in in_chunks(set(keys)):
        rows.extend(conn.execute(f"{sql} WHERE {column} IN ({marks})", chunk).fetchall())
    return rows
