"""The goal_stats projection: facts, hourly aggregates, exact money, batch splits.

Events are built by hand (``goal_event``) with chosen ``recorded_at`` times and folded with
``apply_batch`` on a plain connection of the projection database (SQLite or PostgreSQL: the
same numbers on both): the store would stamp the commit time.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.base import NewEvent, RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from projections.database import SqlConnection, SQLiteProjectionDatabase
from projections.goal_stats import (
    HOUR_US,
    ONE_PASS_UNIQUES,
    GoalStatsOnePass,
    GoalStatsProjection,
    amount_units,
    fact_of,
    format_amount,
    parse_amount,
    split_units,
    units_to_decimal,
)
from projections.stats_query import query_stats
from tests.projections.backends import Scope, examples, transaction
from tests.projections.conftest import RunnerFactory

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def at(text: str) -> datetime:
    """A UTC time from ``"2026-11-24T18:29"`` (no offset: UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def goal_event(
    position: int,
    recorded_at: datetime | str,
    subscriber_id: int = 1,
    goal: str = "reg",
    amount: str | None = None,
    *,
    account_id: int = 1,
    spot_id: int = 1,
    event_type: str = "GoalReached",
) -> RecordedEvent:
    """A GoalReached as the store would return it (docs/events.md)."""
    return RecordedEvent(
        position=position,
        stream=f"subscriber-{subscriber_id}",
        version=1,
        event_id=uuid.uuid4(),
        type=event_type,
        schema_version=1,
        data={
            "subscriber_id": subscriber_id,
            "account_id": account_id,
            "spot_id": spot_id,
            "goal": goal,
            "standard": goal in ("reg", "dep", "redep", "rebill"),
            "amount": amount,
            "txid": None,
        },
        metadata={},
        recorded_at=at(recorded_at) if isinstance(recorded_at, str) else recorded_at,
        hash=b"",
    )


def new_db(conn: SqlConnection) -> SqlConnection:
    """``conn`` (to an empty database) with the goal_stats tables."""
    with transaction(conn):
        for statement in GoalStatsProjection.schema_sql:
            conn.execute(statement)
    return conn


def fold(conn: SqlConnection, *batches: Sequence[RecordedEvent]) -> SqlConnection:
    """Apply each batch in its own transaction, as the runner does."""
    projection = GoalStatsProjection()
    for batch in batches:
        with transaction(conn):
            projection.apply_batch(conn, batch)
    return conn


def fold_one_pass(
    conn: SqlConnection, *batches: Sequence[RecordedEvent], uniques: int = ONE_PASS_UNIQUES
) -> SqlConnection:
    """Fold as a one-pass rebuild does: its fold's ``apply_batch`` per batch, ``finish`` in
    a transaction of its own; the hours in memory up to ``uniques``, in SQL beyond."""
    folder = GoalStatsOnePass(uniques)
    for batch in batches:
        with transaction(conn):
            folder.apply_batch(conn, batch)
    with transaction(conn):
        folder.finish(conn)
    return conn


@pytest.fixture
def conn(projection_db: Scope) -> SqlConnection:
    return new_db(projection_db.connect())


def hourly(conn: SqlConnection) -> list[tuple[Any, ...]]:
    return sorted(conn.execute("SELECT * FROM goal_stats_hourly").fetchall())


def facts(conn: SqlConnection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM goal_facts ORDER BY position").fetchall()


# -- money -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.1", Decimal("0.1")),
        (" 100.50 ", Decimal("100.50")),
        ("-2.5", Decimal("-2.5")),
        ("1e2", Decimal("100")),
        (7, Decimal(7)),
        ("0.123456785", Decimal("0.12345678")),  # half-even to 8 places
        ("0.123456775", Decimal("0.12345678")),
        (None, None),
        ("", None),
        ("abc", None),
        ("NaN", None),
        ("Infinity", None),
        ("1e15", None),
        ("1E1000000", None),  # beyond the decimal context: None, not an Overflow
        ("-1E1000000", None),
        ("0E1000000", Decimal(0)),
        ("1E-1000000", Decimal(0)),
        (10**100, None),
        (True, None),
        (1.5, None),
    ],
)
def test_parse_amount(raw: object, expected: Decimal | None) -> None:
    assert parse_amount(raw) == expected


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        ("0", (0, 0)),
        ("0.1", (0, 10_000_000)),
        ("100.50", (100, 50_000_000)),
        ("-2.5", (-3, 50_000_000)),
        ("-0.00000001", (-1, 99_999_999)),
        ("999999999999999.99999999", (999_999_999_999_999, 99_999_999)),
        ("1E+3", (1000, 0)),
    ],
)
def test_split_units_round_trips(amount: str, units: tuple[int, int]) -> None:
    assert split_units(Decimal(amount)) == units
    assert units_to_decimal(*units) == Decimal(amount)
    assert amount_units(amount) == units


