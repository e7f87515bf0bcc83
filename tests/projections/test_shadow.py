"""projections.shadow: splitting projections into groups, and swapping rebuilt shadow files
into live SQLite projections in one transaction."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.base import RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from projections.catalog import all_projections
from projections.database import SqlConnection, SQLiteProjectionDatabase
from projections.runner import Projection, ProjectionRunner
from projections.shadow import plan_shards, rebuild_weight, swap_in
from projections.verify import compare_databases, format_report, owned_tables
from tests.projections.helpers import fill_service_log, service_events

# -- plan_shards --------------------------------------------------------------------------------


class Weighted:
    """A projection that only has a name and (maybe) a weight."""

    schema_sql: Sequence[str] = ()

    def __init__(self, name: str, weight: Any = None) -> None:
        self.name = name
        if weight is not None:
            self.rebuild_weight = weight

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        pass

    def reset(self, conn: SqlConnection) -> None:
        pass


def names(groups: list[list[Projection]]) -> list[list[str]]:
    return [[projection.name for projection in group] for group in groups]


def test_one_job_is_one_group_in_catalogue_order() -> None:
    catalogue = all_projections()
    assert names(plan_shards(catalogue, 1)) == [[p.name for p in catalogue]]


def test_groups_balance_the_weights_and_keep_catalogue_order() -> None:
    catalogue: list[Projection] = [
        Weighted("a", 1.0),
        Weighted("b", 6.0),
        Weighted("c", 2.0),
        Weighted("d", 3.0),
        Weighted("e", 2.0),
    ]
    # Heaviest first, each to the lightest group so far: b -> 0 (6); d -> 1 (3);
    # c -> 1 (5); e -> 1 (7, as 5 < 6); a -> 0 (7).
    assert names(plan_shards(catalogue, 2)) == [["a", "b"], ["c", "d", "e"]]
    assert names(plan_shards(catalogue, 9)) == [["b"], ["d"], ["c"], ["e"], ["a"]]


def test_weights_default_to_one() -> None:
    assert rebuild_weight(Weighted("plain")) == 1.0
    for bad in (0, -2.0, "heavy", float("nan")):
        assert rebuild_weight(Weighted("bad", bad)) == 1.0
    assert rebuild_weight(Weighted("int", 3)) == 3.0
    with pytest.raises(ValueError, match="at least 1"):
        plan_shards(all_projections(), 0)
    assert plan_shards([], 4) == []


@settings(max_examples=200, database=None, derandomize=True)
@given(st.lists(st.integers(1, 100), min_size=1, max_size=12), st.integers(1, 8))
def test_every_projection_lands_in_exactly_one_group(weights: list[int], jobs: int) -> None:
    catalogue: list[Projection] = [Weighted(f"p{i}", w) for i, w in enumerate(weights)]
    groups = plan_shards(catalogue, jobs)
    assert len(groups) == min(jobs, len(catalogue))
    flat = [p.name for group in groups for p in group]
    assert sorted(flat) == sorted(p.name for p in catalogue)
    position = {p.name: i for i, p in enumerate(catalogue)}
    for group in groups:
        assert group
        assert [position[p.name] for p in group] == sorted(position[p.name] for p in group)
    # the greedy bound: no group exceeds an even share by more than the heaviest projection
    loads = [sum(rebuild_weight(p) for p in group) for group in groups]
    assert max(loads) <= sum(weights) / len(groups) + max(weights)


# -- swap_in ------------------------------------------------------------------------------------


async def _build(
    store: SQLiteEventStore,
    path: Path,
    projections: Sequence[Projection],
    *,
    until: int | None,
    one_pass: bool = False,
) -> None:
    database = SQLiteProjectionDatabase(path, scratch=True)
    runner = ProjectionRunner(store, list(projections), database=database, batch_size=7)
    try:
        await runner.rebuild(one_pass=one_pass)
        if until is not None:
            assert runner.position == until
    finally:
        await runner.close()


def _rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)


def _checkpoints(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT name, position FROM projection_checkpoints").fetchall())


async def _same_as_a_fresh_replay(store: SQLiteEventStore, live: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    await _build(store, fresh, all_projections(), until=None)
    live_db = SQLiteProjectionDatabase(live)
    fresh_db = SQLiteProjectionDatabase(fresh)
    for database in (live_db, fresh_db):
        await database.open()
    try:
        diffs = await compare_databases(live_db, fresh_db, all_projections())
    finally:
        for database in (live_db, fresh_db):
            await database.close()
    assert all(diff.ok for diff in diffs), format_report(diffs)
    assert _checkpoints(live) == _checkpoints(fresh)


async def _live_file(store: SQLiteEventStore, tmp_path: Path) -> tuple[Path, int]:
    """The log filled, and live projections of it all in ``live.db``: the file and the
    log's head."""
    head = await fill_service_log(store)
    live = tmp_path / "live.db"
    await _build(store, live, all_projections(), until=head)
    return live, head


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = await SQLiteEventStore.open(tmp_path / "events.db", poll_interval=None)
    yield opened
    await opened.close()


