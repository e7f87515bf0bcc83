"""LogView: the log as the CLI's runners see it, cut at ``until``."""

from __future__ import annotations

from pathlib import Path

from eventstore.base import NewEvent
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
