"""The generic runner: checkpoints atomic with rows, batching, live following, rebuild.

Every test that takes ``make_runner`` runs on both projection databases (SQLite and
PostgreSQL) and expects the same; leadership across runners is in test_leadership.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any, cast

import pytest

from eventstore.base import NewEvent, RecordedEvent
from eventstore.errors import EventStoreError, StoreUnavailableError
from eventstore.sqlite import SQLiteEventStore
from projections.catalog import all_projections
from projections.database import SqlConnection, SQLiteProjectionDatabase, dialect_of
from projections.runner import (
    Projection,
    ProjectionRunner,
    ProjectionStoppedError,
    fields_left_out,
)
from projections.verify import compare_databases, format_report, owned_tables
from tests.projections.conftest import RunnerFactory
from tests.projections.helpers import (
    Boom,
    Recording,
    event,
    fill_service_log,
    recorded,
    stored_checkpoints,
)


async def append_n(store: SQLiteEventStore, n: int, stream: str = "s") -> int:
    result = await store.append(stream, [event("Happened", i=i) for i in range(n)])
    return result.last_position


async def test_catch_up_applies_the_log_and_stores_the_checkpoint(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 10)
    runner = make_runner([Recording()])
    assert await runner.catch_up() == 10
    rows = await recorded(runner)
    assert [row[0] for row in rows] == list(range(1, 11))
    assert await stored_checkpoints(runner) == {"recording": 10}
    assert runner.checkpoints == {"recording": 10}
    assert runner.lag == 0
    assert await runner.catch_up() == 10  # nothing new: nothing applied again
    assert len(await recorded(runner)) == 10


async def test_empty_log(store: SQLiteEventStore, make_runner: RunnerFactory) -> None:
    runner = make_runner([Recording()])
    assert await runner.catch_up() == 0
    assert await stored_checkpoints(runner) == {"recording": 0}
    await runner.wait_until(0)


async def test_a_failure_rolls_back_rows_and_checkpoint_together(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 10)
    failing = Recording(fail_at=6)
    runner = make_runner([failing], batch_size=4)
    with pytest.raises(Boom):
        await runner.catch_up()
    # batch 1..4 committed; batch 5..8 failed after inserting 5: rolled back, all of it
    assert failing.calls == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert [row[0] for row in await recorded(runner)] == [1, 2, 3, 4]
    assert await stored_checkpoints(runner) == {"recording": 4}
    assert runner.checkpoints == {"recording": 4}
    assert runner.lag == 6
    await runner.close()

    # a restart (a new runner, the projection fixed) resumes at the checkpoint
    fixed = Recording()
    restarted = make_runner([fixed], batch_size=4)
    assert await restarted.catch_up() == 10
    assert fixed.calls == [[5, 6, 7, 8], [9, 10]]
    assert [row[0] for row in await recorded(restarted)] == list(range(1, 11))
    assert await stored_checkpoints(restarted) == {"recording": 10}


async def test_a_database_error_is_the_stores_and_rolls_back(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    class Duplicate(Recording):
        """Inserts position 3 twice under a primary key: a constraint violation."""

        def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS once (position BIGINT PRIMARY KEY)")
            super().apply_batch(conn, events)
            for one in events:
                conn.execute("INSERT INTO once VALUES (?)", (one.position,))
                if one.position == 3:
                    conn.execute("INSERT INTO once VALUES (?)", (one.position,))

    await append_n(store, 4)
    runner = make_runner([Duplicate()], batch_size=2)
    with pytest.raises(EventStoreError) as caught:
        await runner.catch_up()
    assert not isinstance(caught.value, StoreUnavailableError)  # not retried by run()
    assert await stored_checkpoints(runner) == {"recording": 2}
    assert [row[0] for row in await recorded(runner)] == [1, 2]


async def test_one_projection_failing_rolls_back_the_others_batch_too(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 5)
    runner = make_runner([Recording("good"), Recording("bad", fail_at=3)], batch_size=2)
    with pytest.raises(Boom):
        await runner.catch_up()
    assert await stored_checkpoints(runner) == {"good": 2, "bad": 2}
    assert [row[0] for row in await recorded(runner, "good")] == [1, 2]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 1000])
async def test_catch_up_in_batches_equals_one_batch(
    store: SQLiteEventStore, make_runner: RunnerFactory, batch_size: int
) -> None:
    for stream in ("a", "b", "a", "c"):
        await append_n(store, 5, stream)
    whole = make_runner([Recording("whole")], batch_size=10_000)
    batched = make_runner([Recording("batched")], batch_size=batch_size)
    assert await whole.catch_up() == 20
    assert await batched.catch_up() == 20
    assert await recorded(whole, "whole") == await recorded(batched, "batched")


async def test_a_projection_added_later_catches_up_alone(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 6)
    old = make_runner([Recording("old")])
    await old.catch_up()
    await old.close()
    await append_n(store, 2)
    kept, added = Recording("old"), Recording("new")
    runner = make_runner([kept, added], batch_size=3)
    assert await runner.catch_up() == 8
    assert kept.calls == [[7, 8]]
    assert [row[0] for row in await recorded(runner, "new")] == list(range(1, 9))
    assert [row[0] for row in await recorded(runner, "old")] == list(range(1, 9))


async def test_two_runners_on_one_database_never_apply_an_event_twice(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 50)
    first = make_runner([Recording()], batch_size=7)
    second = make_runner([Recording()], batch_size=5)
    reached = await asyncio.gather(first.catch_up(), second.catch_up())
    assert list(reached) == [50, 50]
    assert [row[0] for row in await recorded(first)] == list(range(1, 51))


async def test_a_runner_behind_another_applies_only_what_is_past_the_stored_checkpoint(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 10)
    stale_projection = Recording()
    stale = make_runner([stale_projection], batch_size=6)
    await stale.open()  # it has read the checkpoints: 0
    other = make_runner([Recording(fail_at=5)], batch_size=4)  # another process: up to 4
    with pytest.raises(Boom):
        await other.catch_up()
    assert await stored_checkpoints(other) == {"recording": 4}
    assert await stale.catch_up() == 10
    # it read 1..6 from its stale checkpoint, but the stored one said 4
    assert stale_projection.calls == [[5, 6], [7, 8, 9, 10]]
    assert [row[0] for row in await recorded(stale)] == list(range(1, 11))


async def test_run_follows_live_appends(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 3)
    runner = make_runner([Recording()], batch_size=2)
    task = asyncio.create_task(runner.run())
    await runner.wait_until(3)
    assert runner.is_leader  # alone: it leads on PostgreSQL too
    for _ in range(3):
        last = await append_n(store, 4)
        await runner.wait_until(last)
        assert [row[0] for row in await recorded(runner)] == list(range(1, last + 1))
        assert runner.lag == 0
    runner.stop()
    await task  # returns once stopped, even while waiting for the log
    assert task.result() is None


async def test_stop_takes_effect_between_batches(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 20)
    loop = asyncio.get_running_loop()
    runner: ProjectionRunner

    class Stopping(Recording):
        def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
            super().apply_batch(conn, events)
            if events[-1].position == 3:  # (in the worker thread)
                loop.call_soon_threadsafe(runner.stop)

    runner = make_runner([Stopping()], batch_size=1)
    await runner.run()
    assert await stored_checkpoints(runner) == {"recording": 3}


async def test_run_retries_after_a_transient_database_error(
    store: SQLiteEventStore, make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    class FailingOnce(Recording):
        """SQLite: "database is locked"; PostgreSQL: its own session is terminated (a real
        lost connection: the runner reconnects)."""

        def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
            if not self.calls:
                self.calls.append([])
                if dialect_of(conn) == "postgres":
                    conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
                raise sqlite3.OperationalError("database is locked")
            super().apply_batch(conn, events)

    projection = FailingOnce()
    runner = make_runner([projection])
    task = asyncio.create_task(runner.run())
    await runner.wait_until(0)
    last = await append_n(store, 3)
    await runner.wait_until(last)  # after one failed attempt and a short backoff
    assert "retrying in" in caplog.text
    assert "database is locked" in caplog.text or "PostgreSQL" in caplog.text
    assert [row[0] for row in await recorded(runner)] == [1, 2, 3]
    await runner.close()
    await task


async def test_close_ends_run_and_wakes_waiters(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    runner = make_runner([Recording()])
    task = asyncio.create_task(runner.run())
    waiter = asyncio.create_task(runner.wait_until(1_000))
    await runner.wait_until(0)
    await runner.close()
    await task
    with pytest.raises(ProjectionStoppedError):
        await waiter
    with pytest.raises(ProjectionStoppedError):
        await runner.catch_up()
    await runner.close()  # idempotent


async def test_a_failing_run_fails_its_waiters(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    runner = make_runner([Recording(fail_at=2)])
    task = asyncio.create_task(runner.run())
    waiter = asyncio.create_task(runner.wait_until(2))
    await append_n(store, 1)
    await runner.wait_until(1)
    await append_n(store, 1)
    with pytest.raises(Boom):
        await task
    with pytest.raises(ProjectionStoppedError) as caught:
        await waiter
    assert isinstance(caught.value.__cause__, Boom)


async def test_cancelling_run(store: SQLiteEventStore, make_runner: RunnerFactory) -> None:
    runner = make_runner([Recording()])
    task = asyncio.create_task(runner.run())
    await runner.wait_until(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await runner.catch_up() == 0  # still usable


async def test_rebuild_gives_identical_rows(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 12)
    one, two = Recording("one"), Recording("two")
    runner = make_runner([one, two], batch_size=5)
    await runner.catch_up()
    before_one, before_two = await recorded(runner, "one"), await recorded(runner, "two")
    one.calls.clear()
    two.calls.clear()

    assert await runner.rebuild(["one"]) == 12
    assert one.calls == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    assert two.calls == []
    assert await recorded(runner, "one") == before_one

    assert await runner.rebuild() == 12
    assert await recorded(runner, "one") == before_one
    assert await recorded(runner, "two") == before_two
    assert await stored_checkpoints(runner) == {"one": 12, "two": 12}
    with pytest.raises(ValueError, match="unknown"):
        await runner.rebuild(["three"])


async def test_a_reset_by_another_runner_is_noticed(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 6)
    this = make_runner([Recording()], batch_size=4)
    await this.catch_up()
    # another runner (process) resets the projection, then fails rebuilding it
    other = make_runner([Recording(fail_at=3)], batch_size=4)
    with pytest.raises(Boom):
        await other.rebuild()
    assert await stored_checkpoints(other) == {"recording": 0}
    await append_n(store, 2)
    # this runner believed 6: the stored checkpoint says 0, so it starts over from there
    assert this.position == 6
    assert await this.catch_up() == 8
    assert [row[0] for row in await recorded(this)] == list(range(1, 9))


def test_invalid_arguments() -> None:
    class FakeStore:
        path = ":memory:"

    class NoFile:
        """A log that is not an SQLite file (as PostgreSQL's)."""

    with pytest.raises(ValueError, match="at least one"):
        ProjectionRunner(FakeStore(), [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique"):
        ProjectionRunner(FakeStore(), [Recording(), Recording()])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in memory"):
        ProjectionRunner(FakeStore(), [Recording()])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give path= or database="):
        ProjectionRunner(NoFile(), [Recording()])  # type: ignore[arg-type]
    database = SQLiteProjectionDatabase("x.db")
    with pytest.raises(ValueError, match="not both"):
        ProjectionRunner(NoFile(), [Recording()], path="y.db", database=database)  # type: ignore[arg-type]
    runner = ProjectionRunner(NoFile(), [Recording()], database=database)  # type: ignore[arg-type]
    assert runner.database is database
    assert not runner.is_leader  # SQLite: every runner applies; leads once run() locks


async def test_after_run_fails_reads_still_answer(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    """A failed run() gives up the leadership (its connections) but not the reads."""
    await store.append("s", [NewEvent("Happened", {"n": n}) for n in range(3)])
    runner = make_runner([Recording(fail_at=2)])
    with pytest.raises(Boom):
        await runner.run()
    assert not runner.is_leader
    rows = await runner.query(
        lambda conn: conn.execute("SELECT position FROM recording").fetchall()
    )
    assert rows == []  # the failed batch was rolled back; position 1 with it


def index_names(conn: SqlConnection, table: str) -> set[str]:
    if dialect_of(conn) == "postgres":
        sql = (
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ?"
        )
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
    return {str(name) for (name,) in conn.execute(sql, (table,)).fetchall()}


class WithReadIndex:
    """Records, at each batch, which of its table's indexes exist."""

    name = "indexed"
    schema_sql = ("CREATE TABLE IF NOT EXISTS indexed (position BIGINT PRIMARY KEY, n BIGINT)",)
    read_indexes = ("CREATE INDEX IF NOT EXISTS indexed_by_n ON indexed (n, position)",)

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        self.seen.append("indexed_by_n" in index_names(conn, "indexed"))
        conn.executemany(
            "INSERT INTO indexed (position, n) VALUES (?, ?)",
            [(e.position, e.data["i"]) for e in events],
        )

    def reset(self, conn: SqlConnection) -> None:
        conn.execute("DROP TABLE IF EXISTS indexed")


async def test_a_rebuild_creates_read_indexes_once_caught_up(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 6)
    projection = WithReadIndex()
    runner = make_runner([projection], batch_size=2)
    await runner.catch_up()
    assert projection.seen == [True, True, True]  # created with the table
    projection.seen.clear()
    assert await runner.rebuild() == 6
    assert projection.seen == [False, False, False]  # maintained by nobody while rebuilding
    assert await runner.query(lambda conn: index_names(conn, "indexed")) >= {"indexed_by_n"}
    rows = await runner.query(lambda conn: conn.execute("SELECT COUNT(*) FROM indexed").fetchone())
    assert rows[0] == 6


class OnePass(Recording):
    """A :class:`Recording` with a one-pass fold (:class:`Fold`) that records its calls
    (and what the table held when ``finish`` came)."""

    def __init__(self) -> None:
        super().__init__("one_pass")
        self.folds: list[tuple[str, list[int]]] = []
        self.made = 0

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        self.folds.append(("apply", [event.position for event in events]))
        super().apply_batch(conn, events)

    def one_pass(self) -> Fold:
        self.made += 1
        return Fold(self, self.made)


class Fold:
    """The fold of one one-pass rebuild of :class:`OnePass`, named by its number."""

    def __init__(self, projection: OnePass, number: int) -> None:
        self.projection, self.number = projection, number

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        self.projection.folds.append((f"fold {self.number}", [e.position for e in events]))
        Recording.apply_batch(self.projection, conn, events)

    def finish(self, conn: SqlConnection) -> None:
        (count,) = conn.execute("SELECT COUNT(*) FROM one_pass").fetchone()
        self.projection.folds.append((f"finish {self.number}", [int(count)]))


async def test_a_one_pass_rebuild_folds_with_a_fold_of_its_own_then_finishes_once(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    await append_n(store, 5)
    projection, plain = OnePass(), Recording("plain")
    runner = make_runner([projection, plain], batch_size=2)
    assert await runner.rebuild(one_pass=True) == 5
    assert projection.folds == [
        ("fold 1", [1, 2]),
        ("fold 1", [3, 4]),
        ("fold 1", [5]),
        ("finish 1", [5]),  # in the transaction after the last batch
    ]
    assert plain.calls == [[1, 2], [3, 4], [5]]  # none of its own: apply_batch
    # Afterwards, and in a rebuild that is not one pass, apply_batch as always.
    projection.folds.clear()
    await append_n(store, 1)
    await runner.catch_up()
    assert await runner.rebuild() == 6
    assert projection.folds == [
        ("apply", [6]),
        ("apply", [1, 2]),
        ("apply", [3, 4]),
        ("apply", [5, 6]),
    ]
    assert [row[0] for row in await recorded(runner, "one_pass")] == [1, 2, 3, 4, 5, 6]
    # Each one-pass rebuild has a fold of its own.
    projection.folds.clear()
    assert await runner.rebuild(one_pass=True) == 6
    assert projection.folds == [
        ("fold 2", [1, 2]),
        ("fold 2", [3, 4]),
        ("fold 2", [5, 6]),
        ("finish 2", [6]),
    ]


# -- the fields the runner leaves out ----------------------------------------------------------


class ReadsAll:
    """A projection as it is, but declaring nothing of what it reads: its runner reads
    every field of the events."""

    reads_event_fields = None

    def __init__(self, projection: Projection) -> None:
        self._projection = projection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._projection, name)


LEFT_OUT = {
    "postback_index": {"stream", "hash"},
    "goal_stats": {"stream", "metadata", "hash"},
    "subscribers": {"metadata", "hash"},
    "profiles": {"metadata", "hash"},
    "deliveries": {"stream", "metadata", "hash"},
}


def test_every_projection_declares_what_it_reads() -> None:
    assert {p.name: fields_left_out([p]) for p in all_projections()} == LEFT_OUT
    assert fields_left_out(all_projections()) == {"hash"}
    assert fields_left_out([*all_projections(), Recording()]) == set()  # it declares nothing


@pytest.mark.parametrize("name", sorted(LEFT_OUT))
async def test_a_projection_read_without_what_it_leaves_out_has_the_same_rows(
    store: SQLiteEventStore, make_runner: RunnerFactory, name: str
) -> None:
    """Each projection alone, its runner leaving out what it declares unread, against
    the same projection read with every field: a declaration that leaves out too much
    shows here (on the service's kinds of events)."""
    head = await fill_service_log(store)
    [lean_projection] = [p for p in all_projections() if p.name == name]
    [full_projection] = [p for p in all_projections() if p.name == name]
    lean = make_runner([lean_projection], batch_size=4)
    full = make_runner([cast(Projection, ReadsAll(full_projection))], place="fresh")
    assert await lean.catch_up() == await full.catch_up() == head
    await lean.rebuild(one_pass=True)
    diffs = await compare_databases(lean.database, full.database, [lean_projection])
    assert all(diff.ok for diff in diffs), format_report(diffs)

    def rows(conn: SqlConnection) -> int:
        tables = owned_tables(lean_projection)
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)

    assert await lean.query(rows) > 0  # compared with something