def _split_parsed(value: object) -> tuple[int, int] | None:
    parsed = parse_amount(value)
    return None if parsed is None else split_units(parsed)


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(
    st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.text(alphabet="-+0123456789.eE ", max_size=30)
    | st.integers().map(str)
    | st.integers()
    | st.none()
)
def test_amount_units_is_split_units_of_parse_amount(value: object) -> None:
    # The text fast path (no Decimal) must agree with the general one on every input.
    assert amount_units(value) == _split_parsed(value)


def test_format_amount() -> None:
    assert format_amount(Decimal("0.1") + Decimal("0.2")) == "0.30"
    assert format_amount(Decimal("100")) == "100.00"
    assert format_amount(Decimal("0.12345680")) == "0.1234568"
    assert format_amount(Decimal("-0.00")) == "0.00"
    assert format_amount(Decimal("1E+3")) == "1000.00"


def test_sums_are_exact(conn: SqlConnection) -> None:
    fold(
        conn,
        [
            goal_event(1, "2026-11-24T10:00", 1, "dep", "0.1"),
            goal_event(2, "2026-11-24T10:01", 2, "dep", "0.2"),
            goal_event(3, "2026-11-24T10:02", 3, "big", "999999999999999.99999999"),
            goal_event(4, "2026-11-24T10:03", 4, "big", "999999999999999.99999999"),
            goal_event(5, "2026-11-24T10:04", 5, "tiny", "0.12345678"),
            goal_event(6, "2026-11-24T10:05", 5, "tiny", "0.00000002"),
            goal_event(7, "2026-11-24T10:06", 6, "reg", None),
        ],
    )
    rows = query_stats(conn, account_id=1, group_by=["goal"])
    assert {row["goal"]: row["sum"] for row in rows} == {
        "big": "1999999999999999.99999998",
        "dep": "0.30",
        "reg": "0.00",
        "tiny": "0.1234568",
    }
    hour = 1_795_514_400_000_000  # 2026-11-24T10:00Z
    assert (1, 1, "dep", hour, 2, 2, 0, 30_000_000) in hourly(conn)
    assert (1, 1, "big", hour, 2, 2, 1_999_999_999_999_999, 99_999_998) in hourly(conn)


# -- the projection ----------------------------------------------------------------------


def test_facts_and_hourly_rows(conn: SqlConnection) -> None:
    fold(
        conn,
        [
            goal_event(1, "2026-11-24T10:00", 1, "reg"),
            goal_event(2, "2026-11-24T10:30", 1, "reg"),  # same subscriber, same hour
            goal_event(3, "2026-11-24T10:59:59.999999", 2, "reg"),
            goal_event(4, "2026-11-24T11:00", 1, "reg"),  # next hour: unique again
            goal_event(5, "2026-11-24T11:00", 1, "dep", "10", spot_id=2),
            goal_event(6, "2026-11-24T11:05", 1, "reg", event_type="ContactRecorded"),
        ],
        [goal_event(7, "2026-11-24T11:10", 1, "reg")],  # later batch: seen in the table
    )
    h10, h11 = 1_795_514_400_000_000, 1_795_514_400_000_000 + HOUR_US
    assert hourly(conn) == [
        (1, 1, "reg", h10, 3, 2, 0, 0),
        (1, 1, "reg", h11, 2, 1, 0, 0),
        (1, 2, "dep", h11, 1, 1, 10, 0),
    ]
    assert [row[0] for row in facts(conn)] == [1, 2, 3, 4, 5, 7]
    assert facts(conn)[4] == (5, 1, 2, "dep", 1, h11, 10, 0)


