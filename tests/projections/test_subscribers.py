"""The subscribers projection: exact numbers, re-application, the view it replaces, splits.

Hand-built events (chosen ``recorded_at``) are folded with ``apply_batch`` on a plain
connection of the projection database (SQLite or PostgreSQL); random logs go through a real
:class:`SQLiteEventStore` and the runner, and are compared with
:func:`postback.views.subscriber_view` (the fold the API serves today).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore.base import NewEvent, RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from postback.model import Subscriber
from postback.views import subscriber_view
from projections.database import SqlConnection
from projections.goal_stats import format_amount
from projections.profiles import ProfilesProjection, profile_row
from projections.runner import Projection, ProjectionRunner
from projections.subscribers import SubscribersProjection, subscriber_of, subscriber_row
from tests.projections.backends import Scope, examples, transaction
from tests.projections.conftest import RunnerFactory
from tests.projections.helpers import postback_meta
from tests.projections.test_goal_stats import PROPERTY_SETTINGS, at, split

T0 = at("2026-11-24T10:00")


# -- hand-built events -------------------------------------------------------------------------


def logged(
    position: int, event_type: str, stream: str, data: dict[str, Any], when: datetime
) -> RecordedEvent:
    """An event as the store would return it."""
    return RecordedEvent(
        position=position,
        stream=stream,
        version=1,
        event_id=uuid.uuid4(),
        type=event_type,
        schema_version=1,
        data=data,
        metadata={},
        recorded_at=when,
        hash=b"",
    )


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def created(position: int, subscriber_id: int, clickid: str | None = "ABC") -> RecordedEvent:
    return logged(
        position, "SubscriberCreated", "subscribers", created_data(subscriber_id, clickid), T0
    )


def created_data(subscriber_id: int, clickid: str | None = "ABC") -> dict[str, Any]:
    return {
        "subscriber_id": subscriber_id,
        "account_id": 1,
        "spot_id": 1,
        "spot_token": f"tok-{subscriber_id}",
        "user_id": f"{7700 + subscriber_id}",
        "clickid": clickid,
        "fbclid": None,
        "fbp": None,
    }


def goal_data(
    subscriber_id: int, goal: str, amount: str | None = None, profile: Any = None
) -> dict[str, Any]:
    return {
        "subscriber_id": subscriber_id,
        "account_id": 1,
        "spot_id": 1,
        "goal": goal,
        "standard": goal in ("reg", "dep", "redep", "rebill"),
        "amount": amount,
        "txid": None,
        "profile": profile,
    }


def reached(
    position: int,
    when: datetime,
    subscriber_id: int,
    goal: str,
    amount: str | None = None,
    profile: Any = None,
) -> RecordedEvent:
    data = goal_data(subscriber_id, goal, amount, profile)
    return logged(position, "GoalReached", f"subscriber-{subscriber_id}", data, when)


def contact(position: int, when: datetime, subscriber_id: int) -> RecordedEvent:
    data = {"subscriber_id": subscriber_id, "account_id": 1, "spot_id": 1, "user_id": "7788"}
    return logged(position, "ContactRecorded", f"subscriber-{subscriber_id}", data, when)


def player(
    position: int, when: datetime, subscriber_id: int, player_id: str, previous: str | None = None
) -> RecordedEvent:
    data = {
        "subscriber_id": subscriber_id,
        "account_id": 1,
        "player_id": player_id,
        "previous": previous,
    }
    return logged(position, "PlayerIdAssigned", f"subscriber-{subscriber_id}", data, when)


PROJECTIONS: tuple[Projection, ...] = (SubscribersProjection(), ProfilesProjection())


def new_db(scope: Scope) -> SqlConnection:
    """A connection to a new empty database of ``scope``, with both projections' tables."""
    conn = scope.connect()
    with transaction(conn):
        for projection in PROJECTIONS:
            for statement in projection.schema_sql:
                conn.execute(statement)
    return conn


