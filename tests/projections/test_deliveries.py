"""The deliveries projection: which events make which deliveries, with what payload, and
how outcome events fold; the same rows in any split of batches and after a rebuild."""

from __future__ import annotations

import hashlib
import inspect
import re
import uuid
from datetime import datetime
from typing import Any

from eventstore.base import NewEvent, micros_from_utc
from eventstore.sqlite import SQLiteEventStore
from projections import deliveries, deliveries_query, deliveries_schema
from projections import delivery_payloads as p
from projections.deliveries import DeliveriesProjection
from projections.deliveries_query import (
    circuit_states,
    due_deliveries,
    list_deliveries,
    paused_targets,
    subscriber_delivery_ids,
)
from projections.deliveries_schema import TABLES
from projections.runner import ProjectionRunner
from tests.projections.conftest import RunnerFactory

BOT = "123456:secret-part"


def _subscriber(subscriber_id: int, **extra: Any) -> NewEvent:
    data = {
        "subscriber_id": subscriber_id,
        "account_id": 1,
        "spot_id": 1,
        "spot_token": "tok",
        "user_id": f"77{subscriber_id}",
        "clickid": f"C{subscriber_id}",
        "fbclid": None,
        "fbp": None,
        **extra,
    }
    return NewEvent("SubscriberCreated", data)


def _contact(subscriber_id: int, spot_id: int = 1) -> NewEvent:
    data = {
        "subscriber_id": subscriber_id,
        "account_id": 1,
        "spot_id": spot_id,
        "user_id": f"77{subscriber_id}",
    }
    return NewEvent("ContactRecorded", data)


def _goal(subscriber_id: int, goal: str, amount: str | None = None, account: int = 1) -> NewEvent:
    data = {
        "subscriber_id": subscriber_id,
        "account_id": account,
        "spot_id": 1,
        "goal": goal,
        "standard": goal in ("reg", "dep"),
        "amount": amount,
        "txid": None,
    }
    return NewEvent("GoalReached", data)


async def _setup_log(store: SQLiteEventStore) -> None:
    await store.append("subscribers", [_subscriber(1, fbclid="IwAR", fbp="fb.1.1.2")])
    await store.append("subscriber-1", [_contact(1)])  # no pixel yet: nothing
    facebook = {"spot_id": 1, "account_id": 1, "pixel_id": "PX", "access_token": "TOKEN"}
    await store.append("spot-settings-1", [NewEvent("FacebookConfigured", facebook)])
    await store.append("subscriber-1", [_contact(1)])
    await store.append("subscriber-1", [_contact(1, spot_id=2)])  # another spot: nothing
    notify = {"account_id": 1, "name": "vip", "profile": None, "notify": "{goal}={amount} {x}"}
    await store.append("goals-1", [NewEvent("GoalDefined", notify)])
    telegram = {"spot_id": 1, "account_id": 1, "bot_token": BOT}
    await store.append("spot-settings-1", [NewEvent("TelegramConfigured", telegram)])
    hook = {"account_id": 1, "webhook_id": 1, "url": "https://a.example/h", "secret": "s1"}
    await store.append("webhooks-1", [NewEvent(p.WEBHOOK_REGISTERED, hook)])
    other = {"account_id": 2, "webhook_id": 1, "url": "https://b.example/h", "secret": "s2"}
    await store.append("webhooks-2", [NewEvent(p.WEBHOOK_REGISTERED, other)])
    player = {"subscriber_id": 1, "account_id": 1, "player_id": "P-1", "previous": None}
    await store.append(
        "subscriber-1", [NewEvent("PlayerIdAssigned", player), _goal(1, "vip", "10.50")]
    )
    await store.append("subscriber-1", [_goal(1, "reg")])  # webhook only


async def _rows(runner: ProjectionRunner) -> dict[str, list[tuple[Any, ...]]]:
    def read(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}

    return await runner.query(read)