def test_malformed_goals_are_skipped() -> None:
    good = goal_event(1, "2026-11-24T10:00")
    assert fact_of(good) is not None
    for key, value in [
        ("account_id", None),
        ("spot_id", "1"),
        ("subscriber_id", True),
        ("goal", None),
    ]:
        bad = goal_event(1, "2026-11-24T10:00")
        bad.data[key] = value
        assert fact_of(bad) is None, key
    assert fact_of(goal_event(1, "2026-11-24T10:00", event_type="PlayerIdAssigned")) is None


def test_a_batch_applied_twice_counts_once(conn: SqlConnection) -> None:
    batch = [goal_event(1, "2026-11-24T10:00", 1, "dep", "5"), goal_event(2, "2026-11-24T10:01")]
    fold(conn, batch)
    before = hourly(conn), facts(conn)
    fold(conn, batch, batch[1:])
    assert (hourly(conn), facts(conn)) == before


def test_reset_drops_the_tables(conn: SqlConnection) -> None:
    fold(conn, [goal_event(1, "2026-11-24T10:00")])
    GoalStatsProjection().reset(conn)
    for statement in GoalStatsProjection.schema_sql:
        conn.execute(statement)
    assert hourly(conn) == facts(conn) == []


# -- properties: batch splits, hourly = facts per hour -----------------------------------

STARTS = [
    at("2026-03-01T00:00"),
    at("1969-12-31T22:30"),  # before the epoch: negative microseconds
    at("2026-03-08T03:00"),  # America/Chicago: DST starts at 08:00Z
    at("2026-04-04T22:00"),  # America/Santiago: DST ends at midnight local (03:00Z)
    at("2026-10-31T20:00"),  # America/Chicago: DST ends at 07:00Z
]


@st.composite
def goal_logs(draw: st.DrawFn) -> list[RecordedEvent]:
    """GoalReached events with non-decreasing times (often in the same hour), positions with
    gaps (other events between), amounts with up to 8 decimals or null."""
    count = draw(st.integers(0, 40))
    moment, position, events = draw(st.sampled_from(STARTS)), 0, []
    for _ in range(count):
        step = draw(st.sampled_from([0, 1, 10**6, 10**9, 10**10, 10**11]))
        moment += timedelta(microseconds=step)
        position += draw(st.integers(1, 3))
        amount = draw(
            st.none()
            | st.decimals(
                min_value=Decimal("-1000"),
                max_value=Decimal("999999999999999"),
                places=draw(st.integers(0, 8)),
                allow_nan=False,
                allow_infinity=False,
            ).map(str)
        )
        events.append(
            goal_event(
                position,
                moment,
                draw(st.integers(1, 4)),
                draw(st.sampled_from(["reg", "dep"])),
                amount,
                account_id=draw(st.integers(1, 2)),
                spot_id=draw(st.integers(1, 2)),
            )
        )
    return events


def split(events: list[RecordedEvent], cuts: list[int]) -> list[list[RecordedEvent]]:
    bounds = sorted({cut % (len(events) + 1) for cut in cuts} | {0, len(events)})
    return [events[a:b] for a, b in pairwise(bounds)]


def facts_per_hour(events: list[RecordedEvent]) -> list[tuple[Any, ...]]:
    """The hourly rows, computed from the events by brute force (Decimal sums)."""
    groups: dict[tuple[Any, ...], list[RecordedEvent]] = defaultdict(list)
    for event in events:
        fact = fact_of(event)
        assert fact is not None
        groups[(fact.account_id, fact.spot_id, fact.goal, fact.hour_us)].append(event)
    rows = []
    for key, members in sorted(groups.items()):
        total = sum((parse_amount(e.data["amount"]) or Decimal(0) for e in members), Decimal(0))
        uniques = len({e.data["subscriber_id"] for e in members})
        rows.append((*key, len(members), uniques, *split_units(total)))
    return rows


