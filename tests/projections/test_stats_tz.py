"""query_stats: local days in any zone, as_of, filters, validation; numbers computed by hand,
the same on both projection databases (SQLite and PostgreSQL).

America/Chicago is UTC-6 (CST) in winter and UTC-5 (CDT) in summer; in 2026 DST starts on
Sunday March 8 at 02:00 CST (08:00Z) and ends on Sunday November 1 at 02:00 CDT (07:00Z), so
the local day of March 8 lasts 23 hours (06:00Z to 05:00Z) and that of November 1, 25 hours
(05:00Z to 06:00Z on November 2). Asia/Kolkata is UTC+05:30 all year: its days start at
18:30Z.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore.base import RecordedEvent
from projections.database import SqlConnection
from projections.goal_stats import format_amount, parse_amount, to_us
from projections.stats_query import (
    MAX_DAYS,
    day_bounds,
    local_day,
    parse_as_of,
    parse_group_by,
    query_stats,
    resolve_tz,
)
from tests.projections.backends import Scope, examples
from tests.projections.test_goal_stats import (
    PROPERTY_SETTINGS,
    at,
    fold,
    goal_event,
    goal_logs,
    new_db,
)


@pytest.fixture
def conn(projection_db: Scope) -> SqlConnection:
    return new_db(projection_db.connect())


def stats(conn: SqlConnection, **arguments: Any) -> list[tuple[Any, ...]]:
    """query_stats rows as tuples (group values..., count, unique_subscribers, sum)."""
    arguments.setdefault("account_id", 1)
    return [tuple(row.values()) for row in query_stats(conn, **arguments)]


# -- America/Chicago -------------------------------------------------------------------------


@pytest.fixture
def fall_back(conn: SqlConnection) -> SqlConnection:
    """Goals around the 25-hour local day of 2026-11-01 in Chicago."""
    return fold(
        conn,
        [
            goal_event(1, "2026-11-01T04:59:59", 1),  # Oct 31 23:59:59 CDT
            goal_event(2, "2026-11-01T05:00:00", 1),  # Nov 1 00:00 CDT
            goal_event(3, "2026-11-01T12:00:00", 3, "dep", "0.1"),  # Nov 1 07:00 CST
            goal_event(4, "2026-11-02T05:30:00", 2),  # Nov 1 23:30 CST (Nov 2 in UTC)
            goal_event(5, "2026-11-02T06:00:00", 1),  # Nov 2 00:00 CST
            goal_event(6, "2026-11-02T06:00:01", 3, "dep", "0.2"),  # Nov 2 00:00:01 CST
        ],
    )


def test_chicago_days_across_the_end_of_dst(fall_back: SqlConnection) -> None:
    assert stats(fall_back, group_by=["day"], tz="America/Chicago") == [
        ("2026-10-31", 1, 1, "0.00"),
        ("2026-11-01", 3, 3, "0.10"),
        ("2026-11-02", 2, 2, "0.20"),
    ]
    assert stats(fall_back, group_by=["day"]) == [  # UTC days
        ("2026-11-01", 3, 2, "0.10"),
        ("2026-11-02", 3, 3, "0.20"),
    ]
    assert stats(fall_back, group_by=["day", "goal"], tz="America/Chicago") == [
        ("2026-10-31", "reg", 1, 1, "0.00"),
        ("2026-11-01", "dep", 1, 1, "0.10"),
        ("2026-11-01", "reg", 2, 2, "0.00"),
        ("2026-11-02", "dep", 1, 1, "0.20"),
        ("2026-11-02", "reg", 1, 1, "0.00"),
    ]


def test_uniques_are_exact_across_days(fall_back: SqlConnection) -> None:
    # subscriber 1 on all three local days, 3 on two: 3 subscribers, not 1 + 3 + 2
    assert stats(fall_back, tz="America/Chicago") == [(6, 3, "0.30")]
    assert stats(fall_back, group_by=["goal"], tz="America/Chicago") == [
        ("dep", 2, 1, "0.30"),
        ("reg", 4, 2, "0.00"),
    ]


def test_chicago_date_range(fall_back: SqlConnection) -> None:
    one_day = {"date_from": date(2026, 11, 1), "date_to": date(2026, 11, 1)}
    assert stats(fall_back, tz="America/Chicago", **one_day) == [(3, 3, "0.10")]
    assert stats(fall_back, group_by=["day"], tz="America/Chicago", **one_day) == [
        ("2026-11-01", 3, 3, "0.10")
    ]
    assert stats(fall_back, **one_day) == [(3, 2, "0.10")]  # the UTC day
    assert stats(fall_back, tz="America/Chicago", date_from=date(2026, 11, 2)) == [(2, 2, "0.20")]
    assert stats(fall_back, group_by=["day"], tz="America/Chicago", date_to=date(2026, 10, 31)) == [
        ("2026-10-31", 1, 1, "0.00")
    ]
    assert stats(fall_back, tz="America/Chicago", date_to=date(2026, 10, 30)) == [(0, 0, "0.00")]
    assert (
        stats(fall_back, group_by=["day"], tz="America/Chicago", date_to=date(2026, 10, 30)) == []
    )


def test_chicago_start_of_dst(conn: SqlConnection) -> None:
    fold(
        conn,
        [
            goal_event(1, "2026-03-08T05:59:59", 1),  # Mar 7 23:59:59 CST
            goal_event(2, "2026-03-08T06:00:00", 2),  # Mar 8 00:00 CST
            goal_event(3, "2026-03-09T04:59:59", 3),  # Mar 8 23:59:59 CDT
            goal_event(4, "2026-03-09T05:00:00", 4),  # Mar 9 00:00 CDT
            goal_event(5, "2026-03-09T05:30:00", 4),  # Mar 9 00:30 CDT
        ],
    )
    assert stats(conn, group_by=["day"], tz="America/Chicago") == [
        ("2026-03-07", 1, 1, "0.00"),
        ("2026-03-08", 2, 2, "0.00"),
        ("2026-03-09", 2, 1, "0.00"),
    ]
    chicago = ZoneInfo("America/Chicago")
    assert [
        (end - start) // 3_600_000_000
        for _, start, end in day_bounds(date(2026, 3, 7), date(2026, 3, 9), chicago)
    ] == [24, 23, 24]
    assert [
        (end - start) // 3_600_000_000
        for _, start, end in day_bounds(date(2026, 10, 31), date(2026, 11, 2), chicago)
    ] == [24, 25, 24]


# -- Asia/Kolkata ------------------------------------------------------------------------------


@pytest.fixture
def kolkata(conn: SqlConnection) -> SqlConnection:
    return fold(
        conn,
        [
            goal_event(1, "2026-11-24T18:29:00", 1, "reg"),  # Nov 24 23:59 IST
            goal_event(2, "2026-11-24T18:29:59.999999", 2, "dep", "0.1"),  # Nov 24 23:59:59.99
            goal_event(3, "2026-11-24T18:30:00", 2, "dep", "0.2"),  # Nov 25 00:00 IST
            goal_event(4, "2026-11-24T18:31:00", 1, "reg", spot_id=2),  # Nov 25 00:01 IST
        ],
    )


def test_kolkata_half_hour_days(kolkata: SqlConnection) -> None:
    assert stats(kolkata, group_by=["day"], tz="Asia/Kolkata") == [
        ("2026-11-24", 2, 2, "0.10"),
        ("2026-11-25", 2, 2, "0.20"),
    ]
    assert stats(kolkata, group_by=["day"]) == [("2026-11-24", 4, 2, "0.30")]
    assert stats(kolkata, group_by=["day", "goal"], tz="Asia/Kolkata") == [
        ("2026-11-24", "dep", 1, 1, "0.10"),
        ("2026-11-24", "reg", 1, 1, "0.00"),
        ("2026-11-25", "dep", 1, 1, "0.20"),
        ("2026-11-25", "reg", 1, 1, "0.00"),
    ]
    nov_25 = {"date_from": date(2026, 11, 25), "date_to": date(2026, 11, 25)}
    assert stats(kolkata, tz="Asia/Kolkata", **nov_25) == [(2, 2, "0.20")]
    assert stats(kolkata, tz="Asia/Kolkata", date_to=date(2026, 11, 24)) == [(2, 2, "0.10")]


def test_spot_filter_and_groupings(kolkata: SqlConnection) -> None:
    assert stats(kolkata, group_by=["spot"], tz="Asia/Kolkata") == [
        (1, 3, 2, "0.30"),
        (2, 1, 1, "0.00"),
    ]
    assert stats(kolkata, spot_id=2, group_by=["day", "spot"], tz="Asia/Kolkata") == [
        ("2026-11-25", 2, 1, 1, "0.00")
    ]
    assert stats(kolkata, spot_id=1, group_by=["goal", "day"], tz="Asia/Kolkata") == [
        ("dep", "2026-11-24", 1, 1, "0.10"),
        ("dep", "2026-11-25", 1, 1, "0.20"),
        ("reg", "2026-11-24", 1, 1, "0.00"),
    ]
    rows = query_stats(kolkata, account_id=1, group_by=["spot", "goal", "day"], tz="UTC")
    assert rows[0] == {
        "spot": 1,
        "goal": "dep",
        "day": "2026-11-24",
        "count": 2,
        "unique_subscribers": 1,
        "sum": "0.30",
    }
    assert stats(kolkata, spot_id=3) == [(0, 0, "0.00")]
    assert stats(kolkata, account_id=2, group_by=["goal"]) == []
    assert stats(kolkata, account_id=None) == [(4, 2, "0.30")]


# -- as_of -------------------------------------------------------------------------------------


@pytest.fixture
def deposit(conn: SqlConnection) -> SqlConnection:
    return fold(
        conn,
        [
            goal_event(1, "2026-11-24T10:00:00", 1, "reg"),
            goal_event(2, "2026-11-24T12:00:00", 1, "dep", "100.50"),
            goal_event(3, "2026-11-24T13:00:00", 2, "reg", account_id=2),
        ],
    )


def test_as_of_before_and_after_a_deposit(deposit: SqlConnection) -> None:
    def as_of(moment: str, tz: str = "UTC") -> list[tuple[Any, ...]]:
        return stats(deposit, group_by=["goal"], as_of=parse_as_of(moment, tz), tz=tz)

    assert as_of("2026-11-24T09:59:59Z") == []
    assert as_of("2026-11-24T11:59:59.999999Z") == [("reg", 1, 1, "0.00")]
    assert as_of("2026-11-24T12:00:00Z") == [("dep", 1, 1, "100.50"), ("reg", 1, 1, "0.00")]
    assert as_of("2026-11-24T17:29:59+05:30") == [("reg", 1, 1, "0.00")]  # 11:59:59Z
    # without an offset, as_of is local to tz: 17:30 IST is 12:00Z
    assert as_of("2026-11-24T17:30", "Asia/Kolkata") == as_of("2026-11-24T12:00Z")
    assert as_of("2026-11-24T17:29", "Asia/Kolkata") == as_of("2026-11-24T11:59Z")
    naive = datetime(2026, 11, 24, 6, 0)  # 06:00 CST = 12:00Z
    assert stats(deposit, as_of=naive, tz="America/Chicago") == [(2, 1, "100.50")]


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"tz": "America"}, "unknown time zone"),
        ({"tz": "../etc/passwd"}, "unknown time zone"),
        ({"tz": ""}, "unknown time zone"),
        ({"group_by": ["goal", "week"]}, "unknown group_by key 'week'"),
        ({"group_by": "goal"}, "not a string"),
        ({"date_from": date(2026, 2, 1), "date_to": date(2026, 1, 1)}, "is after"),
        ({"date_to": date.max}, "out of range"),
        (
            {"date_from": date(1900, 1, 1), "date_to": date(2026, 1, 1), "group_by": ["day"]},
            f"at most {MAX_DAYS}",
        ),
    ],
)
def test_bad_input_is_a_value_error(
    deposit: SqlConnection, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        query_stats(deposit, account_id=1, **arguments)


def test_parsers() -> None:
    assert parse_group_by("goal, day,goal") == ("goal", "day")
    assert parse_group_by("") == parse_group_by(None) == ()
    with pytest.raises(ValueError, match="unknown group_by key 'hour'"):
        parse_group_by("hour")
    assert parse_as_of("2026-11-24T12:00:00Z") == at("2026-11-24T12:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_as_of("yesterday")
    assert resolve_tz("UTC") is UTC
    assert local_day(to_us(at("2026-11-24T18:30")), resolve_tz("Asia/Kolkata")) == date(
        2026, 11, 25
    )


# -- properties: query_stats equals a brute force in Python --------------------------------

ZONES = [
    "UTC",
    "America/Chicago",
    "Asia/Kolkata",
    "Asia/Kathmandu",  # +05:45
    "Australia/Lord_Howe",  # half-hour DST
    "America/St_Johns",  # -03:30, DST
    "Pacific/Chatham",  # +12:45, DST
    "America/Santiago",  # DST changes at midnight
]


@PROPERTY_SETTINGS
@given(
    moments=st.lists(
        st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
        max_size=20,
    ),
    zone=st.sampled_from(ZONES),
)
def test_day_bounds_agree_with_local_dates(moments: list[datetime], zone: str) -> None:
    tzinfo = resolve_tz(zone)
    for moment in moments:
        day = moment.astimezone(tzinfo).date()
        ((bound_day, start, end),) = day_bounds(day, day, tzinfo)
        assert bound_day == day
        assert start <= to_us(moment) < end


def brute_force(
    events: list[RecordedEvent], keys: tuple[str, ...], tz: str, as_of: datetime | None
) -> list[tuple[Any, ...]]:
    zone = resolve_tz(tz)
    groups: dict[tuple[Any, ...], list[RecordedEvent]] = defaultdict(list)
    for event in events:
        if as_of is not None and event.recorded_at > as_of:
            continue
        values = {
            "goal": event.data["goal"],
            "spot": event.data["spot_id"],
            "day": event.recorded_at.astimezone(zone).date().isoformat(),
        }
        groups[tuple(values[key] for key in keys)].append(event)
    if not keys and not groups:
        return [(0, 0, "0.00")]
    rows = []
    for group, members in sorted(groups.items()):
        total = sum((parse_amount(e.data["amount"]) or Decimal(0) for e in members), Decimal(0))
        uniques = len({e.data["subscriber_id"] for e in members})
        rows.append((*group, len(members), uniques, format_amount(total)))
    return rows


def test_query_equals_brute_force(projection_db: Scope) -> None:
    """``as_of``: around the time of one of the events (1 µs before, at, 1 µs after)."""

    @examples(PROPERTY_SETTINGS, projection_db, postgres=30)
    @given(
        events=goal_logs(),
        keys=st.lists(st.sampled_from(["goal", "day", "spot"]), unique=True, max_size=3),
        tz=st.sampled_from(ZONES),
        as_of_at=st.none() | st.tuples(st.integers(0, 40), st.sampled_from([-1, 0, 1])),
    )
    def check(
        events: list[RecordedEvent],
        keys: list[str],
        tz: str,
        as_of_at: tuple[int, int] | None,
    ) -> None:
        with projection_db.child() as scope:
            check_query(new_db(scope.connect()), events, keys, tz, as_of_at)

    check()


def check_query(
    conn: SqlConnection,
    events: list[RecordedEvent],
    keys: list[str],
    tz: str,
    as_of_at: tuple[int, int] | None,
) -> None:
    fold(conn, events)
    as_of = None
    if as_of_at is not None and events:
        index, delta = as_of_at
        as_of = events[index % len(events)].recorded_at + timedelta(microseconds=delta)
    rows = stats(conn, account_id=None, group_by=keys, tz=tz, as_of=as_of)
    assert rows == brute_force(events, tuple(keys), tz, as_of)
