"""projections.verify: owned tables, the sorted merge, and live vs fresh-replay comparisons,
on either projection database and across the two (a live PostgreSQL schema against a
replay in SQLite and the other way round)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore.base import RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from projections.catalog import all_projections
from projections.database import SqlConnection, SQLiteProjectionDatabase
from projections.runner import ProjectionRunner
from projections.verify import (
    TableDiff,
    compare_databases,
    compare_projections,
    compare_table,
    diff_sorted,
    format_report,
    owned_tables,
    select_sorted,
    sort_key,
    table_shape,
)
from tests.projections.backends import Scope, SQLiteScope
from tests.projections.conftest import RunnerFactory
from tests.projections.helpers import goal_reached, postback_meta, rejected


class Schema:
    """A projection that only has a schema (for :func:`owned_tables`)."""

    name = "schema"

    def __init__(self, *statements: str) -> None:
        self.schema_sql: Sequence[str] = statements

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        pass

    def reset(self, conn: SqlConnection) -> None:
        pass


@pytest.fixture
def conns(projection_db: Scope) -> tuple[SqlConnection, SqlConnection]:
    """Two empty databases of the backend under test: ``live`` and ``fresh``."""
    return projection_db.connect(), projection_db.connect()


def test_owned_tables_come_from_create_table_statements() -> None:
    schema = Schema(
        "CREATE TABLE IF NOT EXISTS plain (a INTEGER)",
        'create table "quoted ""name""" (a)',
        "CREATE TEMP TABLE `ticked` (a)",
        "CREATE TABLE [bracketed] (a)",
        "CREATE INDEX IF NOT EXISTS plain_a ON plain (a)",
        "CREATE UNIQUE INDEX other ON plain (a)",
        "CREATE TABLE IF NOT EXISTS plain (a INTEGER)",
    )
    assert owned_tables(schema) == ["plain", 'quoted "name"', "ticked", "bracketed"]


