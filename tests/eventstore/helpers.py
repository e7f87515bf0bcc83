"""Helpers shared by the event store tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from eventstore.base import EventStore, NewEvent, RecordedEvent, Upcasters
from eventstore.chain import GENESIS, encode_json, event_hash

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoreFactory(Protocol):
    """Opens a store on the test's log; every call reopens the same log."""

    async def __call__(self, *, upcasters: Upcasters | None = None) -> EventStore: ...


def new(event_type: str = "Happened", /, **data: Any) -> NewEvent:
    """A new event with a fresh id: ``new("Paid", amount=3)``."""
    return NewEvent(event_type, data)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (as a backend stores ``recorded_at``)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def chained_hash(previous: bytes, event: RecordedEvent) -> bytes:
    """The hash ``event`` must have after ``previous`` (by :mod:`eventstore.chain`)."""
    return event_hash(
        previous,
        event.position,
        event.stream.encode(),
        event.version,
        event.event_id.bytes,
        event.type.encode(),
        event.schema_version,
        encode_json(event.data),
        encode_json(event.metadata),
        micros(event.recorded_at),
    )


def assert_chain(events: list[RecordedEvent]) -> None:
    """``events`` (the whole log, in order) hash-chain from GENESIS."""
    previous = GENESIS
    for event in events:
        assert event.hash == chained_hash(previous, event), f"position {event.position}"
        previous = event.hash


async def read_everything(store: EventStore, batch_size: int = 500) -> list[RecordedEvent]:
    return [event async for batch in store.iter_all(batch_size=batch_size) for event in batch]


def assert_gap_free(events: list[RecordedEvent]) -> None:
    """Positions 1..n in order, versions 1..k per stream in position order."""
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    versions: dict[str, int] = {}
    for event in events:
        versions[event.stream] = versions.get(event.stream, 0) + 1
        assert event.version == versions[event.stream], f"position {event.position}"


async def let_others_run(rounds: int = 5) -> None:
    """Yield to the event loop a few times (to let another task reach its await)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
