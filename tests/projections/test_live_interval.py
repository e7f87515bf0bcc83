"""``live_interval``: following a busy log (transactions of ``BUSY_BATCH`` events or
more), a runner applies at most that often (what the log gains meanwhile goes in one
transaction), unless a reader waits for it (an urgent ``wait_until``, ``hurry``). Both
projection databases, as in test_runner.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventstore.sqlite import SQLiteEventStore
from projections.runner import BUSY_BATCH, ProjectionRunner
from tests.projections.conftest import RunnerFactory
from tests.projections.helpers import Recording, event, recorded, stored_checkpoints

PAUSE = 3600.0
"""Longer than any test: whatever is applied here was not applied because a pause ended."""
WAIT = 20.0
STILL = 0.3
"""How long a test watches that the runner, pausing, applies nothing."""


async def _append(store: SQLiteEventStore, count: int) -> int:
    result = await store.append("s", [event("Happened", i=i) for i in range(count)])
    return result.last_position


@contextlib.asynccontextmanager
async def _following(runner: ProjectionRunner) -> AsyncIterator[asyncio.Task[None]]:
    """``runner.run()`` in a task, once it has caught up with the (empty) log; stopped
    and waited for on leaving."""
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.wait_until(0), WAIT)
    try:
        yield task
    finally:
        runner.stop()
        await asyncio.wait_for(task, WAIT)


async def _paused(store: SQLiteEventStore, runner: ProjectionRunner) -> int:
    """Make ``runner`` pause: a busy transaction (``BUSY_BATCH`` events, applied at once
    after a quiet moment, the runner's last transaction not after a pause), waited for
    without urgency (an urgent wait for it would not end a pause, but would cut one short
    while it waited). The runner is in its pause before this returns. Returns the
    position reached."""
    last = await _append(store, BUSY_BATCH)
    await asyncio.wait_for(runner.wait_until(last, urgent=False), WAIT)
    return last


async def _not_applied(runner: ProjectionRunner, position: int) -> bool:
    """Whether ``runner`` (pausing) has still not applied ``position`` after a while."""
    waiting = asyncio.create_task(runner.wait_until(position, urgent=False))
    done, _ = await asyncio.wait({waiting}, timeout=STILL)
    waiting.cancel()
    return not done


async def test_events_gather_during_the_pause_into_one_transaction(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    projection = Recording()
    runner = make_runner([projection], live_interval=PAUSE)
    async with _following(runner):
        first = await _paused(store, runner)
        second = await _append(store, 2)
        third = await _append(store, 3)
        assert await _not_applied(runner, third)  # pausing, though the log grew twice
        assert runner.position == first
        gathered = asyncio.create_task(runner.wait_until(third, urgent=False))
        runner.hurry()
        await asyncio.wait_for(gathered, WAIT)
        assert projection.calls[-1] == list(range(first + 1, third + 1))  # one transaction
        assert second < third
        assert [row[0] for row in await recorded(runner)] == list(range(1, third + 1))


async def test_an_urgent_wait_applies_without_waiting_for_the_pause(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    runner = make_runner([Recording()], live_interval=PAUSE)
    async with _following(runner):
        for _ in range(3):
            await _paused(store, runner)
            last = await _append(store, 2)
            await asyncio.wait_for(runner.wait_until(last), WAIT)
            assert runner.lag == 0


async def test_no_pause_while_an_urgent_reader_waits_for_more(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    """A reader waiting urgently for a position the log has not reached yet: the busy
    transactions on the way there are not followed by a pause."""
    runner = make_runner([Recording()], live_interval=PAUSE)
    async with _following(runner):
        first = await _paused(store, runner)
        waiting = asyncio.create_task(runner.wait_until(first + 3 * BUSY_BATCH))
        await asyncio.sleep(0)  # it starts: the pause ends
        for _ in range(2):  # after a pause, then busy: each applied in a transaction of its own
            middle = await _append(store, BUSY_BATCH)
            await asyncio.wait_for(runner.wait_until(middle, urgent=False), WAIT)
        await _append(store, BUSY_BATCH)
        await asyncio.wait_for(waiting, WAIT)


async def test_a_quiet_log_after_a_busy_moment_is_applied_as_it_comes_again(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    """What gathered during a pause, however much, does not make the runner pause again:
    else a log of a few events per second would stay in pauses for good after one burst."""
    runner = make_runner([Recording()], live_interval=PAUSE)
    async with _following(runner):
        await _paused(store, runner)
        gathered = await _append(store, BUSY_BATCH)
        runner.hurry()  # as if the pause had ended
        await asyncio.wait_for(runner.wait_until(gathered, urgent=False), WAIT)
        for _ in range(3):
            last = await _append(store, 1)
            await asyncio.wait_for(runner.wait_until(last, urgent=False), WAIT)


async def test_urgent_waits_served_or_given_up_leave_the_pause_alone(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    """A reader who is served, or gives up, no longer keeps the runner from pausing."""
    runner = make_runner([Recording()], live_interval=PAUSE)
    async with _following(runner):
        first = await _paused(store, runner)
        never = asyncio.create_task(runner.wait_until(first + 1_000))  # beyond the log
        await asyncio.sleep(0)
        never.cancel()
        with pytest.raises(asyncio.CancelledError):
            await never
        served = await _append(store, 1)
        await asyncio.wait_for(runner.wait_until(served), WAIT)  # urgent, and served
        await _paused(store, runner)
        assert await _not_applied(runner, await _append(store, 2))  # it pauses again


async def test_stopping_during_the_pause_applies_what_gathered(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    runner = make_runner([Recording()], live_interval=PAUSE)
    async with _following(runner) as task:
        await _paused(store, runner)
        last = await _append(store, 4)
        runner.stop()
        await asyncio.wait_for(task, WAIT)
    assert await stored_checkpoints(runner) == {"recording": last}


async def test_a_quiet_log_is_applied_as_it_comes_despite_the_interval(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    projection = Recording()
    runner = make_runner([projection], live_interval=PAUSE)
    async with _following(runner):
        for _ in range(3):
            last = await _append(store, BUSY_BATCH - 1)
            await asyncio.wait_for(runner.wait_until(last, urgent=False), WAIT)
    size = BUSY_BATCH - 1
    assert projection.calls == [list(range(n * size + 1, (n + 1) * size + 1)) for n in range(3)]


async def test_no_interval_applies_each_append_as_it_comes(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    projection = Recording()
    runner = make_runner([projection])
    async with _following(runner):
        for _ in range(3):
            last = await _append(store, 2)
            await asyncio.wait_for(runner.wait_until(last, urgent=False), WAIT)
        assert projection.calls[-3:] == [[1, 2], [3, 4], [5, 6]]


async def test_a_follower_tells_whoever_applies_when_a_reader_waits(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    """``serve`` with its projections in a child: the follower's ``on_behind`` is how an
    urgent read reaches the runner that applies (there, a ``!`` line to the child)."""
    path = tmp_path / "projections.db"
    leader = ProjectionRunner(store, [Recording()], path=path, live_interval=PAUSE)
    follower = ProjectionRunner(store, [Recording()], path=path, follow_only=True)
    told: list[int] = []

    def behind() -> None:
        told.append(follower.position)
        leader.hurry()

    follower.on_behind = behind
    try:
        async with _following(leader):
            following = asyncio.create_task(follower.run())
            first = await _paused(store, leader)
            follower.database.note_change()  # what the child's report does
            await asyncio.wait_for(follower.wait_until(first, urgent=False), WAIT)
            assert told == []  # not urgent: nobody was told

            last = await _append(store, 2)
            waiting = asyncio.create_task(follower.wait_until(last))
            await asyncio.wait_for(leader.wait_until(last, urgent=False), WAIT)
            follower.database.note_change()
            await asyncio.wait_for(waiting, WAIT)
            assert told == [first]
            await follower.wait_until(last)  # already there: nobody is told
            assert told == [first]
    finally:
        await follower.close()
        await leader.close()
    await following


def test_a_negative_interval_is_refused(store: SQLiteEventStore) -> None:
    with pytest.raises(ValueError, match="live_interval"):
        ProjectionRunner(store, [Recording()], path="p.db", live_interval=-1)