def test_incremental_equals_rebuild(projection_db: Scope) -> None:
    @examples(PROPERTY_SETTINGS, projection_db, postgres=30)
    @given(
        events=goal_logs(),
        cuts=st.lists(st.integers(0, 100), max_size=8),
        uniques=st.integers(0, 20),
    )
    def check(events: list[RecordedEvent], cuts: list[int], uniques: int) -> None:
        with projection_db.child() as scope:
            incremental_equals_rebuild(scope, events, cuts, uniques)

    check()


def incremental_equals_rebuild(
    scope: Scope, events: list[RecordedEvent], cuts: list[int], uniques: int
) -> None:
    whole = fold(new_db(scope.connect()), events)
    pieces = fold(new_db(scope.connect()), *split(events, cuts))
    assert facts(pieces) == facts(whole)
    assert hourly(pieces) == hourly(whole) == facts_per_hour(events)
    # One pass, the hours in memory; and with a tally that outgrows its bound after
    # ``uniques`` (often at once, or midway), the hours from the facts in SQL.
    for bound in (ONE_PASS_UNIQUES, uniques):
        one_pass = fold_one_pass(new_db(scope.connect()), *split(events, cuts), uniques=bound)
        assert facts(one_pass) == facts(whole)
        assert hourly(one_pass) == hourly(whole)
    totals = query_stats(pieces, account_id=None, group_by=["goal"])
    for row in totals:
        amounts = [
            parse_amount(e.data["amount"]) or Decimal(0)
            for e in events
            if e.data["goal"] == row["goal"]
        ]
        assert Decimal(row["sum"]) == sum(amounts, Decimal(0))


# -- with the runner -------------------------------------------------------------------------


async def test_runner_folds_the_log_and_queries_on_its_reader(
    store: SQLiteEventStore, make_runner: RunnerFactory
) -> None:
    def reached(subscriber_id: int, goal: str, amount: str | None = None) -> NewEvent:
        data = {"subscriber_id": subscriber_id, "account_id": 1, "spot_id": 1, "goal": goal}
        return NewEvent("GoalReached", {**data, "standard": True, "amount": amount})

    await store.append("subscriber-1", [reached(1, "reg"), reached(1, "dep", "0.1")])
    await store.append("accounts", [NewEvent("AccountCreated", {"account_id": 2})])
    await store.append("subscriber-2", [reached(2, "reg"), reached(2, "dep", "0.2")])
    runner = make_runner([GoalStatsProjection()], batch_size=3)
    await runner.catch_up()

    def stats(conn: SqlConnection) -> list[dict[str, Any]]:
        return query_stats(conn, account_id=1, group_by=["goal", "day"], tz="Asia/Kolkata")

    rows = await runner.query(stats)
    assert [(r["goal"], r["count"], r["unique_subscribers"], r["sum"]) for r in rows] == [
        ("dep", 2, 2, "0.30"),
        ("reg", 2, 2, "0.00"),
    ]
    assert await runner.rebuild() == 5
    assert await runner.query(stats) == rows
    assert await runner.rebuild(one_pass=True) == 5
    assert await runner.query(stats) == rows

    def indexes(conn: SqlConnection) -> set[str]:
        if isinstance(runner.database, SQLiteProjectionDatabase):
            sql = "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE tablename = ?"
            sql += " AND schemaname = current_schema()"
        return {name for (name,) in conn.execute(sql, ("goal_facts",))}

    # The one-pass fold drops the index apply_batch reads, and builds it at the end.
    assert "goal_facts_subscriber" in await runner.query(indexes)
    # Then on, batch by batch as always.
    await store.append("subscriber-3", [reached(3, "dep", "0.7"), reached(1, "dep", "1")])
    await runner.catch_up()
    rows = await runner.query(stats)
    assert [(r["goal"], r["count"], r["unique_subscribers"], r["sum"]) for r in rows] == [
        ("dep", 4, 3, "2.00"),
        ("reg", 2, 2, "0.00"),
    ]
