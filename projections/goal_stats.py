"""The ``goal_stats`` projection: goals reached, per fact and per hour, with exact money.

Its source is ``GoalReached`` (docs/events.md). Two tables:

* ``goal_facts``: one row per ``GoalReached`` (``position`` is the key), with the time it was
  recorded (``recorded_us``, microseconds since the Unix epoch, UTC) and its subscriber.
  Exact unique subscribers for *any* grouping and time zone, and statistics ``as_of`` a past
  time, need the individual facts: hourly uniques do not add up (a subscriber who reaches a
  goal at 10:00 and 11:00 is one subscriber that day), and local days in a half-hour zone
  (``Asia/Kolkata``) do not start on a UTC hour. :mod:`projections.stats_query` reads this
  table.
* ``goal_stats_hourly``: per account, spot, goal and UTC hour (``hour_us``, the hour's
  start): ``count``, ``unique_subscribers`` (exact within that hour) and the sum. Upserted
  with increments per batch; a subscriber counts as new in an hour if neither an earlier
  fact in the table nor an earlier event of the batch has the same key and hour (the table's
  are read with one query per batch, for the batch's subscribers and hours). A one-pass
  rebuild into a shadow (``postback rebuild``, and ``postback verify``'s replay in
  child processes) writes only the facts, without the index by subscriber (built once
  at the end), and adds up the hours in memory (:class:`GoalStatsOnePass`): a pure
  function of the facts either way, and such a ``verify`` compares the two.

Money is exact and never a float. ``amount`` is a decimal string (at most 15 integer digits
and 8 decimal places, as ``postback.amounts`` accepts). Its 1e-8 units can exceed SQLite's
64-bit integers (1e15 needs 1e23 units), so an amount is stored as two integers:
``whole = floor(amount)`` and ``frac`` = the rest in units of 1e-8 (``0 <= frac < 10**8``).
``SUM`` over either column is exact in SQL (SQLite raises on integer overflow rather than
rounding, and that needs sums beyond 9.2e18; PostgreSQL sums ``BIGINT`` into ``NUMERIC``,
which readers turn back into ``int``). :func:`units_to_decimal` turns them back into a
:class:`~decimal.Decimal`. A null or unreadable amount adds nothing to the sum (the goal still
counts); an amount with more than 8 decimal places (which the service never writes) is rounded
half-even to 8.

Events whose data lack an integer ``account_id``, ``spot_id`` or ``subscriber_id`` or a
string ``goal`` are skipped: a projection must not stop the runner on one bad event.
``apply_batch`` also skips events at or below the highest position already in
``goal_facts``, so applying a batch twice cannot double the hourly counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import partial
from typing import Final, NamedTuple

from eventstore.base import RecordedEvent
from projections.database import SqlConnection, in_chunks

GOAL_REACHED: Final = "GoalReached"
UNITS_PER_WHOLE: Final = 10**8
"""``frac`` columns count units of 1e-8."""
HOUR_US: Final = 3_600_000_000
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_QUANTUM: Final = Decimal(1).scaleb(-8)
_CENTS: Final = Decimal("0.01")

# apply_batch's uniqueness check reads the facts by subscriber.
_FACTS_BY_SUBSCRIBER: Final = (
    "CREATE INDEX IF NOT EXISTS goal_facts_subscriber ON goal_facts (subscriber_id, recorded_us)"
)
SCHEMA_SQL: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS goal_facts (
        position BIGINT PRIMARY KEY,
        account_id BIGINT NOT NULL,
        spot_id BIGINT NOT NULL,
        goal TEXT NOT NULL,
        subscriber_id BIGINT NOT NULL,
        recorded_us BIGINT NOT NULL,
        amount_whole BIGINT NOT NULL,
        amount_frac BIGINT NOT NULL
    ) WITHOUT ROWID
    """,
    _FACTS_BY_SUBSCRIBER,
    """
    CREATE TABLE IF NOT EXISTS goal_stats_hourly (
        account_id BIGINT NOT NULL,
        spot_id BIGINT NOT NULL,
        goal TEXT NOT NULL,
        hour_us BIGINT NOT NULL,
        count BIGINT NOT NULL,
        unique_subscribers BIGINT NOT NULL,
        sum_whole BIGINT NOT NULL,
        sum_frac BIGINT NOT NULL,
        PRIMARY KEY (account_id, spot_id, goal, hour_us)
    ) WITHOUT ROWID
    """,
)

READ_INDEXES: Final[tuple[str, ...]] = (
    "CREATE INDEX IF NOT EXISTS goal_facts_account_time ON goal_facts (account_id, recorded_us)",
    "CREATE INDEX IF NOT EXISTS goal_facts_time ON goal_facts (recorded_us)",
)
"""For statistics queries only (:mod:`projections.stats_query`)."""