async def test_sources_become_deliveries_with_their_payloads(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await _setup_log(store)
    runner = make_runner([DeliveriesProjection()])
    await runner.catch_up()
    listed = await runner.query(lambda c: list_deliveries(c, account_id=1))
    assert [(d["seq"], d["channel"], d["target"]) for d in listed] == [
        (1, "facebook_capi", "PX"),
        (2, "telegram", "bot123456"),
        (3, "webhook", "https://a.example/h"),
        (4, "webhook", "https://a.example/h"),
    ]
    assert {d["status"] for d in listed} == {"pending"}
    events = {e.event_id: e for e in await store.read_stream("subscriber-1")}
    facebook, telegram, webhook, _ = listed
    contact = events[uuid.UUID(facebook["source"]["event_id"])]
    created = (await store.read_stream("subscribers"))[0]
    assert facebook["payload"] == {
        "data": [
            {
                "event_name": "Contact",
                "event_time": micros_from_utc(contact.recorded_at) // 1_000_000,
                "event_id": str(contact.event_id),
                "action_source": "chat",
                "user_data": {
                    "external_id": [hashlib.sha256(b"771").hexdigest()],
                    "fbc": f"fb.1.{micros_from_utc(created.recorded_at) // 1000}.IwAR",
                    "fbp": "fb.1.1.2",
                },
            }
        ]
    }
    assert telegram["payload"] == {"chat_id": 771, "text": "vip=10.50 {x}"}
    assert webhook["payload"]["player_id"] == "P-1"
    assert webhook["payload"]["goal"] == "vip"
    assert "TOKEN" not in str(listed)
    assert BOT not in str(listed)
    assert await runner.query(lambda c: list_deliveries(c, account_id=2)) == []
    ids = await runner.query(lambda c: subscriber_delivery_ids(c, subscriber_id=1))
    assert ids == [d["id"] for d in listed]
    assert ids[0] == p.delivery_id(str(contact.event_id), p.FACEBOOK, "PX")

    due, later = await runner.query(lambda c: due_deliveries(c, now_us=2**62, limit=10))
    assert [d.delivery_id for d in due] == ids
    assert later is None
    assert {d.secret for d in due} == {"TOKEN", BOT, "s1"}
    assert "TOKEN" not in repr(due)


async def test_outcome_events_fold_into_status_attempts_and_circuits(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await _setup_log(store)
    runner = make_runner([DeliveriesProjection()])
    await runner.catch_up()
    first = (await runner.query(lambda c: list_deliveries(c, account_id=1)))[0]
    common = {"delivery_id": first["id"], "account_id": 1, "subscriber_id": 1}
    common |= {"channel": "facebook_capi", "target": "PX"}
    retry = {
        **common,
        "attempt": 1,
        "attempted_at": "2026-11-24T10:00:00+00:00",
        "status": 503,
        "error": "HTTP 503",
        "response": "busy",
        "outcome": "retry",
        "transient": True,
        "retry_at": "2026-11-24T10:00:30+00:00",
    }
    stream = p.delivery_stream(first["id"])
    await store.append(stream, [NewEvent(p.DELIVERY_ATTEMPTED, retry)])
    paused = {**common, "failures": 1, "paused_until": "2026-11-24T10:01:00+00:00"}
    del paused["delivery_id"], paused["subscriber_id"]
    await store.append("outbox-1", [NewEvent(p.CHANNEL_PAUSED, paused)])
    await runner.catch_up()
    (row,) = await runner.query(lambda c: list_deliveries(c, account_id=1, channel="facebook_capi"))
    assert row["status"] == "pending"
    assert row["next_attempt_at"] == "2026-11-24T10:00:30+00:00"
    assert [(a["attempt"], a["status_code"], a["response"]) for a in row["attempts"]] == [
        (1, 503, "busy")
    ]
    at_10 = micros_from_utc(datetime.fromisoformat("2026-11-24T10:00:40Z"))
    assert await runner.query(lambda c: circuit_states(c)) == [
        (1, "facebook_capi", "PX", 1, at_10 + 20_000_000)
    ]
    targets = await runner.query(lambda c: paused_targets(c, account_id=1, now_us=at_10))
    assert targets[0]["paused"] is True
    assert targets[0]["last_error"] == "HTTP 503"
    due, _ = await runner.query(lambda c: due_deliveries(c, now_us=at_10, limit=10))
    assert first["id"] not in [d.delivery_id for d in due]  # paused

    success = {**retry, "attempt": 2, "status": 200, "outcome": "succeeded", "transient": False}
    success |= {"retry_at": None, "error": None}
    done = {**common, "attempt": 2}
    await store.append(
        stream,
        [NewEvent(p.DELIVERY_ATTEMPTED, success), NewEvent(p.DELIVERY_SUCCEEDED, done)],
        expected_version=1,
    )
    await store.append("outbox-1", [NewEvent(p.CHANNEL_RESUMED, paused)])
    await runner.catch_up()
    (row,) = await runner.query(lambda c: list_deliveries(c, account_id=1, status="succeeded"))
    assert row["id"] == first["id"]
    assert len(row["attempts"]) == 2
    assert row["next_attempt_at"] is None
    assert await runner.query(lambda c: circuit_states(c)) == []
    pending = await runner.query(lambda c: due_deliveries(c, now_us=2**62, limit=10))
    assert first["id"] not in [d.delivery_id for d in pending[0]]


async def test_the_same_rows_in_any_batches_and_after_a_rebuild(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await _setup_log(store)
    probe = make_runner([DeliveriesProjection()], place="probe")
    await probe.catch_up()
    listed = await probe.query(lambda c: list_deliveries(c, account_id=1))
    (first,) = [d for d in listed if d["channel"] == p.FACEBOOK]
    attempted = {"delivery_id": first["id"], "attempt": 1, "outcome": "failed", "status": 400}
    await store.append(
        p.delivery_stream(first["id"]),
        [
            NewEvent(p.DELIVERY_ATTEMPTED, attempted),
            NewEvent(p.DELIVERY_FAILED, {"delivery_id": first["id"], "reason": "HTTP 400"}),
        ],
    )
    await store.append("subscriber-1", [_contact(1), _goal(1, "vip")])
    tables = []
    for batch_size, place in ((1, "one"), (3, "three"), (5000, "all")):
        runner = make_runner([DeliveriesProjection()], batch_size=batch_size, place=place)
        await runner.catch_up()
        tables.append(await _rows(runner))
    await runner.rebuild()
    tables.append(await _rows(runner))
    assert all(t == tables[0] for t in tables)
    assert len(tables[0]["deliveries"]) == 7
    assert tables[0]["delivery_counter"] == [("seq", 7)]


def test_payload_helpers() -> None:
    assert p.render("{goal} {amount} {nope} {player_id}", {"goal": "g", "amount": ""}) == (
        "g  {nope} {player_id}"
    )
    assert p.bot_target("987:abc") == "bot987"
    assert p.bot_target("no-colon").startswith("bot#")
    assert "no-colon" not in p.bot_target("no-colon")
    assert p.telegram_body("x1", "t" * 5000) == {"chat_id": "x1", "text": "t" * 4096}
    assert p.fbc("abc", 1_700_000_000_123_456) == "fb.1.1700000000123.abc"
    assert p.delivery_id("e", "c", "t") == p.delivery_id("e", "c", "t")
    assert p.delivery_id("e", "c", "t") != p.delivery_id("e", "c", "u")


def test_the_sql_is_portable() -> None:
    """The rule of projections.database: no SQLite-only constructs, no 32-bit integers."""
    text = "".join(inspect.getsource(m) for m in (deliveries, deliveries_query, deliveries_schema))
    for forbidden in ("OR REPLACE", "OR IGNORE", "json_each", "PRAGMA", "rowid ", "REAL"):
        assert forbidden.lower() not in text.lower().replace("without rowid", ""), forbidden
    for statement in deliveries_schema.SCHEMA_SQL:
        assert not re.search(r"\bINTEGER\b", statement), statement
