"""One active runner on PostgreSQL: several runners (instances) share one schema; one leads
and applies, the others follow the shared checkpoints and take over when it dies."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from eventstore.base import NewEvent, RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from projections.database import SqlConnection
from projections.goal_stats import GoalStatsProjection
from projections.pg_database import PostgresProjectionDatabase
from projections.postback_log import PostbackLogProjection
from projections.profiles import ProfilesProjection
from projections.runner import Projection, ProjectionRunner
from projections.subscribers import SubscribersProjection
from projections.verify import compare_databases, format_report
from tests.projections.backends import Scope
from tests.projections.conftest import RunnerFactory
from tests.projections.helpers import Boom, Recording, recorded
from tests.projections.test_subscribers import random_log

pytestmark = pytest.mark.parametrize("projection_db", ["postgres"], indirect=True)

WAIT = 20.0
"""Seconds any one condition may take (a missed wake-up fails here, not at the suite's limit)."""


def catalog(recording: Recording | None = None) -> list[Projection]:
    return [
        PostbackLogProjection(),
        GoalStatsProjection(),
        SubscribersProjection(),
        ProfilesProjection(),
        recording or Recording(),
    ]


async def append_log(store: SQLiteEventStore, seed: int, size: int) -> int:
    last = 0
    for stream, events in random_log_with_fresh_ids(seed, size):
        last = (await store.append(stream, events)).last_position
    return last


def random_log_with_fresh_ids(seed: int, size: int) -> list[tuple[str, list[NewEvent]]]:
    """test_subscribers' random log, each event with a new id (several logs are appended)."""
    return [
        (stream, [NewEvent(e.type, e.data, e.metadata) for e in events])
        for stream, events in random_log(random.Random(seed), size)
    ]


async def assert_equals_a_fresh_replay(
    store: SQLiteEventStore, make_runner: RunnerFactory, runner: ProjectionRunner
) -> None:
    fresh = make_runner(catalog(), place="fresh")
    await fresh.catch_up()
    diffs = await compare_databases(runner.database, fresh.database, catalog())
    assert all(diff.ok for diff in diffs), "\n".join(format_report(diffs))


def leader_of(*runners: ProjectionRunner) -> ProjectionRunner:
    (leader,) = [runner for runner in runners if runner.is_leader]
    return leader


async def test_two_runners_one_leader_and_the_rows_of_one_replay(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_log(store, 1, 40)
    first, second = Recording(), Recording()
    a = make_runner(catalog(first), batch_size=7)
    b = make_runner(catalog(second), batch_size=7)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    last = 0
    for seed in range(2, 6):  # appends while both run
        last = await append_log(store, seed, 15)
    async with asyncio.timeout(WAIT):
        await a.wait_until(last)
        await b.wait_until(last)  # the follower follows
    leader = leader_of(a, b)
    follower = b if leader is a else a
    assert not follower.is_leader
    assert (second if leader is a else first).calls == []  # a follower never applies
    assert [row[0] for row in await recorded(a)] == list(range(1, last + 1))
    await assert_equals_a_fresh_replay(store, make_runner, a)
    for runner in (a, b):
        runner.stop()
    await asyncio.gather(*tasks)


class Blocking(Recording):
    """Stops in the middle of the batch holding ``at`` (rows before it inserted, not
    committed) until released; says when it got there."""

    def __init__(self, at: int, reached: asyncio.Future[None]) -> None:
        super().__init__()
        self.at = at
        self.reached = reached
        self.release = threading.Event()
        self._loop = asyncio.get_running_loop()

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        head = [event for event in events if event.position < self.at]
        super().apply_batch(conn, head)
        if len(head) < len(events):
            self._loop.call_soon_threadsafe(self._arrived)
            self.release.wait(WAIT)
            super().apply_batch(conn, events[len(head) :])  # the session is gone by now

    def _arrived(self) -> None:
        if not self.reached.done():
            self.reached.set_result(None)


async def test_the_leader_dies_mid_batch_and_a_follower_takes_over(
    store: SQLiteEventStore, make_runner: RunnerFactory, projection_db: Scope
) -> None:
    for _ in range(4):
        await store.append("s", [NewEvent("Happened", {"i": i}) for i in range(5)])
    blocking = Blocking(at=13, reached=asyncio.get_running_loop().create_future())
    a = make_runner([blocking], batch_size=5)
    follower = Recording()
    b = make_runner([follower], batch_size=5)
    await b.open()  # (opening takes the writers' lock: it would wait for the blocked batch)
    a_task = asyncio.create_task(a.run())
    async with asyncio.timeout(WAIT):
        await blocking.reached  # committed up to 10; 11, 12 inserted in its open transaction
    assert a.is_leader
    assert a.checkpoints == {"recording": 10}

    b_task = asyncio.create_task(b.run())
    async with asyncio.timeout(WAIT):
        await b.wait_until(10)
    assert not b.is_leader

    # the leader's instance dies: its session ends, PostgreSQL rolls its batch back
    database = a.database
    assert isinstance(database, PostgresProjectionDatabase)
    killed = database.backend_pid
    assert killed is not None
    projection_db.connect("live").execute("SELECT pg_terminate_backend(?)", (killed,))
    async with asyncio.timeout(WAIT):
        await b.wait_until(20)
    assert b.is_leader
    assert not a.is_leader
    assert follower.calls == [[11, 12, 13, 14, 15], [16, 17, 18, 19, 20]]  # from the commit

    blocking.release.set()  # its next statement fails: a becomes a follower
    async with asyncio.timeout(WAIT):
        await a.wait_until(20)
    assert not a.is_leader
    assert b.is_leader
    assert [row[0] for row in await recorded(a)] == list(range(1, 21))
    replay = make_runner([Recording()], place="fresh")
    await replay.catch_up()
    assert await recorded(b) == await recorded(replay)
    for runner in (a, b):
        runner.stop()
    await asyncio.gather(a_task, b_task)


async def test_a_follower_waits_for_the_leaders_notification(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    a = make_runner([Recording()])
    a_task = asyncio.create_task(a.run())
    first = await store.append("s", [NewEvent("Happened", {})])
    async with asyncio.timeout(WAIT):
        await a.wait_until(first.last_position)  # applied: a leads
    # b neither polls nor retries the lock within the test: only a NOTIFY can wake it
    b = make_runner([Recording()], poll_interval=600, lock_retry_interval=600)
    b_task = asyncio.create_task(b.run())
    async with asyncio.timeout(WAIT):
        await b.wait_until(first.last_position)  # its first read
        for n in range(3):
            result = await store.append("s", [NewEvent("Happened", {"n": n})])
            await b.wait_until(result.last_position)
    assert a.is_leader
    assert not b.is_leader
    assert b.lag == 0
    for runner in (a, b):
        runner.stop()
    await asyncio.gather(a_task, b_task)


async def test_a_leader_that_closes_hands_over(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    a = make_runner([Recording()])
    a_task = asyncio.create_task(a.run())
    first = await store.append("s", [NewEvent("Happened", {})])
    async with asyncio.timeout(WAIT):
        await a.wait_until(first.last_position)
    b = make_runner([Recording()])
    b_task = asyncio.create_task(b.run())
    async with asyncio.timeout(WAIT):
        await b.wait_until(first.last_position)
    assert not b.is_leader
    await a.close()  # a graceful stop: the session ends, the lock with it
    await a_task
    last = await store.append("s", [NewEvent("Happened", {})])
    async with asyncio.timeout(WAIT):
        await b.wait_until(last.last_position)
    assert b.is_leader
    b.stop()
    await b_task


async def test_a_leader_whose_run_fails_lets_a_follower_take_over(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    """A bug (not a lost connection) ends the leader's run(): it must not keep the lock,
    or no instance would apply (nor send the outbox) until that process stops."""
    first = await store.append("s", [NewEvent("Happened", {"n": n}) for n in range(3)])
    failing = make_runner([Recording(fail_at=5)], lock_retry_interval=0.05)
    failing_task = asyncio.create_task(failing.run())
    async with asyncio.timeout(WAIT):
        await failing.wait_until(first.last_position)
    follower = Recording()
    other = make_runner([follower], lock_retry_interval=0.05)
    other_task = asyncio.create_task(other.run())
    async with asyncio.timeout(WAIT):
        await other.wait_until(first.last_position)
    assert failing.is_leader
    assert not other.is_leader

    last = await store.append("s", [NewEvent("Happened", {"n": n}) for n in range(3, 6)])
    with pytest.raises(Boom):
        await failing_task
    assert not failing.is_leader
    async with asyncio.timeout(WAIT):
        await other.wait_until(last.last_position)
    assert other.is_leader
    assert follower.calls == [[4, 5, 6]]
    other.stop()
    await other_task
    await failing.close()


async def test_a_follow_only_runner_waits_for_notifications_without_spinning(
    store: SQLiteEventStore, make_runner: RunnerFactory, projection_db: Scope
) -> None:
    # serve's runner when its projections run in a child: it never tries the lock, so it
    # has no lock retry to wake for; it must sleep until a NOTIFY (or the poll interval).
    a = make_runner([Recording()])
    a_task = asyncio.create_task(a.run())
    database = projection_db.database("live", poll_interval=600, lock_retry_interval=600)
    reads = 0
    real_read = database.read

    async def counted(fn: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_read(fn)

    database.read = counted  # type: ignore[method-assign]
    b = ProjectionRunner(store, [Recording()], database=database, follow_only=True)
    b_task = asyncio.create_task(b.run())
    try:
        async with asyncio.timeout(WAIT):
            for n in range(5):
                result = await store.append("s", [NewEvent("Happened", {"n": n})])
                await b.wait_until(result.last_position)
        assert a.is_leader
        assert not b.is_leader
        # Nothing happens for a while: a follower that spins re-reads all along.
        before = reads
        await asyncio.sleep(0.5)
        assert reads - before <= 1, reads - before
    finally:
        for runner in (a, b):
            runner.stop()
        await asyncio.gather(a_task, b_task)
        await b.close()