async def test_every_catalog_projection_owns_tables_that_exist(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    runner = make_runner(all_projections())
    await runner.open()
    for projection in all_projections():
        tables = owned_tables(projection)
        assert tables, projection.name
        for table in tables:
            shape = await runner.query(lambda conn, table=table: table_shape(conn, table))
            assert shape is not None, (projection.name, table)
    assert await runner.query(lambda conn: table_shape(conn, "nowhere")) is None


def test_sort_key_orders_like_sqlite(tmp_path: Path) -> None:
    """SQLite: any types in one column, as ``COLLATE BINARY`` orders them."""
    live = SQLiteScope(tmp_path).connect()
    live.execute("CREATE TABLE t (v)")
    values: list[Any] = [None, 3, -1, 2.5, 10**15, "b", "a", "é", "Z", "", b"\x00", b"a", "日本"]
    live.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    ordered = [row[0] for row in live.execute("SELECT v FROM t ORDER BY v COLLATE BINARY")]
    assert sorted(values, key=lambda v: sort_key([v])) == ordered


TYPED: dict[str, list[Any]] = {
    "n": [None, 3, -1, 0, 10**15, -(2**63), 2**63 - 1],
    "word": [None, "b", "a", "é", "Z", "", "日本", "a b", "a-b", "ab", "A", "_", "~"],
    "raw": [None, b"\x00", b"a", b"\xff", b"", b"ab"],
}


def test_select_sorted_orders_like_sort_key(
    conns: tuple[SqlConnection, SqlConnection],
) -> None:
    """Either dialect, one type per column (as in projections): the order of sort_key, so
    two databases of different dialects merge."""
    conn, _ = conns
    conn.execute("CREATE TABLE typed (n BIGINT, word TEXT, raw BLOB)")
    for column, values in TYPED.items():
        conn.executemany(f"INSERT INTO typed ({column}) VALUES (?)", [(v,) for v in values])
        shape = table_shape(conn, "typed")
        assert shape is not None
        rows = [row[0] for row in select_sorted(conn, "typed", shape, [column])]
        expected = sorted(values, key=lambda v: sort_key([v]))
        assert rows == expected, column
        conn.execute("DELETE FROM typed")


def test_diff_sorted_counts_every_difference_and_keeps_examples() -> None:
    live = [(1, "a"), (2, "b"), (3, "x"), (5, "e"), (6, "f"), (7, "g")]
    fresh = [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (8, "h")]
    diff = diff_sorted(TableDiff("p", "t"), ("id", "v"), 1, live, fresh, limit=2)
    assert (diff.missing, diff.extra, diff.changed) == (2, 3, 1)
    assert (diff.live_rows, diff.fresh_rows) == (6, 5)
    assert not diff.ok
    assert [(e.kind, (e.live or e.fresh or ())[0]) for e in diff.examples] == [
        ("changed", 3),
        ("missing", 4),
        ("extra", 5),
        ("extra", 6),
        ("missing", 8),
    ]
    described = [example.describe() for example in diff.examples]
    assert described[0] == "changed row (id=3): v: live 'x', replay 'c'"
    assert described[1].startswith("missing row (id=4): in the replay, not in the live table")
    assert described[2].startswith("extra row (id=5): in the live table, not in the replay")
    assert "3 extra" in diff.summary()


def test_diff_sorted_equal_streams() -> None:
    rows = [(None, 1), (1, None), ("x", b"y")]
    diff = diff_sorted(TableDiff("p", "t"), ("a", "b"), 2, rows, list(rows))
    assert diff.ok
    assert diff.summary() == "t: 3 rows, equal"


def test_compare_table_without_primary_key_compares_whole_rows(
    conns: tuple[SqlConnection, SqlConnection],
) -> None:
    live, fresh = conns
    for conn, copies in ((live, 3), (fresh, 2)):
        conn.execute("CREATE TABLE log (n BIGINT, word TEXT)")
        conn.executemany("INSERT INTO log VALUES (?, ?)", [(1, "one")] * copies + [(2, "two")])
    diff = compare_table(live, fresh, "p", "log")
    assert (diff.missing, diff.extra, diff.changed) == (0, 1, 0)
    assert diff.examples[0].describe() == (
        "extra row (n=1, word='one'): in the live table, not in the replay: {n=1, word='one'}"
    )


def test_compare_table_reports_schema_problems(
    conns: tuple[SqlConnection, SqlConnection],
) -> None:
    live, fresh = conns
    fresh.execute("CREATE TABLE only_fresh (a BIGINT)")
    diff = compare_table(live, fresh, "p", "only_fresh")
    assert diff.problem == "the table is missing from the live projections"
    assert not diff.ok
    live.execute("CREATE TABLE shapes (a BIGINT, b TEXT)")
    fresh.execute("CREATE TABLE shapes (a BIGINT, c TEXT)")
    assert compare_table(live, fresh, "p", "shapes").problem == (
        "columns differ: live (a, b), replay (a, c)"
    )
    assert compare_table(live, fresh, "p", "nowhere").ok


async def test_live_projections_against_a_fresh_replay(
    store: SQLiteEventStore, make_runner: RunnerFactory, projection_db: Scope, tmp_path: Path
) -> None:
    await store.append("subscriber-1", [goal_reached(1, postback_meta(), "reg")])
    await store.append("subscriber-1", [goal_reached(1, postback_meta(), "dep")])
    await store.append("postback-log", [rejected(None, postback_meta(status=404))])
    live_runner = make_runner(all_projections(), batch_size=2)
    await live_runner.catch_up()
    fresh_runner = make_runner(all_projections(), place="fresh")
    assert await fresh_runner.catch_up() == 3
    # a replay in an SQLite file too: a live PostgreSQL schema compares with it
    in_file = SQLiteProjectionDatabase(tmp_path / "replay.projections.db")
    file_runner = ProjectionRunner(store, all_projections(), database=in_file)
    try:
        assert await file_runner.catch_up() == 3
        pairs = [(live_runner.database, fresh_runner.database)]
        pairs += [(live_runner.database, in_file), (in_file, live_runner.database)]
        for live_db, fresh_db in pairs:
            diffs = await compare_databases(live_db, fresh_db, all_projections())
            assert [d.name for d in diffs] == [p.name for p in all_projections()]
            assert all(d.ok for d in diffs), format_report(diffs)
            assert all(d.live_checkpoint == 3 for d in diffs)

        live = projection_db.connect("live")
        live.execute("UPDATE goal_facts SET amount_whole = 7 WHERE goal = 'dep'")
        live.execute("UPDATE projection_checkpoints SET position = 2 WHERE name = 'postback_index'")
        diffs = compare_projections(live, projection_db.connect("fresh"), all_projections())
        assert diffs == await compare_databases(live_runner.database, in_file, all_projections())
    finally:
        await file_runner.close()
    bad = {d.name: d for d in diffs if not d.ok}
    assert set(bad) == {"goal_stats", "postback_index"}
    facts = next(t for t in bad["goal_stats"].tables if t.table == "goal_facts")
    assert facts.changed == 1
    report = "\n".join(format_report(diffs))
    assert "goal_stats: DIFFERS from a fresh replay" in report
    assert "DIFF goal_stats.goal_facts: 1 changed" in report
    assert "changed row (position=2): amount_whole: live 7, replay 0" in report
    assert "checkpoint: live 2, replay 3" in report


def _reference_diff(
    key_length: int, live: list[tuple[Any, ...]], fresh: list[tuple[Any, ...]]
) -> tuple[int, int, int]:
    """(missing, extra, changed) by sort_key alone: what diff_sorted must count."""
    live_by_key = {sort_key(row[:key_length]): row for row in live}
    fresh_by_key = {sort_key(row[:key_length]): row for row in fresh}
    missing = len(fresh_by_key.keys() - live_by_key.keys())
    extra = len(live_by_key.keys() - fresh_by_key.keys())
    changed = sum(
        1
        for key in live_by_key.keys() & fresh_by_key.keys()
        if sort_key(live_by_key[key]) != sort_key(fresh_by_key[key])
    )
    return missing, extra, changed


_VALUES = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0]),
    st.text(alphabet="ab\u00e9\u65e5", max_size=2),
    st.binary(max_size=2),
)


