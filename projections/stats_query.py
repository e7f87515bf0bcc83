"""Goal statistics from the ``goal_stats`` projection, in any IANA time zone and as of a time.

:func:`query_stats` reads ``goal_facts`` (one row per goal reached; see
:mod:`projections.goal_stats`), so every number is exact for any grouping and zone:

* **Local days.** The range ``date_from .. date_to`` (both inclusive, local dates in ``tz``)
  becomes UTC bounds with :mod:`zoneinfo`. Grouping by ``day`` joins the facts to a list of
  the range's local days as UTC intervals ``[start, next day's start)``, computed in Python:
  DST days last 23 or 25 hours, half-hour zones (``Asia/Kolkata``, +05:30) start their days
  at :30 UTC, and nothing is rounded to UTC hours. The list is a ``VALUES`` CTE (no temporary
  table: the runner's reader connection is ``query_only``), the outer loop of the join, so
  each day is one range scan of the ``(account_id, recorded_us)`` index.
* **Unique subscribers** are ``COUNT(DISTINCT subscriber_id)`` per group, never a sum of
  hourly or daily uniques.
* **as_of** T keeps the facts recorded at or before T: ``recorded_at`` is non-decreasing along
  the log, so that is exactly the log as it stood at T.
* **Sums** are ``SUM`` of the integer columns, turned into an exact decimal string with at
  least two decimals (``"0.30"``).

Without ``date_from``/``date_to``, the range is open on that side; grouped by ``day``, the
day list then runs from/to the local day of the first/last matching fact. Days and groups
with no facts have no row; with no ``group_by``, there is always one (total) row.

Bad input raises :class:`ValueError` with a message fit for a 400 answer: unknown time zone
or ``group_by`` key, ``date_from`` after ``date_to``, a range over :data:`MAX_DAYS` days.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from projections.database import SqlConnection
from projections.goal_stats import EPOCH, format_amount, to_us, units_to_decimal

GROUP_KEYS: Final[tuple[str, ...]] = ("goal", "day", "spot")
"""The keys :func:`query_stats` can group by; they are also the keys of its rows."""
MAX_DAYS: Final = 36_600
"""The longest range grouped by day (about a century)."""

_COLUMNS: Final = {"goal": "f.goal", "day": "d.day", "spot": "f.spot_id"}
_AGGREGATES: Final = (
    "COUNT(*), COUNT(DISTINCT f.subscriber_id), SUM(f.amount_whole), SUM(f.amount_frac)"
)


def resolve_tz(name: str) -> tzinfo:
    """The time zone of an IANA name (``"UTC"``, ``"Asia/Kolkata"``); ValueError if unknown."""
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as UTC") from exc


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """``"goal,day"`` -> ``("goal", "day")``; empty or None -> ``()``. ValueError if unknown."""
    keys = [key.strip() for key in (text or "").split(",") if key.strip()]
    return check_group_by(keys)


def check_group_by(keys: Sequence[str]) -> tuple[str, ...]:
    """``keys`` without repeats, in order; ValueError on one not in :data:`GROUP_KEYS`."""
    if isinstance(keys, str):
        raise ValueError("group_by must be a sequence of keys, not a string")
    unknown = [key for key in keys if key not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"unknown group_by key {unknown[0]!r}: use {', '.join(GROUP_KEYS)}")
    return tuple(dict.fromkeys(keys))


def parse_as_of(text: str, tz: str = "UTC") -> datetime:
    """An ISO 8601 time (``2026-11-24T12:00:00Z``); without an offset, it is local to ``tz``."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"as_of must be an ISO 8601 time, got {text!r}") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=resolve_tz(tz))


def day_start_us(day: date, zone: tzinfo) -> int:
    """The first instant of the local ``day`` in ``zone``, in µs since the epoch (UTC).

    Local midnight with ``fold=0``: where midnight is skipped (a DST gap at 00:00) that is the
    instant of the jump, where it repeats, its first occurrence.
    """
    try:
        return to_us(datetime.combine(day, time(), tzinfo=zone))
    except OverflowError as exc:
        raise ValueError(f"date out of range: {day}") from exc


def local_day(us: int, zone: tzinfo) -> date:
    """The local date, in ``zone``, of the instant ``us`` µs after the epoch."""
    return (EPOCH + timedelta(microseconds=us)).astimezone(zone).date()


def day_bounds(first: date, last: date, zone: tzinfo) -> list[tuple[date, int, int]]:
    """``(day, start_us, end_us)`` for each local day from ``first`` to ``last`` inclusive;
    ``end_us`` (exclusive) is the next day's start."""
    count = (last - first).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"the range spans {count} days; group by day over at most {MAX_DAYS}")
    if count <= 0:
        return []
    try:
        days = [first + timedelta(days=i) for i in range(count + 1)]
    except OverflowError as exc:
        raise ValueError(f"date out of range: {last}") from exc
    starts = [day_start_us(day, zone) for day in days]
    return [(days[i], starts[i], starts[i + 1]) for i in range(count)]


