"""The EventStore contract (eventstore/base.py), backend-agnostic: only the public API, no SQL.

Every test runs once per backend in ``tests/eventstore/backends.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from itertools import combinations
from typing import Any, cast

import pytest

from eventstore.base import (
    ANY,
    EXISTS,
    NO_STREAM,
    AppendResult,
    EventStore,
    ExpectedVersion,
    NewEvent,
    TamperKind,
    Upcasters,
)
from eventstore.chain import GENESIS
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    InvalidEventError,
    StoreClosedError,
)
from tests.eventstore.helpers import (
    StoreFactory,
    assert_chain,
    assert_gap_free,
    let_others_run,
    new,
    read_everything,
)

WAIT = 10.0  # generous bound for things that should happen at once; never reached when green


async def fill(store: EventStore, plan: list[tuple[str, int]]) -> list[AppendResult]:
    """Append ``count`` fresh events to ``stream`` for each ``(stream, count)``, in order."""
    results = []
    for stream, count in plan:
        events = [new("Filled", stream=stream, i=i) for i in range(count)]
        results.append(await store.append(stream, events))
    return results


# -- append and read: what is stored -------------------------------------------------


async def test_append_then_read_round_trips_every_field(store: EventStore) -> None:
    stream = "order-ström-42 😀"
    first = NewEvent(
        "OrderPlaced",
        {
            "sku": "A-1",
            "qty": 3,
            "price": 9.5,
            "tags": ["x", "ü", {"deep": [1, None, True]}],
            "gift": None,
            "paid": False,
            "big": -(2**63),
        },
        metadata={"request_id": "r-1", "ip": "10.0.0.1"},
        schema_version=2,
    )
    second = NewEvent("OrderShipped", {"carrier": "DHL"})
    before = datetime.now(UTC)
    result = await store.append(stream, [first, second], NO_STREAM)
    after = datetime.now(UTC)

    assert result == AppendResult(stream, 1, 2, 2, duplicate=False)
    events = await store.read_stream(stream)
    assert len(events) == 2
    for position, (sent, got) in enumerate(zip([first, second], events, strict=True), start=1):
        assert got.position == position
        assert got.stream == stream
        assert got.version == position
        assert got.event_id == sent.event_id
        assert got.type == sent.type
        assert got.schema_version == sent.schema_version
        assert got.data == sent.data
        assert got.metadata == sent.metadata
        assert isinstance(got.recorded_at, datetime)
        assert got.recorded_at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= got.recorded_at <= after + timedelta(seconds=1)
        assert isinstance(got.hash, bytes)
        assert len(got.hash) == 32
    assert events[1].metadata == {}
    assert events[0].hash != events[1].hash
    assert await store.read_all() == events
    assert await store.get_event(first.event_id) == events[0]
    assert await store.get_event(second.event_id) == events[1]


async def test_hashes_chain_from_genesis_as_eventstore_chain_defines(store: EventStore) -> None:
    await fill(store, [("a", 3), ("b", 1), ("a", 2)])
    await store.append(
        "c", [NewEvent("WithMeta", {"x": [1.5, "ß"]}, {"who": "me"}, schema_version=4)]
    )
    assert_chain(await store.read_all())


async def test_positions_are_gap_free_across_streams_and_versions_per_stream(
    store: EventStore,
) -> None:
    plan = [("a", 2), ("b", 1), ("a", 3), ("c", 1), ("b", 2), ("a", 1)]
    results = await fill(store, plan)

    expected_versions = {"a": 0, "b": 0, "c": 0}
    next_position = 1
    for (stream, count), result in zip(plan, results, strict=True):
        expected_versions[stream] += count
        assert result == AppendResult(
            stream, next_position, next_position + count - 1, expected_versions[stream]
        )
        next_position += count

    events = await store.read_all()
    assert_gap_free(events)
    assert len(events) == sum(count for _, count in plan)
    for stream, version in expected_versions.items():
        assert await store.stream_version(stream) == version
        stream_events = await store.read_stream(stream)
        assert [e.version for e in stream_events] == list(range(1, version + 1))
        assert all(e.stream == stream for e in stream_events)
        positions = [e.position for e in stream_events]
        assert positions == sorted(positions)


async def test_recorded_at_never_decreases_with_the_position(store: EventStore) -> None:
    await fill(store, [(f"s{i % 3}", 1 + i % 2) for i in range(12)])
    times = [e.recorded_at for e in await store.read_all()]
    assert times == sorted(times)


# -- expected version ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "expected", "accepted"),
    [
        (0, 0, True),
        (0, NO_STREAM, True),
        (0, ANY, True),
        (0, EXISTS, False),
        (0, 1, False),
        (2, 2, True),
        (2, EXISTS, True),
        (2, ANY, True),
        (2, 0, False),
        (2, 1, False),
        (2, 3, False),
        (2, NO_STREAM, False),
    ],
    ids=lambda value: value.name if hasattr(value, "name") else str(value),
)
async def test_expected_version(
    store: EventStore, existing: int, expected: ExpectedVersion, accepted: bool
) -> None:
    await store.append("other", [new()])  # so positions and stream versions differ
    if existing:
        await store.append("s", [new() for _ in range(existing)])
    last = await store.last_position()
    event = new("Next")

    if accepted:
        result = await store.append("s", [event], expected)
        assert result == AppendResult("s", last + 1, last + 1, existing + 1)
        assert (await store.read_stream("s"))[-1].event_id == event.event_id
        return

    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s", [event], expected)
    assert caught.value.stream == "s"
    assert caught.value.actual == existing
    # nothing written
    assert await store.last_position() == last
    assert await store.stream_version("s") == existing
    assert await store.get_event(event.event_id) is None
    assert len(await store.read_all()) == last


async def test_stale_expected_version_after_another_writer(store: EventStore) -> None:
    await store.append("s", [new()], NO_STREAM)
    await store.append("s", [new()], 1)  # writer A moves the stream to 2
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s", [new(), new()], 1)  # writer B still believes 1
    assert caught.value.actual == 2
    assert await store.stream_version("s") == 2
    assert await store.last_position() == 2


# -- idempotency -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry_expected",
    [ANY, NO_STREAM, EXISTS, 0, 1, 2, 99],
    ids=lambda value: value.name if hasattr(value, "name") else str(value),
)
async def test_retry_returns_the_original_result_and_writes_nothing(
    store: EventStore, retry_expected: ExpectedVersion
) -> None:
    await store.append("other", [new()])
    events = [new("A", n=1), new("B", n=2)]
    original = await store.append("s", events, NO_STREAM)
    await store.append("s", [new("Later")])  # the stream moves on
    last = await store.last_position()

    retried = await store.append("s", events, retry_expected)

    assert retried == dataclasses.replace(original, duplicate=True)
    assert retried.first_position == 2
    assert retried.last_position == 3
    assert await store.last_position() == last
    assert len(await store.read_all()) == last
    assert await store.stream_version("s") == 3


async def test_retry_after_reopening(store: EventStore, store_factory: StoreFactory) -> None:
    events = [new(), new()]
    original = await store.append("s", events)
    await store.close()
    reopened = await store_factory()
    assert await reopened.append("s", events, NO_STREAM) == dataclasses.replace(
        original, duplicate=True
    )
    assert await reopened.last_position() == 2


async def test_metadata_is_not_part_of_idempotency(store: EventStore) -> None:
    event = NewEvent("Paid", {"amount": 3}, metadata={"request_id": "first"})
    original = await store.append("s", [event])
    retry = dataclasses.replace(event, metadata={"request_id": "retry", "attempt": 2})
    assert await store.append("s", [retry]) == dataclasses.replace(original, duplicate=True)
    stored = await store.get_event(event.event_id)
    assert stored is not None
    assert stored.metadata == {"request_id": "first"}
    assert await store.last_position() == 1


@pytest.mark.parametrize(
    ("stream", "change"),
    [
        ("s", {"data": {"amount": 4}}),
        ("s", {"data": {"amount": 3, "extra": True}}),
        ("s", {"type": "Refunded"}),
        ("s", {"schema_version": 2}),
        ("elsewhere", {}),
    ],
    ids=["data", "data-extra-key", "type", "schema-version", "stream"],
)
async def test_same_id_with_other_content_is_a_duplicate_error(
    store: EventStore, stream: str, change: dict[str, Any]
) -> None:
    event = NewEvent("Paid", {"amount": 3})
    await store.append("s", [event])
    reused = dataclasses.replace(event, **change)
    with pytest.raises(DuplicateEventError) as caught:
        await store.append(stream, [reused])
    assert caught.value.event_id == event.event_id
    assert await store.last_position() == 1
    assert await store.stream_version("elsewhere") == 0
    stored = await store.get_event(event.event_id)
    assert stored is not None
    assert (stored.stream, stored.type, stored.data, stored.schema_version) == (
        "s",
        "Paid",
        {"amount": 3},
        1,
    )


@pytest.mark.parametrize("stored_first", [True, False], ids=["stored-first", "new-first"])
async def test_partly_stored_append_is_a_duplicate_error(
    store: EventStore, stored_first: bool
) -> None:
    stored = new("Old")
    await store.append("s", [stored])
    fresh = new("Fresh")
    batch = [stored, fresh] if stored_first else [fresh, stored]
    with pytest.raises(DuplicateEventError):
        await store.append("s", batch)
    assert await store.get_event(fresh.event_id) is None
    assert await store.last_position() == 1


async def test_duplicate_id_within_one_append_is_invalid(store: EventStore) -> None:
    event = new()
    with pytest.raises(InvalidEventError):
        await store.append("s", [event, new(), event])
    assert await store.last_position() == 0
    assert await store.get_event(event.event_id) is None


# -- malformed appends -----------------------------------------------------------------


def _bad(data: object = None, metadata: object = None, event_type: str = "T") -> NewEvent:
    return NewEvent(
        event_type,
        cast(Any, {"ok": 1} if data is None else data),
        cast(Any, {} if metadata is None else metadata),
    )


INVALID_APPENDS: dict[str, tuple[str, list[NewEvent]]] = {
    "no-events": ("s", []),
    "empty-type": ("s", [new("")]),
    "empty-type-among-valid": ("s", [new(), new(""), new()]),
    "set-in-data": ("s", [_bad(data={"tags": {1, 2}})]),
    "object-in-data": ("s", [_bad(data={"thing": object()})]),
    "set-as-data": ("s", [_bad(data={1, 2})]),
    "list-as-data": ("s", [_bad(data=["not", "an", "object"])]),
    "int-key-in-data": ("s", [_bad(data={1: "one"})]),
    "int-beyond-64-bits": ("s", [_bad(data={"n": 2**64})]),
    "lone-surrogate-in-data": ("s", [_bad(data={"s": "\ud800"})]),
    "object-in-metadata": ("s", [_bad(metadata={"thing": object()})]),
    "list-as-metadata": ("s", [_bad(metadata=["x"])]),
    "lone-surrogate-in-type": ("s", [_bad(event_type="Bad\udcff")]),
    "lone-surrogate-in-stream": ("bad-\ud800", [new()]),
}


@pytest.mark.parametrize(("stream", "events"), INVALID_APPENDS.values(), ids=INVALID_APPENDS)
async def test_malformed_append_is_invalid_and_writes_nothing(
    store: EventStore, stream: str, events: list[NewEvent]
) -> None:
    await store.append("before", [new()])
    with pytest.raises(InvalidEventError):
        await store.append(stream, events)
    assert await store.last_position() == 1
    assert await store.stream_version("s") == 0
    for event in events:
        assert await store.get_event(event.event_id) is None
    # the store is still fine
    result = await store.append("after", [new()])
    assert result.first_position == 2


@pytest.mark.parametrize(("stream", "events"), INVALID_APPENDS.values(), ids=INVALID_APPENDS)
async def test_malformed_append_does_not_fail_concurrent_appends(
    store: EventStore, stream: str, events: list[NewEvent]
) -> None:
    good = [store.append(f"good-{i}", [new()]) for i in range(10)]
    outcomes = await asyncio.gather(
        *good[:5], store.append(stream, events), *good[5:], return_exceptions=True
    )
    bystanders = [o for i, o in enumerate(outcomes) if i != 5]
    failed = [o for o in bystanders if not isinstance(o, AppendResult)]
    assert not failed, f"{len(failed)} valid appends failed with the invalid one: {failed[0]!r}"
    assert isinstance(outcomes[5], InvalidEventError), outcomes[5]
    successes = cast(list[AppendResult], bystanders)
    assert sorted(o.first_position for o in successes) == list(range(1, 11))
    assert_gap_free(await store.read_all())


# -- reading ---------------------------------------------------------------------------


async def test_get_event(store: EventStore) -> None:
    await fill(store, [("a", 3), ("b", 2)])
    for event in await store.read_all():
        assert await store.get_event(event.event_id) == event
    assert await store.get_event(uuid.uuid4()) is None


async def test_read_stream_from_version_and_limit(store: EventStore) -> None:
    for i in range(10):  # interleave two streams
        await store.append("s", [new(i=i)])
        await store.append("noise", [new(i=i)])
    everything = await store.read_stream("s")
    assert [e.version for e in everything] == list(range(1, 11))
    assert [e.data["i"] for e in everything] == list(range(10))

    assert [e.version for e in await store.read_stream("s", from_version=4)] == list(range(4, 11))
    assert [e.version for e in await store.read_stream("s", 4, limit=3)] == [4, 5, 6]
    assert [e.version for e in await store.read_stream("s", limit=2)] == [1, 2]
    assert [e.version for e in await store.read_stream("s", 9, limit=5)] == [9, 10]
    assert await store.read_stream("s", from_version=11) == []
    assert await store.read_stream("missing") == []
    assert await store.read_stream("s", 4, limit=3) == everything[3:6]


async def test_stream_version(store: EventStore) -> None:
    assert await store.stream_version("s") == 0
    await store.append("s", [new(), new()])
    await store.append("t", [new()])
    await store.append("s", [new()])
    assert await store.stream_version("s") == 3
    assert await store.stream_version("t") == 1
    assert await store.stream_version("u") == 0


async def test_read_all_after_and_limit(store: EventStore) -> None:
    await fill(store, [("a", 4), ("b", 3), ("a", 3)])
    everything = await store.read_all()
    assert [e.position for e in everything] == list(range(1, 11))
    assert await store.read_all(0, 5) == everything[:5]
    assert await store.read_all(5, 3) == everything[5:8]
    assert await store.read_all(after=8) == everything[8:]
    assert await store.read_all(after=10) == []
    assert await store.read_all(after=99) == []


_LEAVABLE_SUBSETS = [
    set(subset)
    for size in range(1, 4)
    for subset in combinations(("stream", "metadata", "hash"), size)
]


@pytest.mark.parametrize("upcast", [False, True], ids=["plain", "upcast"])
@pytest.mark.parametrize("leave_out", _LEAVABLE_SUBSETS, ids="+".join)
async def test_read_all_leaves_out_the_fields_asked(
    store_factory: StoreFactory, leave_out: set[str], upcast: bool
) -> None:
    store = await store_factory(upcasters=_renamed_upcasters() if upcast else None)
    await store.append("a", [new(i=1), NewEvent("Paid", {"i": 2}, {"request": "x"})])
    await store.append("b", [NewEvent("Renamed", {"name": "Ada"}, {"r": "y"}, schema_version=1)])
    # The reference is read by streams (eventstore.reading.decode_rows), not by read_all,
    # whose decoders are generated (lean_reader).
    everything = [*await store.read_stream("a"), *await store.read_stream("b")]
    assert [e.position for e in everything] == [1, 2, 3]
    lean = await store.read_all(1, 5, leave_out=leave_out)
    assert [e.position for e in lean] == [2, 3]
    renamed = (3, {"full_name": "Ada", "locale": "en"}) if upcast else (1, {"name": "Ada"})
    assert (lean[1].schema_version, lean[1].data) == renamed
    for full, event in zip(everything[1:], lean, strict=True):
        assert event.stream == ("" if "stream" in leave_out else full.stream)
        assert event.metadata == ({} if "metadata" in leave_out else full.metadata)
        assert event.hash == (b"" if "hash" in leave_out else full.hash)
        fields = ("position", "version", "event_id", "type", "schema_version", "data")
        assert [getattr(event, f) for f in fields] == [getattr(full, f) for f in fields]
        assert (event.recorded_at, event.recorded_us) == (full.recorded_at, full.recorded_us)
        assert event != full
    assert await store.read_all(0, 5, leave_out=()) == everything
    with pytest.raises(ValueError, match="data"):
        await store.read_all(leave_out={"data"})


async def test_read_all_default_limit_is_1000(store: EventStore) -> None:
    await store.append("big", [new(i=i) for i in range(1003)])
    first = await store.read_all()
    assert [e.position for e in first] == list(range(1, 1001))
    assert [e.position for e in await store.read_all(after=1000)] == [1001, 1002, 1003]


async def test_read_at_returns_each_event_once_in_position_order(store: EventStore) -> None:
    await fill(store, [("a", 4), ("b", 3), ("a", 3)])
    everything = await store.read_all()
    at = {e.position: e for e in everything}

    assert await store.read_at([7, 2, 9, 4]) == [at[2], at[4], at[7], at[9]]
    assert await store.read_at((5, 5, 1, 5, 1)) == [at[1], at[5]]
    assert await store.read_at({10, 3}) == [at[3], at[10]]
    assert await store.read_at(range(1, 11)) == everything
    assert await store.read_at(range(10, 0, -1)) == everything
    assert await store.read_at([6]) == [at[6]]


async def test_read_at_leaves_out_positions_not_in_the_log(store: EventStore) -> None:
    await fill(store, [("a", 3), ("b", 2)])
    everything = await store.read_all()

    assert await store.read_at([0, -1, -(2**63), 6, 11, 2**63 - 1, 2**63, 2**80]) == []
    assert await store.read_at([0, 3, -3, 99, 1, 6]) == [everything[0], everything[2]]
    assert await store.read_at([]) == []
    assert await store.read_at(()) == []
    assert await store.read_at(set()) == []


async def test_read_at_on_an_empty_log(store: EventStore) -> None:
    assert await store.read_at([1, 2, 3]) == []
    assert await store.read_at([]) == []


async def test_read_at_reads_more_than_1000_positions_in_one_call(store: EventStore) -> None:
    for k in range(4):
        await store.append(f"s{k % 2}", [new(k=k, i=i) for i in range(300)])
    everything = await read_everything(store)
    assert len(everything) == 1200

    assert await store.read_at(list(range(1200, 0, -1))) == everything
    odd = [p for p in range(1, 1300) if p % 2] * 2  # 1,300 values, 600 in the log
    assert await store.read_at(odd) == everything[::2]


async def test_read_at_returns_upcast_events_as_read_all_does(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory(upcasters=_renamed_upcasters())
    await store.append("person", [NewEvent("Renamed", {"name": "Ada"}, schema_version=1)])
    await store.append("other", [new(), new()])
    everything = await store.read_all()
    assert everything[0].data == {"full_name": "Ada", "locale": "en"}
    assert await store.read_at([3, 1]) == [everything[0], everything[2]]


@pytest.mark.parametrize(
    "positions",
    [[1, "2"], [1.0], [True], [1, False], [None], "12", [uuid.uuid4()]],
    ids=["str", "float", "true", "false", "none", "a-string", "uuid"],
)
async def test_read_at_rejects_positions_that_are_not_ints(
    store: EventStore, positions: Any
) -> None:
    await store.append("s", [new(), new()])
    with pytest.raises(InvalidEventError):
        await store.read_at(positions)
    assert len(await store.read_at([1, 2])) == 2  # the store is still fine


async def test_iter_all_streams_batches(store: EventStore) -> None:
    await fill(store, [("a", 5), ("b", 5), ("c", 3)])
    everything = await store.read_all()

    batches = [batch async for batch in store.iter_all(batch_size=4)]
    assert [len(b) for b in batches] == [4, 4, 4, 1]
    assert [e for b in batches for e in b] == everything

    batches = [batch async for batch in store.iter_all(batch_size=13)]
    assert [len(b) for b in batches] == [13]

    batches = [batch async for batch in store.iter_all(after=3, batch_size=4, until=9)]
    assert [[e.position for e in b] for b in batches] == [[4, 5, 6, 7], [8, 9]]

    batches = [batch async for batch in store.iter_all(batch_size=5, until=10)]
    assert [[e.position for e in b] for b in batches] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]

    assert [b async for b in store.iter_all(after=13)] == []
    assert [b async for b in store.iter_all(until=0)] == []


async def test_last_position(store: EventStore) -> None:
    assert await store.last_position() == 0
    await store.append("s", [new(), new(), new()])
    assert await store.last_position() == 3
    await store.append("t", [new()])
    assert await store.last_position() == 4


# -- waiting for events ------------------------------------------------------------------


async def test_wait_for_events_returns_at_once_when_there_are_events(store: EventStore) -> None:
    await store.append("s", [new() for _ in range(5)])
    assert await asyncio.wait_for(store.wait_for_events(0), WAIT) == 5
    assert await asyncio.wait_for(store.wait_for_events(3), WAIT) == 5
    assert await asyncio.wait_for(store.wait_for_events(4, timeout=60), WAIT) == 5


async def test_wait_for_events_wakes_up_when_another_task_appends(store: EventStore) -> None:
    await store.append("s", [new()])
    waiter = asyncio.create_task(store.wait_for_events(1))
    other_waiter = asyncio.create_task(store.wait_for_events(1, timeout=3600))
    await let_others_run()
    assert not waiter.done()
    assert not other_waiter.done()

    await store.append("s", [new(), new()])

    assert await asyncio.wait_for(waiter, WAIT) == 3
    assert await asyncio.wait_for(other_waiter, WAIT) == 3


async def test_wait_for_events_wakes_up_on_an_empty_log(store: EventStore) -> None:
    waiter = asyncio.create_task(store.wait_for_events(0))
    await let_others_run()
    assert not waiter.done()
    append = asyncio.create_task(store.append("s", [new()]))
    assert await asyncio.wait_for(waiter, WAIT) == 1
    assert (await append).last_position == 1


async def test_wait_for_events_on_timeout_returns_the_current_position(store: EventStore) -> None:
    assert await asyncio.wait_for(store.wait_for_events(0, timeout=0.05), WAIT) == 0
    await store.append("s", [new(), new()])
    assert await asyncio.wait_for(store.wait_for_events(2, timeout=0.05), WAIT) == 2
    assert await asyncio.wait_for(store.wait_for_events(2, timeout=0), WAIT) == 2


# -- group commit ------------------------------------------------------------------------


async def test_200_concurrent_appends_all_succeed_gap_free(store: EventStore) -> None:
    events = [new(n=i) for i in range(200)]
    results = await asyncio.gather(
        *(store.append(f"stream-{i}", [event], NO_STREAM) for i, event in enumerate(events))
    )
    assert sorted(r.first_position for r in results) == list(range(1, 201))
    assert all(r.first_position == r.last_position for r in results)
    assert all(r.stream_version == 1 and not r.duplicate for r in results)

    stored = await read_everything(store)
    assert_gap_free(stored)
    for i, (event, result) in enumerate(zip(events, results, strict=True)):
        at = stored[result.first_position - 1]
        assert (at.event_id, at.stream, at.data) == (event.event_id, f"stream-{i}", {"n": i})
    assert (await store.verify()).ok


async def test_concurrent_multi_event_appends_stay_contiguous(store: EventStore) -> None:
    batches = [[new(k=k, i=i) for i in range(1 + k % 4)] for k in range(60)]
    results = await asyncio.gather(
        *(store.append(f"s{k % 7}", batch) for k, batch in enumerate(batches))
    )
    stored = await read_everything(store)
    assert_gap_free(stored)
    for batch, result in zip(batches, results, strict=True):
        assert result.last_position - result.first_position + 1 == len(batch)
        landed = stored[result.first_position - 1 : result.last_position]
        assert [e.event_id for e in landed] == [e.event_id for e in batch]
        assert landed[-1].version == result.stream_version


async def test_each_append_gets_consecutive_positions_among_concurrent_appends(
    store: EventStore,
) -> None:
    batches = [[new(task=t, i=i) for i in range(3 + t % 3)] for t in range(50)]
    results = await asyncio.gather(
        *(store.append(f"own-{t}", batch, NO_STREAM) for t, batch in enumerate(batches))
    )
    stored = await read_everything(store)
    assert_gap_free(stored)
    assert len(stored) == sum(len(batch) for batch in batches)
    for t, (batch, result) in enumerate(zip(batches, results, strict=True)):
        assert result.last_position - result.first_position + 1 == len(batch)
        assert result.stream_version == len(batch)
        landed = stored[result.first_position - 1 : result.last_position]
        assert [e.event_id for e in landed] == [e.event_id for e in batch]
        assert all(e.stream == f"own-{t}" for e in landed)
        assert [e.version for e in landed] == list(range(1, len(batch) + 1))
        positions = range(result.first_position, result.last_position + 1)
        assert await store.read_at(positions) == landed


async def test_one_callers_conflict_does_not_fail_the_others(store: EventStore) -> None:
    await store.append("hot", [new()])
    taken = new("Taken")
    await store.append("taken", [taken])

    calls: list[Awaitable[AppendResult]] = [
        store.append(f"cold-{i}", [new(), new()], NO_STREAM) for i in range(20)
    ]
    calls.insert(3, store.append("hot", [new()], 0))  # stale: ConcurrencyError
    calls.insert(10, store.append("taken", [dataclasses.replace(taken, data={"x": 1})]))
    calls.insert(15, store.append("taken", [taken]))  # a retry: duplicate=True
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(outcomes[3], ConcurrencyError)
    assert isinstance(outcomes[10], DuplicateEventError)
    retry = outcomes[15]
    assert isinstance(retry, AppendResult)
    assert retry.duplicate
    assert retry.first_position == 2
    rest = [o for i, o in enumerate(outcomes) if i not in (3, 10, 15)]
    assert all(isinstance(o, AppendResult) and not o.duplicate for o in rest), rest
    assert await store.last_position() == 2 + 40
    assert_gap_free(await read_everything(store))
    assert await store.stream_version("hot") == 1


async def test_same_stream_same_expected_version_concurrently_one_wins(store: EventStore) -> None:
    await store.append("s", [new()])
    outcomes = await asyncio.gather(
        *(store.append("s", [new(i=i)], 1) for i in range(10)), return_exceptions=True
    )
    winners = [o for o in outcomes if isinstance(o, AppendResult)]
    losers = [o for o in outcomes if isinstance(o, ConcurrencyError)]
    assert len(winners) == 1
    assert len(losers) == 9
    assert all(loser.actual == 2 for loser in losers)
    assert await store.stream_version("s") == 2
    assert await store.last_position() == 2


async def test_concurrent_retries_of_the_same_append_write_it_once(store: EventStore) -> None:
    events = [new(), new()]
    outcomes = await asyncio.gather(*(store.append("s", events, NO_STREAM) for _ in range(5)))
    assert sorted(o.duplicate for o in outcomes) == [False, True, True, True, True]
    assert {(o.first_position, o.last_position, o.stream_version) for o in outcomes} == {(1, 2, 2)}
    assert await store.last_position() == 2


# -- durability across close/reopen ------------------------------------------------------


async def test_data_survives_close_and_reopen(
    store: EventStore, store_factory: StoreFactory
) -> None:
    await fill(store, [("a", 3), ("b", 2), ("a", 1)])
    before = await store.read_all()
    report = await store.verify()
    await store.close()

    reopened = await store_factory()
    assert await reopened.read_all() == before
    assert await reopened.last_position() == 6
    assert await reopened.stream_version("a") == 4
    assert (await reopened.verify()) == report
    result = await reopened.append("a", [new()], 4)
    assert result == AppendResult("a", 7, 7, 5)
    assert_chain(await reopened.read_all())
    assert (await reopened.verify()).ok


async def test_async_with_closes_the_store(store_factory: StoreFactory) -> None:
    async with await store_factory() as store:
        await store.append("s", [new()])
    with pytest.raises(StoreClosedError):
        await store.last_position()
    async with await store_factory() as reopened:
        assert await reopened.last_position() == 1


# -- verify ------------------------------------------------------------------------------


async def test_verify_an_empty_log(store: EventStore) -> None:
    report = await store.verify()
    assert report.ok
    assert report.finding is None
    assert report.checked == 0
    assert report.head_position == 0
    assert report.head_hash == GENESIS


async def test_verify_a_filled_log(store: EventStore) -> None:
    await fill(store, [(f"s{i % 4}", 1 + i % 3) for i in range(30)])
    events = await store.read_all()
    report = await store.verify()
    assert report.ok
    assert report.checked == len(events) == await store.last_position()
    assert report.head_position == events[-1].position
    assert report.head_hash == events[-1].hash


async def test_verify_with_anchors(store: EventStore) -> None:
    await fill(store, [("a", 5), ("b", 5)])
    early = await store.verify()
    await fill(store, [("c", 5)])
    late = await store.verify()
    assert late.head_position == 15

    assert (await store.verify(anchor=(early.head_position, early.head_hash))).ok
    assert (await store.verify(anchor=(late.head_position, late.head_hash))).ok

    wrong = await store.verify(anchor=(early.head_position, bytes(32)))
    assert not wrong.ok
    assert wrong.finding is not None
    assert wrong.finding.kind is TamperKind.ANCHOR_MISMATCH
    assert wrong.finding.position == early.head_position

    beyond = await store.verify(anchor=(99, late.head_hash))
    assert beyond.finding is not None
    assert beyond.finding.kind is TamperKind.ANCHOR_MISMATCH


# -- upcasting ---------------------------------------------------------------------------


def _renamed_upcasters() -> Upcasters:
    upcasters = Upcasters()
    # v1 {"name": ...} -> v2 {"full_name": ...} -> v3 {"full_name": ..., "locale": "en"}
    upcasters.register("Renamed", 1, lambda d: {"full_name": d["name"]})
    upcasters.register("Renamed", 2, lambda d: {**d, "locale": "en"})
    return upcasters


async def test_upcasting_on_read(store_factory: StoreFactory) -> None:
    store = await store_factory(upcasters=_renamed_upcasters())
    old = NewEvent("Renamed", {"name": "Ada"}, schema_version=1)
    middle = NewEvent("Renamed", {"full_name": "Grace"}, schema_version=2)
    current = NewEvent("Renamed", {"full_name": "Edsger", "locale": "nl"}, schema_version=3)
    unrelated = NewEvent("Other", {"name": "Alan"}, schema_version=1)
    await store.append("person", [old, middle, current, unrelated])

    events = await store.read_stream("person")
    assert [(e.schema_version, e.data) for e in events] == [
        (3, {"full_name": "Ada", "locale": "en"}),
        (3, {"full_name": "Grace", "locale": "en"}),
        (3, {"full_name": "Edsger", "locale": "nl"}),
        (1, {"name": "Alan"}),
    ]
    assert await store.read_all() == events
    assert await read_everything(store) == events
    assert await store.get_event(old.event_id) == events[0]

    # stored events are not rewritten: the chain still holds
    report = await store.verify()
    assert report.ok
    assert report.checked == 4

    # a retry of the original (v1) append is still a retry, not a conflict
    retried = await store.append("person", [old, middle, current, unrelated])
    assert retried.duplicate

    # without upcasters the stored versions come back
    await store.close()
    plain = await store_factory()
    raw = await plain.read_stream("person")
    assert [(e.schema_version, e.data) for e in raw] == [
        (1, {"name": "Ada"}),
        (2, {"full_name": "Grace"}),
        (3, {"full_name": "Edsger", "locale": "nl"}),
        (1, {"name": "Alan"}),
    ]
    assert [e.hash for e in raw] == [e.hash for e in events]
    assert_chain(raw)


# -- closing -----------------------------------------------------------------------------


async def _iterate(store: EventStore) -> object:
    return [batch async for batch in store.iter_all()]


CALLS_AFTER_CLOSE: dict[str, Callable[[EventStore], Awaitable[object]]] = {
    "append": lambda s: s.append("s", [new()]),
    "read_stream": lambda s: s.read_stream("s"),
    "stream_version": lambda s: s.stream_version("s"),
    "read_all": lambda s: s.read_all(),
    "iter_all": _iterate,
    "get_event": lambda s: s.get_event(uuid.uuid4()),
    "read_at": lambda s: s.read_at([1]),
    "read_at-empty": lambda s: s.read_at([]),
    "last_position": lambda s: s.last_position(),
    "wait_for_events": lambda s: s.wait_for_events(0, timeout=0.01),
    "verify": lambda s: s.verify(),
}


@pytest.mark.parametrize("call", CALLS_AFTER_CLOSE.values(), ids=CALLS_AFTER_CLOSE)
async def test_use_after_close_raises(
    store: EventStore, call: Callable[[EventStore], Awaitable[object]]
) -> None:
    await store.append("s", [new()])
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreClosedError):
        await call(store)


async def test_close_finishes_pending_appends(
    store: EventStore, store_factory: StoreFactory
) -> None:
    appends = [asyncio.create_task(store.append(f"s{i}", [new()])) for i in range(50)]
    await asyncio.sleep(0)  # every append task starts and is now pending
    await store.close()
    results = await asyncio.wait_for(asyncio.gather(*appends), WAIT)
    assert sorted(r.first_position for r in results) == list(range(1, 51))

    reopened = await store_factory()
    assert await reopened.last_position() == 50
    assert (await reopened.verify()).ok


async def test_close_does_not_leave_waiters_hanging(store: EventStore) -> None:
    waiter = asyncio.create_task(store.wait_for_events(0))
    await let_others_run()
    await store.close()
    try:
        outcome: object = await asyncio.wait_for(waiter, WAIT)
    except EventStoreError as exc:
        outcome = exc
    assert isinstance(outcome, StoreClosedError | int)