_INSERT_FACT = (
    "INSERT INTO goal_facts (position, account_id, spot_id, goal, subscriber_id,"
    " recorded_us, amount_whole, amount_frac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_FACTS_OF = (
    "SELECT account_id, spot_id, goal, subscriber_id, recorded_us FROM goal_facts"
    " WHERE subscriber_id IN ({marks}) AND recorded_us >= ? AND recorded_us < ?"
)
# SET expressions read the row's old values (qualified: PostgreSQL requires it); frac stays
# in [0, 10**8), so / and % see no negative operand.
_H = "goal_stats_hourly"
_UPSERT_HOUR = (
    f"INSERT INTO {_H} (account_id, spot_id, goal, hour_us, count,"
    " unique_subscribers, sum_whole, sum_frac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account_id, spot_id, goal, hour_us) DO UPDATE SET"
    f" count = {_H}.count + excluded.count,"
    f" unique_subscribers = {_H}.unique_subscribers + excluded.unique_subscribers,"
    f" sum_whole = {_H}.sum_whole + excluded.sum_whole"
    f" + ({_H}.sum_frac + excluded.sum_frac) / {UNITS_PER_WHOLE},"
    f" sum_frac = ({_H}.sum_frac + excluded.sum_frac) % {UNITS_PER_WHOLE}"
)


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch (exact; a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _ONE_US


def parse_amount(value: object) -> Decimal | None:
    """The exact amount of a ``GoalReached`` (a decimal string), rounded half-even to 8
    places if it has more; None for null, for anything that is not a finite number and for
    magnitudes of 1e15 or more (the service refuses both at intake)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        return None
    if not amount.is_finite():
        return None
    if amount.is_zero():
        return Decimal(0)  # whatever its exponent (0E+1000000 is 0, and cheap to split)
    if amount.adjusted() >= 15:  # 1e15 or more; abs() could overflow the context
        return None
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -8:
        amount = amount.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)
    return amount


def split_units(amount: Decimal | None) -> tuple[int, int]:
    """``(whole, frac)``: ``amount == whole + frac * 1e-8`` with ``0 <= frac < 10**8``.

    ``amount`` must have at most 8 decimal places (as :func:`parse_amount` returns them).
    Integer arithmetic only: exact whatever the decimal context's precision.
    """
    if amount is None:
        return 0, 0
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    assert exponent >= -8, amount
    units = int("".join(map(str, digits)) or "0") * int(10 ** (exponent + 8))
    return divmod(-units if sign else units, UNITS_PER_WHOLE)


_SCALE: Final = tuple(10 ** (8 - places) for places in range(9))
"""1e-8 units per unit of the last decimal place, by the number of decimal places."""


def amount_units(value: object) -> tuple[int, int] | None:
    """``split_units(parse_amount(value))``, None where :func:`parse_amount` gives None.

    Amounts as the service writes them (``-?digits[.digits]``, at most 15 integer digits
    and 8 decimals, ASCII) are split with integer arithmetic on the text, without a
    Decimal or a regular expression (this runs for every goal of a rebuild); anything
    else takes the general path.
    """
    if type(value) is str:
        whole, dot, fraction = value.partition(".")
        negative = whole.startswith("-")
        digits = whole[1:] if negative else whole
        if (
            0 < len(digits) <= 15
            and digits.isascii()
            and digits.isdigit()
            and (not dot or (0 < len(fraction) <= 8 and fraction.isascii() and fraction.isdigit()))
        ):
            units = int(digits) * UNITS_PER_WHOLE
            if fraction:
                units += int(fraction) * _SCALE[len(fraction)]
            return divmod(-units if negative else units, UNITS_PER_WHOLE)
    parsed = parse_amount(value)
    return None if parsed is None else split_units(parsed)


def units_to_decimal(whole: int | None, frac: int | None) -> Decimal:
    """The exact value of ``whole + frac * 1e-8`` (None counts as 0, as from an empty SUM)."""
    units = (whole or 0) * UNITS_PER_WHOLE + (frac or 0)
    return Decimal(f"{units}E-8")  # built from a string: exact, no context rounding


def format_amount(value: Decimal) -> str:
    """The canonical amount: plain notation, at least two decimals (``"0.30"``, ``"100.50"``,
    ``"0.12345678"``). The one definition, used by the service's answers too."""
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent > -2:
        normalized = normalized.quantize(_CENTS)
    text = format(normalized, "f")
    return text[1:] if text.startswith("-") and not normalized else text


class Fact(NamedTuple):
    """A ``goal_facts`` row, its columns in order."""

    position: int
    account_id: int
    spot_id: int
    goal: str
    subscriber_id: int
    recorded_us: int
    amount_whole: int
    amount_frac: int

    @property
    def hour_us(self) -> int:
        return self.recorded_us - self.recorded_us % HOUR_US


_new_fact: Final = partial(tuple.__new__, Fact)
"""``Fact`` from a tuple of its columns, without the Python-level ``Fact.__new__``."""


def fact_of(event: RecordedEvent) -> Fact | None:
    """The ``goal_facts`` row of ``event``; None if it is not a (well-formed) GoalReached.

    This runs for every event of a rebuild: the ids are checked with ``type(...) is int``
    (an int, not a bool, as JSON gives them) and the row built without ``Fact.__new__``,
    a quarter of its cost."""
    if event.type != GOAL_REACHED:
        return None
    data = event.data
    account_id, spot_id = data.get("account_id"), data.get("spot_id")
    subscriber_id, goal = data.get("subscriber_id"), data.get("goal")
    if type(account_id) is not int or type(spot_id) is not int or type(subscriber_id) is not int:
        return None
    if not isinstance(goal, str):
        return None
    amount = data.get("amount")
    whole, frac = (amount is not None and amount_units(amount)) or (0, 0)
    row = (event.position, account_id, spot_id, goal, subscriber_id, event.recorded_us, whole, frac)
    fact: Fact = _new_fact(row)
    return fact


@dataclass(slots=True)
class _Hour:
    """Increments of one ``goal_stats_hourly`` row within a batch."""

    count: int = 0
    uniques: int = 0
    whole: int = 0
    frac: int = 0

    @property
    def units(self) -> int:
        return self.whole * UNITS_PER_WHOLE + self.frac


def _seen_in_hours(
    conn: SqlConnection, facts: Sequence[Fact]
) -> set[tuple[int, int, str, int, int]]:
    """``(account_id, spot_id, goal, hour_us, subscriber_id)`` of the facts already in the
    table for the subscribers of ``facts``, in the hours ``facts`` span: one query per
    :func:`~projections.database.in_chunks` list, not one probe per fact."""
    low = min(fact.hour_us for fact in facts)
    high = max(fact.hour_us for fact in facts) + HOUR_US
    seen: set[tuple[int, int, str, int, int]] = set()
    for marks, ids in in_chunks({fact.subscriber_id for fact in facts}):
        rows = conn.execute(_FACTS_OF.format(marks=marks), [*ids, low, high]).fetchall()
        for account_id, spot_id, goal, subscriber_id, recorded_us in rows:
            hour_us = recorded_us - recorded_us % HOUR_US
            seen.add((account_id, spot_id, goal, hour_us, subscriber_id))
    return seen


# The hour as Fact.hour_us floors it: SQL's % keeps the dividend's sign (a time before 1970).
_HOUR_OF_FACT = f"recorded_us - ((recorded_us % {HOUR_US}) + {HOUR_US}) % {HOUR_US}"
_HOURS_FROM_FACTS = (
    f"INSERT INTO {_H} (account_id, spot_id, goal, hour_us, count, unique_subscribers,"
    " sum_whole, sum_frac)"
    f" SELECT account_id, spot_id, goal, {_HOUR_OF_FACT}, COUNT(*),"
    " COUNT(DISTINCT subscriber_id),"
    f" CAST(SUM(amount_whole) AS BIGINT) + CAST(SUM(amount_frac) AS BIGINT) / {UNITS_PER_WHOLE},"
    f" CAST(SUM(amount_frac) AS BIGINT) % {UNITS_PER_WHOLE}"
    " FROM goal_facts"
    f" GROUP BY account_id, spot_id, goal, {_HOUR_OF_FACT}"
)
"""Every hourly row from the facts: what the increments of :meth:`apply_batch` add up to
(the uniques of a key and hour are its distinct subscribers; ``frac`` stays in
``[0, 10**8)``)."""


class GoalStatsProjection:
    """See the module docstring. Stateless: any number of runners may share one."""

    name = "goal_stats"
    rebuild_weight = 3.9  # seconds per million events of bench/rebuild.py's log
    schema_sql: Sequence[str] = SCHEMA_SQL
    read_indexes: Sequence[str] = READ_INDEXES
    reads_event_fields: frozenset[str] = frozenset()  # no stream, metadata or hash

    def one_pass(self) -> GoalStatsOnePass:
        """The fold of a one-pass rebuild (see :class:`GoalStatsOnePass`)."""
        return GoalStatsOnePass()

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        facts = [fact for fact in map(fact_of, events) if fact is not None]
        if not facts:
            return
        (applied,) = conn.execute("SELECT COALESCE(MAX(position), 0) FROM goal_facts").fetchone()
        facts = [fact for fact in facts if fact.position > applied]
        if not facts:
            return
        seen = _seen_in_hours(conn, facts)
        hours: dict[tuple[int, int, str, int], _Hour] = {}
        for fact in facts:
            key = (fact.account_id, fact.spot_id, fact.goal, fact.hour_us)
            hour = hours.setdefault(key, _Hour())
            hour.count += 1
            hour.whole += fact.amount_whole
            hour.frac += fact.amount_frac
            if (*key, fact.subscriber_id) not in seen:
                seen.add((*key, fact.subscriber_id))
                hour.uniques += 1
        conn.executemany(_INSERT_FACT, facts)
        conn.executemany(
            _UPSERT_HOUR,
            [
                (*key, hour.count, hour.uniques, *divmod(hour.units, UNITS_PER_WHOLE))
                for key, hour in hours.items()
            ],
        )

    def reset(self, conn: SqlConnection) -> None:
        conn.execute("DROP TABLE IF EXISTS goal_facts")
        conn.execute("DROP TABLE IF EXISTS goal_stats_hourly")


ONE_PASS_UNIQUES: Final = 1_000_000
"""How many distinct (account, spot, goal, hour, subscriber) a one-pass rebuild keeps in
memory (about 80 bytes each: 30 MB for ``bench/rebuild.py``'s 410,000); beyond, it adds
up the hours from the facts in SQL at the end, as a ``GROUP BY`` with bounded memory."""

_INSERT_HOUR = (
    f"INSERT INTO {_H} (account_id, spot_id, goal, hour_us, count, unique_subscribers,"
    " sum_whole, sum_frac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class _HourTally:
    """One ``goal_stats_hourly`` row as a one-pass rebuild adds it up."""

    __slots__ = ("count", "subscribers", "units")

    def __init__(self) -> None:
        self.count = 0
        self.units = 0
        self.subscribers: set[int] = set()


class GoalStatsOnePass:
    """``goal_stats``'s fold for one one-pass rebuild (:class:`~projections.runner.OnePassFold`).

    Each batch writes its facts, and adds them to the hours it tallies in memory: count,
    sum in 1e-8 units and the set of subscribers, which makes the uniques exact. The
    index by subscriber, which only :meth:`GoalStatsProjection.apply_batch` reads, is
    dropped at the first batch and built once by :meth:`finish` (from the finished table:
    cheaper than keeping it up to date fact by fact). :meth:`finish` writes the hours; or,
    should the tally have outgrown ``uniques`` (:data:`ONE_PASS_UNIQUES`), it drops the
    tally there and then and computes the hours from the facts in SQL. This took a rebuild
    of ``bench/rebuild.py``'s 700,000 facts from 1.1 s to 0.55 s for the hours.
    """

    def __init__(self, uniques: int = ONE_PASS_UNIQUES) -> None:
        self._limit = uniques
        self._hours: dict[tuple[int, int, str, int], _HourTally] | None = {}
        self._uniques = 0
        self._tallied = 0  # the last position tallied
        self._index_dropped = False

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        if not self._index_dropped:
            conn.execute("DROP INDEX IF EXISTS goal_facts_subscriber")
            self._index_dropped = True
        facts = [fact for fact in map(fact_of, events) if fact is not None]
        if not facts:
            return
        conn.executemany(_INSERT_FACT, facts)
        if facts[0].position <= self._tallied:
            # Never in a runner's rebuild (one transaction per batch, none retried); kept
            # so that a batch folded again cannot count twice in memory.
            facts = [fact for fact in facts if fact.position > self._tallied]
        if self._hours is not None and facts:
            self._tally(self._hours, facts)
            self._tallied = facts[-1].position

    def _tally(self, hours: dict[tuple[int, int, str, int], _HourTally], facts: list[Fact]) -> None:
        uniques = self._uniques
        for fact in facts:
            recorded_us = fact.recorded_us
            key = (fact.account_id, fact.spot_id, fact.goal, recorded_us - recorded_us % HOUR_US)
            hour = hours.get(key)
            if hour is None:
                hour = hours[key] = _HourTally()
            hour.count += 1
            hour.units += fact.amount_whole * UNITS_PER_WHOLE + fact.amount_frac
            subscribers = hour.subscribers
            if fact.subscriber_id not in subscribers:
                subscribers.add(fact.subscriber_id)
                uniques += 1
        self._uniques = uniques
        if uniques > self._limit:
            self._hours = None  # freed now; finish() adds up in SQL

    def finish(self, conn: SqlConnection) -> None:
        conn.execute(f"DELETE FROM {_H}")
        if self._hours is None:
            conn.execute(_HOURS_FROM_FACTS)
        else:
            conn.executemany(
                _INSERT_HOUR,
                [
                    (*key, hour.count, len(hour.subscribers), *divmod(hour.units, UNITS_PER_WHOLE))
                    for key, hour in self._hours.items()
                ],
            )
            self._hours = None
        conn.execute(_FACTS_BY_SUBSCRIBER)
