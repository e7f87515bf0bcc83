"""The postback_index projection and list_postbacks (entries read from the log)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.base import NewEvent, RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from projections.checkpoints import read_checkpoints
from projections.database import SqlConnection
from projections.postback_log import (
    COLUMNS,
    PostbackLogProjection,
    entry_of,
    list_postbacks,
    row_of,
)
from projections.runner import ProjectionRunner
from tests.projections.conftest import RunnerFactory
from tests.projections.helpers import event, goal_reached, postback_meta, rejected


async def listed(runner: ProjectionRunner, **filters: Any) -> list[dict[str, Any]]:
    arguments: dict[str, Any] = {
        "account_id": None,
        "clickid": None,
        "status": None,
        "after": 0,
        "limit": 100,
    }
    arguments.update(filters)
    return await list_postbacks(runner, **arguments)


@pytest.fixture
async def runner(store: SQLiteEventStore, make_runner: RunnerFactory) -> ProjectionRunner:
    """A postback log over: 1 accepted (account 1, ABC), 2 rejected (account 1 and unknown),
    3 accepted (account 2, XYZ), 4 no postback, 5 accepted (account 1, ABC, dep)."""
    await store.append("subscriber-1", [goal_reached(1, postback_meta("r1", clickid="ABC"))])
    await store.append(
        "postback-log", [rejected(1, postback_meta("r2", status=404, clickid="NOPE"))]
    )
    await store.append(
        "postback-log", [rejected(None, postback_meta("r3", status=401, clickid=None))]
    )
    await store.append("subscriber-2", [goal_reached(2, postback_meta("r4", clickid="XYZ"))])
    await store.append("accounts", [event("AccountCreated", account_id=3, name="n")])
    await store.append(
        "subscriber-1", [goal_reached(1, postback_meta("r5", clickid="ABC", goal="dep"), "dep")]
    )
    made = make_runner([PostbackLogProjection()])
    await made.catch_up()
    return made


async def test_rows_are_json_ready_and_complete(runner: ProjectionRunner) -> None:
    rows = await listed(runner)
    assert [row["request_id"] for row in rows] == ["r1", "r2", "r3", "r4", "r5"]
    assert [row["position"] for row in rows] == [1, 2, 3, 4, 6]
    first = rows[0]
    assert tuple(first) == COLUMNS
    assert first == {
        "position": 1,
        "request_id": "r1",
        "endpoint": "postback",
        "clickid": "ABC",
        "user_id": "7788",
        "spot": "spot-token",
        "goal": "reg",
        "txid": None,
        "status": 200,
        "ip": "203.0.113.7",
        "method": "GET",
        "path": "/postback/",
        "query": "clickid=ABC&goal=reg",
        "body": "",
        "body_base64": None,  # only for a body that is not UTF-8
        "received_at": "2026-11-24T12:00:00.123456+00:00",
        "response": {"success": True},
    }
    assert rows[1]["status"] == 404
    assert rows[1]["response"] == {"success": False}


async def test_accounts_see_only_their_rows(runner: ProjectionRunner) -> None:
    assert [r["request_id"] for r in await listed(runner, account_id=1)] == ["r1", "r2", "r5"]
    assert [r["request_id"] for r in await listed(runner, account_id=2)] == ["r4"]
    assert await listed(runner, account_id=3) == []
    # the unknown-account rejection is for the admin only
    assert "r3" in [r["request_id"] for r in await listed(runner, account_id=None)]


async def test_filters(runner: ProjectionRunner) -> None:
    by_clickid = await listed(runner, account_id=1, clickid="ABC")
    assert [r["request_id"] for r in by_clickid] == ["r1", "r5"]
    assert await listed(runner, account_id=2, clickid="ABC") == []
    assert [r["request_id"] for r in await listed(runner, status=200)] == ["r1", "r4", "r5"]
    assert [r["request_id"] for r in await listed(runner, account_id=1, status=404)] == ["r2"]
    assert [r["request_id"] for r in await listed(runner, status=401)] == ["r3"]


async def test_paging_by_position(runner: ProjectionRunner) -> None:
    pages: list[str] = []
    after = 0
    while page := await listed(runner, account_id=1, after=after, limit=2):
        pages.append(",".join(r["request_id"] for r in page))
        after = page[-1]["position"]
    assert pages == ["r1,r2", "r5"]
    assert await listed(runner, after=6) == []
    assert await listed(runner, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        await listed(runner, limit=-1)


async def test_one_request_two_events_one_row(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    meta = postback_meta("same", clickid="C1", goal="dep")
    player = NewEvent("PlayerIdAssigned", {"subscriber_id": 1, "account_id": 1}, meta)
    await store.append("subscriber-1", [player, goal_reached(1, meta, "dep")])
    runner = make_runner([PostbackLogProjection()])
    await runner.catch_up()
    # and a retry of the same request arriving in a later batch is ignored too
    await store.append("subscriber-1", [goal_reached(1, meta, "dep")])
    await runner.catch_up()
    rows = await listed(runner)
    assert [(r["request_id"], r["position"]) for r in rows] == [("same", 1)]


async def test_a_request_id_seen_again_later_makes_a_new_row(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    # Only adjacent events are one request: the same id after another request is a new
    # entry (the service never writes that; the rule only has to be the same for any split).
    for request_id in ("a", "b", "a", "a"):
        await store.append("postback-log", [rejected(1, postback_meta(request_id, status=404))])
    runner = make_runner([PostbackLogProjection()], batch_size=1)
    await runner.catch_up()
    rows = await listed(runner)
    assert [(r["request_id"], r["position"]) for r in rows] == [("a", 1), ("b", 2), ("a", 3)]


async def test_the_old_full_copy_and_its_checkpoint_are_removed(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    # A projections database of the version that kept ``postback_log`` (a copy of each
    # request): its table and checkpoint go, so that version, started again on the same
    # database, would rebuild it rather than trust an empty table.
    await store.append("subscriber-1", [goal_reached(1, postback_meta("r1"))])
    old = make_runner([PostbackLogProjection()])
    await old.open()

    def old_version(conn: SqlConnection) -> None:
        conn.execute("CREATE TABLE postback_log (request_id TEXT PRIMARY KEY)")
        conn.execute(
            "INSERT INTO projection_checkpoints (name, position, updated_at)"
            " VALUES ('postback_log', 1, 'then')"
        )

    await old.database.transaction(old_version)
    await old.close()
    runner = make_runner([PostbackLogProjection()])
    await runner.catch_up()
    assert "postback_log" not in await runner.query(read_checkpoints)
    # the table is gone: creating it again works
    await runner.database.transaction(
        lambda conn: conn.execute("CREATE TABLE postback_log (request_id TEXT)")
    )
    assert [r["request_id"] for r in await listed(runner)] == ["r1"]


async def test_run_lists_a_postback_once_it_is_appended(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    runner = make_runner([PostbackLogProjection()])
    task = asyncio.create_task(runner.run())
    result = await store.append("subscriber-1", [goal_reached(1, postback_meta("live"))])
    await runner.wait_until(result.last_position)  # read your own writes
    assert [r["request_id"] for r in await listed(runner, account_id=1)] == ["live"]
    await runner.close()
    await task


def recorded_event(data: dict[str, Any], metadata: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        position=7,
        stream="postback-log",
        version=1,
        event_id=uuid.UUID(int=5),
        type="PostbackRejected",
        schema_version=1,
        data=data,
        metadata=metadata,
        recorded_at=datetime.now(UTC),
        hash=b"",
    )


def test_row_of_edge_cases() -> None:
    assert row_of(recorded_event({"account_id": 1}, {})) is None
    assert entry_of(recorded_event({"account_id": 1}, {})) is None
    assert row_of(recorded_event({"account_id": 1}, {"postback": "text"})) is None
    # no status in the metadata: the data's (PostbackRejected); none at all: no row
    event = recorded_event({"account_id": True, "status": 400}, {"postback": {}})
    assert row_of(event) == (7, str(uuid.UUID(int=5)), None, None, 400)  # no request_id: the
    # event id; a bool is not an account id
    entry = entry_of(event)
    assert entry is not None
    assert entry["request_id"] == str(uuid.UUID(int=5))
    assert entry["status"] == 400
    assert entry["response"] is None
    assert row_of(recorded_event({}, {"postback": {"status": "200"}})) is None
    assert row_of(recorded_event({}, {"postback": {"status": 200, "request_id": ""}})) == (
        7,
        str(uuid.UUID(int=5)),
        None,
        None,
        200,
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
postback_objects = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.text(max_size=8) | json_values,
        "status": st.integers(100, 599) | json_values,
        "clickid": st.text(max_size=8) | json_values,
        "query": json_values,
    },
)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    data=st.fixed_dictionaries(
        {},
        optional={
            "account_id": st.integers(1, 9) | json_values,
            "status": st.integers(100, 599) | json_values,
        },
    ),
    metadata=st.fixed_dictionaries(
        {}, optional={"postback": postback_objects | json_values, "other": json_values}
    ),
)
def test_the_stored_metadata_gives_the_row_its_full_parse_gives(
    data: dict[str, Any], metadata: dict[str, Any]
) -> None:
    # A store's event keeps its metadata's JSON, of which the index reads three fields
    # with a decoder of its own; an event built in memory has the dict.
    row = same_row_from_json_and_dict(data, orjson.dumps(metadata))
    stored = stored_event(data, orjson.dumps(metadata))
    # ... and the entry listed for it, which the full metadata gives, agrees.
    entry = entry_of(stored)
    if row is None:
        assert entry is None
    else:
        assert entry is not None
        assert (entry["request_id"], entry["clickid"], entry["status"]) == (row[1], row[3], row[4])


def stored_event(data: dict[str, Any], metadata: bytes) -> RecordedEvent:
    """The event as a store reads it: its metadata the JSON text, decoded when used."""
    built = recorded_event(data, {})
    return RecordedEvent.stored(
        built.position,
        built.stream,
        built.version,
        built.event_id.bytes,
        built.type,
        built.schema_version,
        data,
        metadata,
        built.recorded_us,
        built.hash,
    )


def same_row_from_json_and_dict(data: dict[str, Any], metadata: bytes) -> Any:
    """``row_of`` of the stored event, asserted equal to that of the event whose metadata
    is what the full parse (orjson) makes of the same text."""
    stored = stored_event(data, metadata)
    row = row_of(stored)
    parsed = orjson.loads(metadata)
    if parsed.get("postback") is None or isinstance(parsed["postback"], dict):
        assert stored.stored_metadata is not None  # read without the full parse
    assert row == row_of(recorded_event(data, parsed))
    return row


@pytest.mark.parametrize(
    ("metadata", "status"),
    [
        # Beyond 64 bits orjson gives a float and msgspec an int: no status either way.
        (b'{"postback":{"request_id":"r","status":18446744073709551616}}', None),
        (b'{"postback":{"request_id":"r","status":-9223372036854775809}}', None),
        # Within 64 bits but beyond a BIGINT: no status (the row could not be stored).
        (b'{"postback":{"request_id":"r","status":9223372036854775808}}', None),
        (b'{"postback":{"request_id":"r","status":9223372036854775807}}', 2**63 - 1),
        # A repeated key: the last one, for both.
        (b'{"postback":{"request_id":"r","status":200,"status":404}}', 404),
        (b'{"postback":{"request_id":"r","status":200},"postback":{"status":201}}', 201),
        (b'{"postback":{"request_id":"r","status":2.0}}', None),
    ],
)
def test_edge_json_gives_the_same_row_both_ways(metadata: bytes, status: int | None) -> None:
    row = same_row_from_json_and_dict({}, metadata)
    assert (row and row[4]) == status
