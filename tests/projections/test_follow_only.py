"""A ``follow_only`` runner (``serve`` whose projections run in a child process): it never
applies, and follows the checkpoints another runner commits, woken by that runner's word
(``note_change``) on SQLite, by NOTIFY on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import projections.database as database_module
from eventstore.sqlite import SQLiteEventStore
from projections.runner import ProjectionRunner
from tests.projections.helpers import Recording, event

WAIT = 20.0


async def _append(store: SQLiteEventStore, count: int) -> int:
    last = 0
    for i in range(count):
        last = (await store.append(f"s-{i % 3}", [event("Happened", i=i)])).last_position
    return last


async def test_a_follow_only_runner_follows_another_runners_commits_when_told(
    store: SQLiteEventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No periodic re-read within the test: only the word can wake the follower.
    monkeypatch.setattr(database_module, "_FOLLOW_REREAD", 3600.0)
    path = tmp_path / "projections.db"
    applying, watching = Recording(), Recording()
    leader = ProjectionRunner(store, [applying], path=path)
    follower = ProjectionRunner(store, [watching], path=path, follow_only=True)
    following = asyncio.create_task(follower.run())
    try:
        for round_ in range(3):
            last = await _append(store, 5)
            assert await leader.catch_up() == last
            follower.database.note_change()
            await asyncio.wait_for(follower.wait_until(last), WAIT)
            assert follower.position == last == 5 * (round_ + 1)
            assert follower.lag == 0
        assert not follower.is_leader
        assert watching.calls == []  # it applied nothing, ever
        assert [p for call in applying.calls for p in call] == list(range(1, 16))
    finally:
        await follower.close()
        await leader.close()
    assert following.done()
    await following


async def test_note_change_wakes_a_waiting_follower_and_counts(tmp_path: Path) -> None:
    database = database_module.SQLiteProjectionDatabase(tmp_path / "p.db")
    seen = database.changes
    waiting = asyncio.create_task(database.wait_for_change(seen))
    await asyncio.sleep(0)
    assert not waiting.done()
    database.note_change()
    await asyncio.wait_for(waiting, WAIT)
    assert database.changes == seen + 1
    # A word that came before the wait is not missed.
    database.note_change()
    await asyncio.wait_for(database.wait_for_change(seen + 1), WAIT)
