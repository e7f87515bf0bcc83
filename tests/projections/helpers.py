"""A recording projection and builders of postback events, shared by the tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from eventstore.base import EventStore, NewEvent, RecordedEvent
from projections.database import SqlConnection
from projections.runner import ProjectionRunner


class Boom(Exception):
    """What a failing projection raises."""


class Recording:
    """Appends one row per event it is given (no unique key: a double apply would show),
    numbered in insertion order (``seq``, portable where SQLite has ``rowid``).

    ``fail_at``: raise :class:`Boom` on reaching that position, after having inserted the
    rows before it in the same batch (a failure in the middle of a transaction).
    """

    def __init__(self, name: str = "recording", fail_at: int | None = None) -> None:
        self.name = name
        self.fail_at = fail_at
        self.schema_sql: Sequence[str] = (
            f"CREATE TABLE IF NOT EXISTS {name} (seq BIGINT NOT NULL, position BIGINT NOT NULL,"
            " stream TEXT NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL)",
        )
        self.calls: list[list[int]] = []
        """The positions of each apply_batch call, committed or not."""

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        self.calls.append([event.position for event in events])
        for event in events:
            if event.position == self.fail_at:
                raise Boom(f"failing at {event.position}")
            conn.execute(
                f"INSERT INTO {self.name} (seq, position, stream, type, data)"
                f" SELECT COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ? FROM {self.name}",
                (event.position, event.stream, event.type, orjson.dumps(event.data)),
            )

    def reset(self, conn: SqlConnection) -> None:
        conn.execute(f"DELETE FROM {self.name}")


async def recorded(runner: ProjectionRunner, name: str = "recording") -> list[tuple[Any, ...]]:
    """The rows of a :class:`Recording` table, in insertion order (without ``seq``)."""
    return await runner.query(
        lambda conn: conn.execute(
            f"SELECT position, stream, type, data FROM {name} ORDER BY seq"
        ).fetchall()
    )


async def stored_checkpoints(runner: ProjectionRunner) -> dict[str, int]:
    """The checkpoints as committed in the database (not the runner's memory)."""
    rows = await runner.query(
        lambda conn: conn.execute("SELECT name, position FROM projection_checkpoints").fetchall()
    )
    return {name: position for name, position in rows}


def event(event_type: str = "Happened", **data: Any) -> NewEvent:
    return NewEvent(event_type, data)


def postback_meta(
    request_id: str | None = None,
    *,
    status: int = 200,
    clickid: str | None = "ABC",
    goal: str | None = "reg",
    endpoint: str = "postback",
    response: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """``metadata`` of an event caused by a partner request (docs/events.md)."""
    query = f"clickid={clickid}&goal={goal}"
    postback = {
        "request_id": request_id or str(uuid.uuid4()),
        "endpoint": endpoint,
        "method": "GET",
        "path": "/postback/",
        "query": query,
        "body": "",
        "ip": "203.0.113.7",
        "received_at": "2026-11-24T12:00:00.123456+00:00",
        "clickid": clickid,
        "user_id": "7788",
        "spot": "spot-token",
        "goal": goal,
        "txid": None,
        "status": status,
        "response": {"success": status == 200} if response is None else response,
    }
    postback.update(extra)
    return {"postback": postback}


def goal_reached(account_id: int, meta: dict[str, Any], goal: str = "reg") -> NewEvent:
    return NewEvent(
        "GoalReached",
        {"subscriber_id": 1, "account_id": account_id, "spot_id": 1, "goal": goal},
        meta,
    )


def rejected(account_id: int | None, meta: dict[str, Any]) -> NewEvent:
    status = meta["postback"]["status"]
    return NewEvent(
        "PostbackRejected",
        {"account_id": account_id, "status": status, "code": "unknown", "error": "no"},
        meta,
    )


def service_events(subscriber: int, account: int) -> list[NewEvent]:
    """What the service records for one subscriber: created, a contact, goals (a custom
    one with an amount), a player id; every event with its request in the metadata."""
    base = {"subscriber_id": subscriber, "account_id": account, "spot_id": account}
    meta = postback_meta(clickid=f"C{subscriber}")

    def goal(name: str, amount: str | None) -> NewEvent:
        data = {**base, "goal": name, "standard": name != "vip", "amount": amount, "txid": None}
        return NewEvent("GoalReached", data, postback_meta(clickid=f"C{subscriber}", goal=name))

    return [
        NewEvent(
            "SubscriberCreated",
            {
                **base,
                "spot_token": f"spot-{account}",
                "user_id": str(7000 + subscriber),
                "clickid": f"C{subscriber}",
                "fbclid": None,
                "fbp": None,
            },
        ),
        NewEvent("ContactRecorded", {**base, "user_id": str(7000 + subscriber)}, meta),
        goal("reg", None),
        goal("dep", "100.10"),
        NewEvent("PlayerIdAssigned", {**base, "player_id": f"P{subscriber}"}, meta),
        goal("redep", "0.2"),
        goal("vip", "1"),
    ]


async def fill_service_log(store: EventStore) -> int:
    """Six subscribers of two accounts (:func:`service_events`) and a rejected postback;
    the position of the last event."""
    for subscriber in range(1, 7):
        await store.append(
            f"subscriber-{subscriber}", service_events(subscriber, subscriber % 2 + 1)
        )
    rejected = NewEvent(
        "PostbackRejected",
        {"account_id": None, "status": 404, "code": "unknown", "error": "no"},
        postback_meta(status=404, clickid="nobody"),
    )
    result = await store.append("postback-log", [rejected])
    return result.last_position