@given(
    st.lists(st.tuples(_VALUES, _VALUES, _VALUES), max_size=12),
    st.lists(st.tuples(_VALUES, _VALUES, _VALUES), max_size=12),
)
def test_diff_sorted_counts_as_sort_key_does_with_any_types(
    live: list[tuple[Any, ...]], fresh: list[tuple[Any, ...]]
) -> None:
    """Mixed types in one column, NULLs, 1 against 1.0: the merge compares values in
    Python where it can, and must still count exactly what sort_key alone would."""

    def unique_sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        by_key = {sort_key(row[:2]): row for row in rows}  # a key names one row
        return [by_key[key] for key in sorted(by_key)]

    live, fresh = unique_sorted(live), unique_sorted(fresh)
    diff = diff_sorted(TableDiff("p", "t"), ("a", "b", "c"), 2, live, fresh)
    assert (diff.missing, diff.extra, diff.changed) == _reference_diff(2, live, fresh)
    assert (diff.live_rows, diff.fresh_rows) == (len(live), len(fresh))


@pytest.mark.parametrize(
    "rows",
    [
        [(2, "b"), (1, "a")],  # numbers out of order
        [("b", 1), ("a", 2)],  # text out of order
        [("a", 1), (None, 2)],  # NULL sorts first: out of order after text
        [(1, "x"), (None, "y")],  # NULL after a number
    ],
)
def test_rows_out_of_key_order_are_a_problem_not_a_diff(rows: list[tuple[Any, ...]]) -> None:
    """The merge relies on both sides being sorted by key; a side that is not (a database
    that orders otherwise) is reported as such instead of miscounted."""
    diff = compare_sorted_or_problem(rows)
    assert diff.problem == "the live rows of t are not in key order"


def compare_sorted_or_problem(rows: list[tuple[Any, ...]]) -> TableDiff:
    diff = TableDiff("p", "t")
    try:
        diff_sorted(diff, ("k", "v"), 1, rows, sorted(rows, key=sort_key))
    except ValueError as exc:
        diff.problem = str(exc)
    return diff
