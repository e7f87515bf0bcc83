"""LogView: the log as the CLI's runners see it, cut at ``until``."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from eventstore.base import EventStore, NewEvent, RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from postback.cli_progress import LogView


async def test_every_read_is_cut_at_until(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "log.db", poll_interval=None)
    try:
        await store.append("s", [NewEvent("E", {"n": n}) for n in range(5)])
        view = LogView(store, until=3)
        assert await view.last_position() == 3
        assert [e.position for e in await view.read_all(0, 10)] == [1, 2, 3]
        assert [e.position for e in await view.read_at([5, 1, 3, 4])] == [1, 3]
        uncut = LogView(store)
        assert [e.position for e in await uncut.read_at([5, 1])] == [1, 5]
    finally:
        await store.close()


class GappedLog:
    """A log whose positions have gaps (as PostgreSQL's may): reads return what is there."""

    def __init__(self, positions: list[int]) -> None:
        self.events = [recorded(position) for position in positions]

    async def read_all(
        self, after: int = 0, limit: int = 1000, *, leave_out: Collection[str] = ()
    ) -> list[RecordedEvent]:
        return [e for e in self.events if e.position > after][:limit]


def recorded(position: int) -> RecordedEvent:
    return RecordedEvent(position, "s", position, uuid.uuid4(), "E", 1, {}, {}, NOW, b"")


NOW = datetime(2026, 11, 25, tzinfo=UTC)


async def test_a_read_past_a_gap_is_cut_at_until_too() -> None:
    view = LogView(cast(EventStore, GappedLog([2, 4, 7, 8])), until=5)
    assert [e.position for e in await view.read_all(0, 10)] == [2, 4]
    assert [e.position for e in await view.read_all(4, 10)] == []
