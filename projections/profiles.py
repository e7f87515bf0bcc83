"""The ``profiles`` projection: a subscriber's player id and profile fields.

Its sources (docs/events.md): ``SubscriberCreated`` makes the row (so a known subscriber has
one, even without a profile); ``PlayerIdAssigned`` sets ``player_id`` (assigned, or replaced
by a later ``playerid``); a ``GoalReached`` whose ``profile`` is a non-empty object (the goal
definition's ``profile`` at the time) updates ``fields`` key by key: later goals overwrite
fields, others stay. The same fold as :func:`postback.views.subscriber_view`.

``fields`` is canonical JSON text (orjson, keys sorted). A subscriber is told as in
:mod:`projections.subscribers`; events at or below a row's ``last_position`` are skipped, so
applying a batch twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from eventstore.base import RecordedEvent
from projections.database import SqlConnection
from projections.subscribers import (
    GOAL_REACHED,
    PLAYER_ID_ASSIGNED,
    SUBSCRIBER_CREATED,
    rows_by_id,
    subscriber_of,
    upsert,
)

SCHEMA_SQL: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS profiles (
        subscriber_id BIGINT PRIMARY KEY,
        account_id BIGINT,
        player_id TEXT,
        fields TEXT NOT NULL,
        last_position BIGINT NOT NULL
    ) WITHOUT ROWID
    """,
)
COLUMNS: Final = ("subscriber_id", "account_id", "player_id", "fields", "last_position")
_REPLACE = upsert("profiles", COLUMNS, "subscriber_id")


def canonical(fields: dict[str, Any]) -> str:
    """The stored form of profile fields: orjson with sorted keys."""
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(slots=True)
class _Row:
    subscriber_id: int
    account_id: int | None = None
    player_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    last_position: int = 0

    def apply(self, event: RecordedEvent) -> bool:
        """Fold ``event``; False (and nothing changed) if it is nothing to this projection."""
        data = event.data
        profile = data.get("profile")
        if event.type == PLAYER_ID_ASSIGNED:
            player_id = data.get("player_id")
            self.player_id = player_id if isinstance(player_id, str) else None
        elif event.type == GOAL_REACHED:
            if not isinstance(profile, dict) or not profile:
                return False
            self.fields.update(profile)
        account_id = data.get("account_id")
        if self.account_id is None and type(account_id) is int:
            self.account_id = account_id
        self.last_position = event.position
        return True


class ProfilesProjection:
    """See the module docstring. Stateless: any number of runners may share one."""

    name = "profiles"
    rebuild_weight = 0.8  # seconds per million events of bench/rebuild.py's log
    schema_sql: Sequence[str] = SCHEMA_SQL
    reads_event_fields = frozenset({"stream"})  # subscriber_of: the stream's name

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        todo = [
            (subscriber_id, event)
            for event in events
            if event.type in (SUBSCRIBER_CREATED, PLAYER_ID_ASSIGNED, GOAL_REACHED)
            and (subscriber_id := subscriber_of(event)) is not None
        ]
        if not todo:
            return
        ids = {subscriber_id for subscriber_id, _ in todo}
        rows = {
            subscriber_id: _Row(subscriber_id, account_id, player_id, orjson.loads(fields), last)
            for subscriber_id, account_id, player_id, fields, last in rows_by_id(
                conn, "profiles", COLUMNS, ids
            )
        }
        changed: set[int] = set()
        for subscriber_id, event in todo:
            row = rows.get(subscriber_id) or rows.setdefault(subscriber_id, _Row(subscriber_id))
            if event.position > row.last_position and row.apply(event):
                changed.add(subscriber_id)
        conn.executemany(
            _REPLACE,
            [
                (r.subscriber_id, r.account_id, r.player_id, canonical(r.fields), r.last_position)
                for r in map(rows.__getitem__, changed)
            ],
        )

    def reset(self, conn: SqlConnection) -> None:
        conn.execute("DROP TABLE IF EXISTS profiles")


def profile_row(conn: SqlConnection, subscriber_id: int) -> dict[str, Any] | None:
    """``{"player_id", "profile"}`` of a subscriber, as in
    :func:`postback.views.subscriber_view`; None if the projection has no row for it."""
    found = conn.execute(
        "SELECT player_id, fields FROM profiles WHERE subscriber_id = ?", (subscriber_id,)
    ).fetchone()
    if found is None:
        return None
    player_id, fields = found
    return {"player_id": player_id, "profile": orjson.loads(fields)}