def fold(conn: SqlConnection, *batches: Sequence[RecordedEvent]) -> SqlConnection:
    """Apply each batch to both projections in its own transaction, as the runner does."""
    for batch in batches:
        with transaction(conn):
            for projection in PROJECTIONS:
                projection.apply_batch(conn, batch)
    return conn


def dump(conn: SqlConnection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both projections, by their first two columns (never NULL when tied)."""
    return {
        table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=lambda row: row[:2])
        for table in ("subscribers", "subscriber_goals", "profiles")
    }


# -- exact numbers -------------------------------------------------------------------------


def test_deposits_goals_and_counts_are_exact(projection_db: Scope) -> None:
    conn = fold(
        new_db(projection_db),
        [
            created(1, 1),
            reached(2, minutes(1), 1, "reg"),
            reached(3, minutes(2), 1, "dep", "0.10"),
            contact(4, minutes(3), 1),
            reached(5, minutes(4), 1, "redep", "0.20"),
        ],
        [
            reached(6, minutes(5), 1, "rebill", "5.00"),
            reached(7, minutes(6), 1, "vip"),
            reached(8, minutes(7), 1, "redep", None),  # counts, adds nothing
            reached(9, minutes(8.5), 1, "vip", "1.00"),
            reached(10, minutes(9), 1, "rebill"),
        ],
    )
    assert subscriber_row(conn, 1) == {
        "id": 1,
        "spot": "tok-1",
        "user_id": "7701",
        "clickid": "ABC",
        "registered_at": "2026-11-24T10:01:00+00:00",
        "first_deposit": {"at": "2026-11-24T10:02:00+00:00", "amount": "0.10"},
        "deposits": {"count": 3, "total": "0.30"},
        "rebills": 2,
        "goals": {
            "reg": {
                "count": 1,
                "first_at": "2026-11-24T10:01:00+00:00",
                "last_at": "2026-11-24T10:01:00+00:00",
            },
            "dep": {
                "count": 1,
                "first_at": "2026-11-24T10:02:00+00:00",
                "last_at": "2026-11-24T10:02:00+00:00",
            },
            "redep": {
                "count": 2,
                "first_at": "2026-11-24T10:04:00+00:00",
                "last_at": "2026-11-24T10:07:00+00:00",
            },
            "rebill": {
                "count": 2,
                "first_at": "2026-11-24T10:05:00+00:00",
                "last_at": "2026-11-24T10:09:00+00:00",
            },
            "vip": {
                "count": 2,
                "first_at": "2026-11-24T10:06:00+00:00",
                "last_at": "2026-11-24T10:08:30+00:00",
            },
        },
        "contacts": 1,
    }
    row = subscriber_row(conn, 1)
    assert row is not None
    assert list(row["goals"]) == ["reg", "dep", "redep", "rebill", "vip"]  # first reached
    assert conn.execute(
        "SELECT first_deposit_whole, first_deposit_frac, deposit_whole, deposit_frac"
        " FROM subscribers"
    ).fetchone() == (0, 10_000_000, 0, 30_000_000)


def test_large_negative_and_null_amounts(projection_db: Scope) -> None:
    big = "999999999999999.99999999"
    conn = fold(
        new_db(projection_db),
        [
            created(1, 1, clickid=None),
            reached(2, minutes(0.000001), 1, "dep", None),
            reached(3, minutes(1), 1, "redep", big),
            reached(4, minutes(2), 1, "redep", big),
            reached(5, minutes(3), 1, "redep", "-0.00000001"),
        ],
    )
    row = subscriber_row(conn, 1)
    assert row is not None
    assert row["clickid"] is None
    assert row["registered_at"] is None
    assert row["first_deposit"] == {"at": "2026-11-24T10:00:00.000060+00:00", "amount": None}
    assert row["deposits"] == {"count": 4, "total": "1999999999999999.99999997"}


def test_events_of_other_streams_and_malformed_goals_are_skipped(projection_db: Scope) -> None:
    conn = fold(
        new_db(projection_db),
        [
            created(1, 1),
            logged(2, "GoalReached", "subscriber-x", goal_data(1, "reg"), T0),
            logged(3, "GoalReached", "postback-log", goal_data(1, "reg"), T0),
            logged(4, "GoalReached", "subscriber-1", {"goal": None}, T0),
            logged(5, "Happened", "subscriber-1", {}, T0),
            logged(6, "SubscriberCreated", "subscribers", {"subscriber_id": "2"}, T0),
        ],
    )
    assert dump(conn)["subscribers"][0][-1] == 1  # last_position: only the creation
    assert dump(conn)["subscriber_goals"] == []
    assert subscriber_row(conn, 2) is None


def test_goals_before_the_creation_make_the_row(projection_db: Scope) -> None:
    conn = fold(new_db(projection_db), [reached(1, T0, 5, "reg")], [created(2, 5)])
    row = subscriber_row(conn, 5)
    assert row is not None
    assert (row["spot"], row["registered_at"]) == ("tok-5", "2026-11-24T10:00:00+00:00")


def test_a_batch_applied_twice_counts_once(projection_db: Scope) -> None:
    batch = [
        created(1, 1),
        reached(2, minutes(1), 1, "dep", "0.10", {"level": 1}),
        contact(3, minutes(2), 1),
        player(4, minutes(3), 1, "p1"),
        reached(5, minutes(4), 1, "redep", "0.20"),
    ]
    conn = fold(new_db(projection_db), batch)
    before = dump(conn)
    fold(conn, batch, batch[2:], batch[4:])
    assert dump(conn) == before
    assert dump(conn)["subscribers"][0][-1] == 5


def test_unknown_subscriber_and_reset(projection_db: Scope) -> None:
    conn = fold(new_db(projection_db), [created(1, 1), reached(2, T0, 1, "reg")])
    assert subscriber_row(conn, 2) is None
    SubscribersProjection().reset(conn)
    for statement in SubscribersProjection.schema_sql:
        conn.execute(statement)
    assert subscriber_row(conn, 1) is None
    assert dump(conn)["subscriber_goals"] == []


# -- random logs through a real store ------------------------------------------------------------

SUBSCRIBER_IDS = (1, 2, 3)
GOALS = ("reg", "dep", "redep", "rebill", "vip", "kyc")
PROFILES: tuple[Any, ...] = (
    None,
    {},
    {"level": 1},
    {"level": 2, "country": "FR"},
    {"vip": True, "note": None},
)
Log = list[tuple[str, list[NewEvent]]]


def random_amount(rng: random.Random) -> str | None:
    """None, or a canonical amount (as the service writes it): up to 15 + 8 digits."""
    if rng.random() < 0.2:
        return None
    places = rng.randint(0, 8)
    digits = rng.randint(1, 15 + places)
    value = Decimal(rng.randint(-(10 ** min(digits, 9)), 10**digits - 1)).scaleb(-places)
    return format_amount(value)


def random_log(rng: random.Random, size: int) -> Log:
    """``size`` subscriber events (goals, player ids, contacts) for three subscribers, whose
    ``SubscriberCreated`` come at random places, appended 1 to 4 per stream at a time."""
    items: list[tuple[str, NewEvent]] = []
    ids = itertools.count(1)

    def new(event_type: str, data: dict[str, Any], meta: dict[str, Any] | None = None) -> NewEvent:
        # the default id would draw from `random`, which hypothesis refuses
        event_id = uuid.UUID(int=next(ids), version=4)
        return NewEvent(event_type, data, meta or {}, event_id=event_id)

    for _ in range(size):
        subscriber_id = rng.choice(SUBSCRIBER_IDS)
        kind = rng.random()
        if kind < 0.65:
            goal = rng.choice(GOALS)
            data = goal_data(subscriber_id, goal, random_amount(rng), rng.choice(PROFILES))
            item = new("GoalReached", data, postback_meta(f"req-{next(ids)}"))
        elif kind < 0.85:
            data = {"subscriber_id": subscriber_id, "player_id": rng.choice(["p1", "p2", "p3"])}
            item = new("PlayerIdAssigned", {**data, "account_id": 1, "previous": None})
        else:
            data = {"subscriber_id": subscriber_id, "account_id": 1, "user_id": "u"}
            item = new("ContactRecorded", data)
        items.append((f"subscriber-{subscriber_id}", item))
    for subscriber_id in SUBSCRIBER_IDS:
        clickid = rng.choice([None, f"C{subscriber_id}"])
        item = new("SubscriberCreated", created_data(subscriber_id, clickid))
        items.insert(rng.randint(0, len(items)), ("subscribers", item))
    account = new("AccountCreated", {"account_id": 1})
    items.insert(rng.randint(0, len(items)), ("accounts", account))
    log: Log = []
    for stream, item in items:
        if log and log[-1][0] == stream and len(log[-1][1]) < rng.randint(1, 4):
            log[-1][1].append(item)
        else:
            log.append((stream, [item]))
    return log


def subscribers_of(log: Log) -> list[Subscriber]:
    return [
        Subscriber(
            data["subscriber_id"],
            data["account_id"],
            data["spot_id"],
            data["spot_token"],
            data["user_id"],
            data["clickid"],
            data["fbclid"],
            data["fbp"],
        )
        for stream, events in log
        if stream == "subscribers"
        for data in (new.data for new in events)
    ]


async def assert_matches_view(store: SQLiteEventStore, runner: ProjectionRunner, log: Log) -> None:
    for subscriber in subscribers_of(log):
        view = await subscriber_view(store, subscriber)
        row = await runner.query(partial(subscriber_row, subscriber_id=subscriber.id))
        profile = await runner.query(partial(profile_row, subscriber_id=subscriber.id))
        expected = dict(view)
        assert profile == {
            "player_id": expected.pop("player_id"),
            "profile": expected.pop("profile"),
        }
        assert row == expected
        assert row is not None
        assert list(row["goals"]) == list(view["goals"])  # the same key order


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_equals_subscriber_view(
    store: SQLiteEventStore, make_runner: RunnerFactory, seed: int
) -> None:
    log = random_log(random.Random(seed), 60)
    for stream, events in log:
        await store.append(stream, events)
    runner = make_runner([SubscribersProjection(), ProfilesProjection()], batch_size=7)
    await runner.catch_up()
    await assert_matches_view(store, runner, log)
    assert await runner.query(lambda conn: subscriber_row(conn, 4)) is None


# -- property: incremental (restarts, batch splits) equals a rebuild from zero ---------------

Dump = Callable[[SqlConnection], Any]


async def incremental_and_rebuilt(
    scope: Scope,
    workdir: Path,
    log: Log,
    batch_sizes: list[int],
    make: Callable[[], list[Projection]],
    rows: Dump,
    check: Callable[[SQLiteEventStore, ProjectionRunner], Any] | None = None,
) -> tuple[Any, Any]:
    """The rows after following the log append by append (a new runner, resuming from the
    checkpoint, after some appends), and the rows of a runner that built them from 0."""
    store = await SQLiteEventStore.open(workdir / "events.db", poll_interval=None)
    try:
        for i, (stream, events) in enumerate(log):
            await store.append(stream, events)
            last = i == len(log) - 1
            if i % 3 == 1 or last:
                # not always all of them: their checkpoints diverge, and a batch then starts
                # before some of them (the runner gives each only what is past its own)
                chosen = make() if last else make()[: 1 + i % 2]
                size = batch_sizes[i % len(batch_sizes)]
                runner = scope.runner(store, chosen, batch_size=size)
                try:
                    await runner.catch_up()
                finally:
                    await runner.close()
        incremental = scope.runner(store, make())
        rebuilt = scope.runner(store, make(), place="rebuilt", batch_size=10_000)
        try:
            assert await rebuilt.catch_up() == await incremental.catch_up()
            if check is not None:
                await check(store, incremental)
            return await incremental.query(rows), await rebuilt.query(rows)
        finally:
            await incremental.close()
            await rebuilt.close()
    finally:
        await store.close()


def run_property(
    projection_db: Scope,
    log: Log,
    batch_sizes: list[int],
    make: Callable[[], list[Projection]],
    rows: Dump,
    check: Callable[[SQLiteEventStore, ProjectionRunner], Any] | None = None,
) -> Any:
    """Hypothesis and pytest fixtures do not mix per example: a fresh directory, loop and
    child scope of ``projection_db`` (its databases)."""

    async def main(scope: Scope, workdir: Path) -> Any:
        async with asyncio.timeout(30):
            incremental, rebuilt = await incremental_and_rebuilt(
                scope, workdir, log, batch_sizes, make, rows, check
            )
            assert incremental == rebuilt
            return rebuilt

    with (
        projection_db.child() as scope,
        tempfile.TemporaryDirectory(prefix="projections-subscribers-") as workdir,
    ):
        return asyncio.run(main(scope, Path(workdir)))


random_logs = st.builds(random_log, st.randoms(use_true_random=False), st.integers(0, 30))
batch_size_lists = st.lists(st.integers(1, 6), min_size=1, max_size=4)


def test_incremental_equals_rebuild(projection_db: Scope) -> None:
    @examples(PROPERTY_SETTINGS, projection_db, postgres=15)
    @given(log=random_logs, batch_sizes=batch_size_lists)
    def check(log: Log, batch_sizes: list[int]) -> None:
        async def matches_view(store: SQLiteEventStore, runner: ProjectionRunner) -> None:
            await assert_matches_view(store, runner, log)

        rows = run_property(
            projection_db,
            log,
            batch_sizes,
            lambda: [SubscribersProjection(), ProfilesProjection()],
            dump,
            matches_view,
        )
        assert {row[0] for row in rows["subscribers"]} <= set(SUBSCRIBER_IDS)

    check()


def test_batch_splits_and_repeats_do_not_change_the_rows(projection_db: Scope) -> None:
    """Without the runner: any split of the log, each batch followed by a tail of itself or
    of an earlier batch applied a second time (which must change nothing)."""

    @examples(PROPERTY_SETTINGS, projection_db, postgres=30)
    @given(
        log=random_logs,
        cuts=st.lists(st.integers(0, 200), max_size=8),
        repeats=st.lists(st.integers(0, 200), max_size=8),
    )
    def check(log: Log, cuts: list[int], repeats: list[int]) -> None:
        with projection_db.child() as scope:
            splits_and_repeats(scope, log, cuts, repeats)

    check()


def splits_and_repeats(scope: Scope, log: Log, cuts: list[int], repeats: list[int]) -> None:
    flat = [(stream, new) for stream, batch in log for new in batch]
    events = [
        logged(i, new.type, stream, dict(new.data), minutes(i))
        for i, (stream, new) in enumerate(flat, start=1)
    ]
    whole = dump(fold(new_db(scope), events))
    pieces = split(events, cuts)
    conn = new_db(scope)
    for i, piece in enumerate(pieces):
        fold(conn, piece)
        if repeats:
            earlier = pieces[repeats[i % len(repeats)] % (i + 1)]
            fold(conn, earlier[repeats[-1] % (len(earlier) + 1) :])
    assert dump(conn) == whole


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ("subscriber-1", 1),
        ("subscriber-120", 120),
        ("subscriber-0", None),
        ("subscriber-01", None),
        ("subscriber-", None),
        ("subscriber--1", None),
        ("subscriber-1a", None),
        ("subscriber-\u0661", None),  # an Arabic-Indic digit: a digit, not ASCII
        ("subscriber-\u00b2", None),  # a superscript two
        ("subscribers-1", None),
        ("postback-log", None),
    ],
)
def test_the_subscriber_of_an_event_comes_from_its_stream(
    stream: str, expected: int | None
) -> None:
    event = logged(1, "GoalReached", stream, {"subscriber_id": 99}, minutes(0))
    assert subscriber_of(event) == expected
    assert subscriber_of(created(1, 7)) == 7  # SubscriberCreated: its data says
