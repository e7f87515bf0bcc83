"""The profiles projection: player ids, profile fields overwritten key by key, splits."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given

from projections.database import SqlConnection
from projections.profiles import ProfilesProjection, canonical, profile_row
from tests.projections.backends import Scope, examples
from tests.projections.test_goal_stats import PROPERTY_SETTINGS
from tests.projections.test_subscribers import (
    Log,
    batch_size_lists,
    created,
    dump,
    fold,
    minutes,
    new_db,
    player,
    random_logs,
    reached,
    run_property,
)


def stored(conn: SqlConnection) -> list[tuple[Any, ...]]:
    return dump(conn)["profiles"]


def test_later_goals_overwrite_fields(projection_db: Scope) -> None:
    conn = fold(
        new_db(projection_db),
        [
            created(1, 1),
            reached(2, minutes(1), 1, "reg", profile={"level": 1, "country": "FR"}),
            reached(3, minutes(2), 1, "kyc", profile={"verified": True}),
        ],
        [
            reached(4, minutes(3), 1, "vip", profile={"level": 2, "tags": ["a", "b"]}),
            reached(5, minutes(4), 1, "dep", "1.00"),  # no profile: nothing changes
            reached(6, minutes(5), 1, "vip", profile={}),
            reached(7, minutes(6), 1, "vip", profile=["not", "an", "object"]),
        ],
    )
    profile = {"country": "FR", "level": 2, "tags": ["a", "b"], "verified": True}
    assert profile_row(conn, 1) == {"player_id": None, "profile": profile}
    # canonical text, and last_position: the last event that changed the row
    text = '{"country":"FR","level":2,"tags":["a","b"],"verified":true}'
    assert stored(conn) == [(1, 1, None, text, 4)]
    assert canonical({"b": 1, "a": {"d": 2, "c": None}}) == '{"a":{"c":null,"d":2},"b":1}'


def test_player_id_is_assigned_then_replaced(projection_db: Scope) -> None:
    conn = fold(new_db(projection_db), [created(1, 1), player(2, minutes(1), 1, "p1")])
    assert profile_row(conn, 1) == {"player_id": "p1", "profile": {}}
    fold(conn, [player(3, minutes(2), 1, "p2", previous="p1")])
    assert profile_row(conn, 1) == {"player_id": "p2", "profile": {}}


def test_known_and_unknown_subscribers(projection_db: Scope) -> None:
    conn = fold(
        new_db(projection_db),
        [created(1, 1), reached(2, minutes(1), 3, "reg", profile={"level": 1})],
    )
    assert profile_row(conn, 1) == {"player_id": None, "profile": {}}  # created, nothing set
    assert profile_row(conn, 2) is None
    assert profile_row(conn, 3) == {"player_id": None, "profile": {"level": 1}}  # before creation
    fold(conn, [created(3, 3)])
    assert stored(conn)[1] == (3, 1, None, '{"level":1}', 3)


def test_a_batch_applied_twice_changes_nothing(projection_db: Scope) -> None:
    batch = [
        created(1, 1),
        reached(2, minutes(1), 1, "reg", profile={"level": 1}),
        player(3, minutes(2), 1, "p1"),
        reached(4, minutes(3), 1, "vip", profile={"level": 2}),
    ]
    conn = fold(new_db(projection_db), batch)
    fold(conn, batch, batch[2:], batch[1:2])  # level 1 again, last: must not come back
    assert profile_row(conn, 1) == {"player_id": "p1", "profile": {"level": 2}}
    assert stored(conn) == [(1, 1, "p1", '{"level":2}', 4)]


def test_reset_drops_the_table(projection_db: Scope) -> None:
    conn = fold(new_db(projection_db), [created(1, 1)])
    ProfilesProjection().reset(conn)
    for statement in ProfilesProjection.schema_sql:
        conn.execute(statement)
    assert profile_row(conn, 1) is None


def profiles(conn: SqlConnection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM profiles ORDER BY subscriber_id").fetchall()


def test_incremental_equals_rebuild(projection_db: Scope) -> None:
    """Alone in its runners (test_subscribers runs it beside the subscribers projection)."""

    @examples(PROPERTY_SETTINGS, projection_db, postgres=15)
    @given(log=random_logs, batch_sizes=batch_size_lists)
    def check(log: Log, batch_sizes: list[int]) -> None:
        make = lambda: [ProfilesProjection()]  # noqa: E731
        rows = run_property(projection_db, log, batch_sizes, make, profiles)
        assert all(canonical(orjson.loads(row[3])) == row[3] for row in rows)

    check()