def query_stats(
    conn: SqlConnection,
    *,
    account_id: int | None,
    date_from: date | None = None,
    date_to: date | None = None,
    spot_id: int | None = None,
    group_by: Sequence[str] = (),
    tz: str = "UTC",
    as_of: datetime | None = None,
) -> list[dict[str, Any]]:
    """Goal statistics: rows ``{<group keys>, "count", "unique_subscribers", "sum"}``.

    ``account_id`` None is the admin view (every account). ``date_from``/``date_to`` are
    local dates in ``tz`` (both inclusive, either may be None); ``spot_id`` filters;
    ``group_by`` is a subset of :data:`GROUP_KEYS` (row values: ``goal`` str, ``day`` ISO
    date str, ``spot`` int), rows ordered by those keys in that order; ``as_of`` keeps the
    goals recorded at or before it (a naive time is local to ``tz``). ``sum`` is an exact
    decimal string. Runs in one read transaction unless ``conn`` is already in one.
    """
    keys = check_group_by(group_by)
    zone = resolve_tz(tz)
    if date_from is not None and date_to is not None and date_from > date_to:
        raise ValueError(f"from ({date_from}) is after to ({date_to})")
    where = ["1 = 1"]
    params: list[object] = []
    if account_id is not None:
        where.append("f.account_id = ?")
        params.append(account_id)
    if spot_id is not None:
        where.append("f.spot_id = ?")
        params.append(spot_id)
    if as_of is not None:
        where.append("f.recorded_us <= ?")
        params.append(to_us(as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=zone)))
    if date_from is not None:
        where.append("f.recorded_us >= ?")
        params.append(day_start_us(date_from, zone))
    if date_to is not None:
        where.append("f.recorded_us < ?")
        if date_to == date.max:
            raise ValueError(f"date out of range: {date_to}")
        params.append(day_start_us(date_to + timedelta(days=1), zone))

    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        rows = _select(conn, keys, zone, date_from, date_to, " AND ".join(where), params)
    finally:
        if own:
            conn.execute("COMMIT")  # nothing written: the same as a rollback
    return [
        {
            **dict(zip(keys, row[: len(keys)], strict=True)),
            "count": row[-4],
            "unique_subscribers": row[-3],
            "sum": format_amount(units_to_decimal(_int(row[-2]), _int(row[-1]))),
        }
        for row in rows
    ]


def _select(
    conn: SqlConnection,
    keys: tuple[str, ...],
    zone: tzinfo,
    date_from: date | None,
    date_to: date | None,
    where: str,
    params: list[object],
) -> list[tuple[Any, ...]]:
    columns = [_COLUMNS[key] for key in keys]
    grouping = f" GROUP BY {', '.join(columns)}" if keys else ""
    select = ", ".join([*columns, _AGGREGATES])
    if "day" not in keys:
        sql = f"SELECT {select} FROM goal_facts AS f WHERE {where}{grouping}"
        return _ordered(conn.execute(sql, params).fetchall(), len(keys))
    if date_from is None or date_to is None:
        first_us, last_us = conn.execute(
            f"SELECT MIN(f.recorded_us), MAX(f.recorded_us) FROM goal_facts AS f WHERE {where}",
            params,
        ).fetchone()
        if first_us is None:
            return []
        date_from = date_from or local_day(first_us, zone)
        date_to = date_to or local_day(last_us, zone)
    days = day_bounds(date_from, date_to, zone)
    if not days:
        return []
    # Literals we made ourselves (ISO dates, integers): no bound-parameter limit to mind.
    values = ", ".join(f"('{day.isoformat()}', {start}, {end})" for day, start, end in days)
    sql = (
        f"WITH d(day, start_us, end_us) AS (VALUES {values})"
        f" SELECT {select} FROM d CROSS JOIN goal_facts AS f"
        f" WHERE f.recorded_us >= d.start_us AND f.recorded_us < d.end_us AND {where}"
        f"{grouping}"
    )
    return _ordered(conn.execute(sql, params).fetchall(), len(keys))


def _ordered(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """Rows by their group values: text in code point order (SQLite's ``BINARY``) whatever
    the database's collation; group values are never NULL."""
    return sorted(rows, key=lambda row: row[:width])


def _int(value: Any) -> int | None:
    """A ``SUM``: an int on SQLite, a Decimal (``NUMERIC``) on PostgreSQL, None if empty."""
    return None if value is None else int(value)
