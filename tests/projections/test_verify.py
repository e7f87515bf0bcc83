"""projections.verify: owned tables, the sorted merge, and live vs fresh-replay comparisons."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from eventstore.base import RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from projections.catalog import all_projections
from projections.runner import ProjectionRunner, projections_path
from projections.verify import (
    TableDiff,
    compare_projections,
    compare_table,
    diff_sorted,
    format_report,
    owned_tables,
    sort_key,
)
from tests.projections.conftest import RunnerFactory
from tests.projections.helpers import goal_reached, postback_meta, rejected


class Schema:
    """A projection that only has a schema (for :func:`owned_tables`)."""

    name = "schema"

    def __init__(self, *statements: str) -> None:
        self.schema_sql: Sequence[str] = statements

    def apply_batch(self, conn: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        pass

    def reset(self, conn: sqlite3.Connection) -> None:
        pass


@pytest.fixture
def conns(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    live = sqlite3.connect(tmp_path / "live.db", isolation_level=None)
    fresh = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    yield live, fresh
    live.close()
    fresh.close()


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
    existing = await runner.query(
        lambda conn: {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    )
    for projection in all_projections():
        tables = owned_tables(projection)
        assert tables, projection.name
        assert set(tables) <= existing


def test_sort_key_orders_like_sqlite(
    conns: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    live, _ = conns
    live.execute("CREATE TABLE t (v)")
    values: list[Any] = [None, 3, -1, 2.5, 10**15, "b", "a", "é", "Z", "", b"\x00", b"a", "日本"]
    live.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    ordered = [row[0] for row in live.execute("SELECT v FROM t ORDER BY v COLLATE BINARY")]
    assert sorted(values, key=lambda v: sort_key([v])) == ordered


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
    conns: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    live, fresh = conns
    for conn, copies in ((live, 3), (fresh, 2)):
        conn.execute("CREATE TABLE log (n INTEGER, word TEXT)")
        conn.executemany("INSERT INTO log VALUES (?, ?)", [(1, "one")] * copies + [(2, "two")])
    diff = compare_table(live, fresh, "p", "log")
    assert (diff.missing, diff.extra, diff.changed) == (0, 1, 0)
    assert diff.examples[0].describe() == (
        "extra row (n=1, word='one'): in the live table, not in the replay: {n=1, word='one'}"
    )


def test_compare_table_reports_schema_problems(
    conns: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    live, fresh = conns
    fresh.execute("CREATE TABLE only_fresh (a)")
    diff = compare_table(live, fresh, "p", "only_fresh")
    assert diff.problem == "the table is missing from the live projections"
    assert not diff.ok
    live.execute("CREATE TABLE shapes (a, b)")
    fresh.execute("CREATE TABLE shapes (a, c)")
    assert compare_table(live, fresh, "p", "shapes").problem == (
        "columns differ: live (a, b), replay (a, c)"
    )
    assert compare_table(live, fresh, "p", "nowhere").ok


async def test_live_projections_against_a_fresh_replay(
    store: SQLiteEventStore, make_runner: RunnerFactory, tmp_path: Path
) -> None:
    await store.append("subscriber-1", [goal_reached(1, postback_meta(), "reg")])
    await store.append("subscriber-1", [goal_reached(1, postback_meta(), "dep")])
    await store.append("postback-log", [rejected(None, postback_meta(status=404))])
    live_runner = make_runner(all_projections(), batch_size=2)
    await live_runner.catch_up()
    fresh_path = tmp_path / "fresh.projections.db"
    fresh_runner = ProjectionRunner(store, all_projections(), path=fresh_path)
    try:
        assert await fresh_runner.catch_up() == 3
    finally:
        await fresh_runner.close()

    live = sqlite3.connect(projections_path(store.path), isolation_level=None)
    fresh = sqlite3.connect(fresh_path, isolation_level=None)
    try:
        diffs = compare_projections(live, fresh, all_projections())
        assert [d.name for d in diffs] == [p.name for p in all_projections()]
        assert all(d.ok for d in diffs), format_report(diffs)
        assert all(d.live_checkpoint == 3 for d in diffs)

        live.execute("UPDATE goal_facts SET amount_whole = 7 WHERE goal = 'dep'")
        live.execute("UPDATE projection_checkpoints SET position = 2 WHERE name = 'postback_log'")
        diffs = compare_projections(live, fresh, all_projections())
        bad = {d.name: d for d in diffs if not d.ok}
        assert set(bad) == {"goal_stats", "postback_log"}
        facts = next(t for t in bad["goal_stats"].tables if t.table == "goal_facts")
        assert facts.changed == 1
        report = "\n".join(format_report(diffs))
        assert "goal_stats: DIFFERS from a fresh replay" in report
        assert "DIFF goal_stats.goal_facts: 1 changed" in report
        assert "changed row (position=2): amount_whole: live 7, replay 0" in report
        assert "checkpoint: live 2, replay 3" in report
    finally:
        live.close()
        fresh.close()