async def _shadows(
    store: SQLiteEventStore, tmp_path: Path, head: int
) -> list[tuple[str, list[Projection]]]:
    shards = [
        (str(tmp_path / f"shadow{n}.db"), group)
        for n, group in enumerate(plan_shards(all_projections(), 2))
    ]
    for path, group in shards:  # as the rebuild's children build them
        await _build(store, Path(path), group, until=head, one_pass=True)
    return shards


async def test_swap_replaces_stale_live_rows_with_the_shadows(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    live, head = await _live_file(store, tmp_path)
    with sqlite3.connect(live) as conn:  # rows that a replay would not give
        conn.execute("UPDATE goal_stats_hourly SET count = count + 5")
        conn.execute("DELETE FROM subscribers WHERE subscriber_id = 3")
        conn.execute("UPDATE projection_checkpoints SET position = 2 WHERE name = 'profiles'")
    shards = await _shadows(store, tmp_path, head)

    reached = swap_in(str(live), shards)

    assert reached == {p.name: head for p in all_projections()}
    await _same_as_a_fresh_replay(store, live, tmp_path)
    with sqlite3.connect(live) as conn:  # the read indexes came along
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "postback_index_account_clickid" in indexes
    assert "goal_facts_time" in indexes


async def test_swap_into_a_new_file_leaves_the_shadows_whole(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    # With the shadows attached, an unqualified DROP of a table the live file lacks would
    # drop the shadow's: the swap creates the live tables before it attaches anything.
    head = await fill_service_log(store)
    shards = await _shadows(store, tmp_path, head)
    before = {
        (path, table): _rows(Path(path), table)
        for path, group in shards
        for projection in group
        for table in owned_tables(projection)
    }
    live = tmp_path / "new.projections.db"

    swap_in(str(live), shards)

    await _same_as_a_fresh_replay(store, live, tmp_path)
    for (path, table), rows in before.items():
        assert _rows(Path(path), table) == rows


@pytest.mark.parametrize("live_file", ["new", "new, being read", "filled"])
async def test_a_new_file_is_written_straight_while_nobody_reads_it(
    store: SQLiteEventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_file: str
) -> None:
    """Into a file that holds nothing, while no other connection is in a transaction on
    it, the backup goes with a rollback journal instead of through the write-ahead log
    (which then had to be copied into the file); in WAL mode again afterwards. Otherwise
    through the log, as always."""
    if live_file == "filled":
        live, head = await _live_file(store, tmp_path)
    else:
        head = await fill_service_log(store)
        live = tmp_path / "new.projections.db"
    shards = await _shadows(store, tmp_path, head)
    other = sqlite3.connect(live, isolation_level=None)  # open throughout
    other.execute("PRAGMA journal_mode = WAL")
    if live_file == "new, being read":
        other.execute("BEGIN")
        other.execute("SELECT * FROM sqlite_schema").fetchall()
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    try:
        reached = swap_in(str(live), shards)
        other.execute("COMMIT" if other.in_transaction else "SELECT 1")
        # The connection open throughout reads the new rows, in WAL mode.
        (facts,) = other.execute("SELECT COUNT(*) FROM goal_facts").fetchone()
        assert facts == len(_rows(live, "goal_facts")) > 0
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        monkeypatch.undo()
        other.close()

    assert reached == {p.name: head for p in all_projections()}
    await _same_as_a_fresh_replay(store, live, tmp_path)
    with sqlite3.connect(live) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    if live_file == "filled":
        assert "PRAGMA journal_mode = DELETE" not in statements
    else:
        after = statements[statements.index("PRAGMA journal_mode = DELETE") + 1 :]
        assert ("PRAGMA journal_mode = WAL" in after) == (live_file == "new")


async def test_a_failed_swap_changes_nothing(store: SQLiteEventStore, tmp_path: Path) -> None:
    live, head = await _live_file(store, tmp_path)
    with sqlite3.connect(live) as conn:
        conn.execute("UPDATE goal_stats_hourly SET count = count + 5")
    tables = [t for p in all_projections() for t in owned_tables(p)]
    before = {table: _rows(live, table) for table in tables}
    checkpoints_before = _checkpoints(live)
    shards = await _shadows(store, tmp_path, head)

    # The second shadow lost a table: its copy fails after the first shadow's went in.
    second_path, second_group = shards[1]
    with sqlite3.connect(second_path) as conn:
        conn.execute(f'DROP TABLE "{owned_tables(second_group[-1])[-1]}"')
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        swap_in(str(live), shards)
    assert {table: _rows(live, table) for table in tables} == before
    assert _checkpoints(live) == checkpoints_before

    # A shadow without a projection's checkpoint was not rebuilt there: refused.
    with sqlite3.connect(shards[0][0]) as conn:
        conn.execute("DELETE FROM projection_checkpoints")
    with pytest.raises(ValueError, match="no checkpoint for"):
        swap_in(str(live), shards[:1])
    assert {table: _rows(live, table) for table in tables} == before
    assert _checkpoints(live) == checkpoints_before


async def test_a_swap_of_every_table_replaces_the_file_under_its_readers(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    live, head = await _live_file(store, tmp_path)
    with sqlite3.connect(live) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("UPDATE goal_stats_hourly SET count = count + 5")
    stale = _rows(live, "goal_stats_hourly")
    shards = await _shadows(store, tmp_path, head)
    # A runner that has the file open (as serve's does), and a reader inside a snapshot.
    runner = ProjectionRunner(store, all_projections(), database=SQLiteProjectionDatabase(live))
    await runner.catch_up()
    reader = sqlite3.connect(live, isolation_level=None)
    reader.execute("BEGIN")
    assert sorted(reader.execute("SELECT * FROM goal_stats_hourly").fetchall(), key=repr) == stale
    try:
        assert swap_in(str(live), shards) == {p.name: head for p in all_projections()}
        # The snapshot still shows the old file; the next transaction the new one.
        assert sorted(reader.execute("SELECT * FROM goal_stats_hourly"), key=repr) == stale
        reader.execute("COMMIT")
        assert sorted(reader.execute("SELECT * FROM goal_stats_hourly"), key=repr) != stale
        # Replaced as a whole: the largest shadow gained the others' tables, and the copy
        # of it left no free page behind (dropping the old tables would have).
        largest = max((path for path, _group in shards), key=os.path.getsize)
        every = {t for p in all_projections() for t in owned_tables(p)}
        with sqlite3.connect(largest) as conn:
            assert every <= {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
        assert reader.execute("PRAGMA freelist_count").fetchone() == (0,)
        # The open runner reads the new schema and goes on from the swapped checkpoints.
        await store.append("subscriber-9", service_events(9, 1))
        await runner.catch_up()
        await _same_as_a_fresh_replay(store, live, tmp_path)
    finally:
        reader.close()
        await runner.close()


async def test_a_table_the_shadows_lack_keeps_the_swap_to_their_tables(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    live, head = await _live_file(store, tmp_path)
    with sqlite3.connect(live) as conn:  # not a projection's: the file cannot be replaced
        conn.execute("CREATE TABLE operator_notes (note TEXT)")
        conn.execute("INSERT INTO operator_notes VALUES ('kept')")
        conn.execute("UPDATE goal_stats_hourly SET count = count + 5")
    shards = await _shadows(store, tmp_path, head)

    swap_in(str(live), shards)

    assert _rows(live, "operator_notes") == [("kept",)]
    await _same_as_a_fresh_replay(store, live, tmp_path)


async def test_a_checkpoint_the_shadows_lack_keeps_the_swap_to_their_tables(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    live, head = await _live_file(store, tmp_path)
    with sqlite3.connect(live) as conn:  # a projection this version no longer has
        conn.execute(
            "INSERT INTO projection_checkpoints (name, position, updated_at)"
            " VALUES ('retired', 3, 'then')"
        )
    shards = await _shadows(store, tmp_path, head)

    swap_in(str(live), shards)

    assert _checkpoints(live)["retired"] == 3


async def test_a_file_of_another_page_size_is_swapped_table_by_table(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    # SQLite's backup cannot copy pages into a file in WAL mode whose pages differ.
    head = await fill_service_log(store)
    live = tmp_path / "live.db"
    with sqlite3.connect(live) as conn:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("VACUUM")
    await _build(store, live, all_projections(), until=head)
    shards = await _shadows(store, tmp_path, head)

    swap_in(str(live), shards)

    await _same_as_a_fresh_replay(store, live, tmp_path)
    with sqlite3.connect(live) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (1024,)


async def test_a_failed_whole_file_swap_changes_nothing(
    store: SQLiteEventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, head = await _live_file(store, tmp_path)
    tables = [t for p in all_projections() for t in owned_tables(p)]
    before = {table: _rows(live, table) for table in tables}
    shards = await _shadows(store, tmp_path, head)
    smaller = min((path for path, _group in shards), key=os.path.getsize)

    # A file that stays locked: the swap gives up after its busy timeout, as the table by
    # table one does (SQLite's backup would retry for as long as it is locked).
    monkeypatch.setattr("projections.shadow.BUSY_TIMEOUT_MS", 300)
    holder = sqlite3.connect(live, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")  # as a service's file is: only writers wait
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            # In a thread, bounded: a swap that waited for good would fail, not hang.
            await asyncio.wait_for(asyncio.to_thread(swap_in, str(live), shards), 10)
    finally:
        holder.close()
    assert {table: _rows(live, table) for table in tables} == before

    # The shadow merged into the largest lacks a checkpoint: refused, naming that file.
    with sqlite3.connect(smaller) as conn:
        conn.execute("DELETE FROM projection_checkpoints")
    with pytest.raises(ValueError, match=f"the shadow {smaller} has no checkpoint for"):
        swap_in(str(live), shards)
    assert {table: _rows(live, table) for table in tables} == before


async def test_a_view_of_the_operators_keeps_the_swap_to_the_tables(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    live, head = await _live_file(store, tmp_path)
    with sqlite3.connect(live) as conn:
        conn.execute("CREATE VIEW busy_spots AS SELECT spot_id FROM goal_stats_hourly")
    shards = await _shadows(store, tmp_path, head)

    swap_in(str(live), shards)

    with sqlite3.connect(live) as conn:
        assert conn.execute("SELECT COUNT(*) FROM busy_spots").fetchone()[0] > 0
    await _same_as_a_fresh_replay(store, live, tmp_path)
