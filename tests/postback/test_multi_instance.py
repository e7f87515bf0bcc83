"""Two ``postback serve`` instances on one PostgreSQL log, as behind a load balancer.

* Racing ``reg``/``dep`` postbacks for one subscriber, spread over both, have one winner.
* One instance leads the projections, the other follows; when the leader is killed with
  SIGKILL in the middle of a burst, the other takes the projections over, and they then
  equal a fresh replay of the log, row for row.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from eventstore.postgres import PostgresEventStore
from projections.catalog import all_projections
from projections.pg_database import PostgresProjectionDatabase, temporary_schema
from projections.runner import ProjectionRunner
from projections.verify import compare_databases, format_report
from tests.pg import DSN, dsn_for
from tests.postback.servers import ADMIN, start_server, stop_server

Instance = tuple[subprocess.Popen[str], str]


@pytest.fixture
def two_instances(pg_schema: str) -> Iterator[list[Instance]]:
    env = {"POSTBACK_LEADER_RETRY": "0.05", "POSTBACK_OUTBOX": "off"}
    started: list[Instance] = []
    try:
        for _ in range(2):
            started.append(start_server(["--dsn", dsn_for(pg_schema)], env))
        yield started
    finally:
        for process, _ in started:
            stop_server(process)


async def _json(response: aiohttp.ClientResponse) -> Any:
    async with response:
        return response.status, await response.json()


async def _setup(http: aiohttp.ClientSession, base: str, subscribers: int) -> dict[str, str]:
    status, body = await _json(
        await http.post(
            f"{base}/api/v1/accounts",
            json={"name": "Two instances"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    )
    assert status == 201, body
    auth = {"Authorization": f"Bearer {body['api_key']}"}
    status, spot = await _json(
        await http.post(f"{base}/api/v1/spots", json={"title": "b"}, headers=auth)
    )
    assert status == 201, spot
    for n in range(subscribers):
        status, body = await _json(
            await http.post(
                f"{base}/api/v1/subscribers",
                json={"spot": spot["token"], "user_id": str(n + 1), "clickid": f"C{n}"},
                headers=auth,
            )
        )
        assert status == 201, body
    return auth


async def _postback(http: aiohttp.ClientSession, base: str, **params: str) -> int:
    try:
        async with http.get(f"{base}/postback/", params=params) as response:
            await response.read()
            return response.status
    except aiohttp.ClientError:
        return 0  # the instance was killed under this request


async def test_racing_postbacks_across_two_instances_have_one_winner(
    two_instances: list[Instance],
) -> None:
    (_, first), (_, second) = two_instances
    async with aiohttp.ClientSession() as http:
        auth = await _setup(http, first, 1)
        for goal in ("reg", "dep"):
            statuses = await asyncio.gather(
                *(
                    _postback(http, first if i % 2 else second, clickid="C0", goal=goal, sum="5")
                    for i in range(40)
                )
            )
            assert sorted(statuses) == [200] + [409] * 39, goal
        # The instance that did not create the subscriber sees its whole history too.
        status, view = await _json(await http.get(f"{second}/api/v1/subscribers/1", headers=auth))
        assert status == 200
        assert (view["goals"]["reg"]["count"], view["goals"]["dep"]["count"]) == (1, 1)


async def _health(http: aiohttp.ClientSession, base: str) -> Any:
    status, body = await _json(await http.get(f"{base}/healthz"))
    assert status == 200, body
    return body


async def _caught_up(http: aiohttp.ClientSession, base: str, auth: dict[str, str]) -> Any:
    """Health once the instance's projections reached the log's end (each listing waits up
    to a few seconds for that; a takeover may need more than one)."""
    for _ in range(10):
        status, _ = await _json(await http.get(f"{base}/api/v1/postbacks", headers=auth))
        assert status == 200
        health = await _health(http, base)
        if health["projections"]["position"] == health["position"]:
            return health
    raise AssertionError(f"projections never caught up: {health}")


@pytest.mark.slow
async def test_a_killed_leader_is_replaced_and_the_projections_equal_a_fresh_replay(
    two_instances: list[Instance], pg_schema: str
) -> None:
    subscribers = 30
    async with aiohttp.ClientSession() as http:
        auth = await _setup(http, two_instances[0][1], subscribers)
        for _, base in two_instances:
            await _caught_up(http, base, auth)
        leaders = [
            (await _health(http, base))["projections"]["leader"] for _, base in two_instances
        ]
        assert sorted(leaders) == [False, True]
        leader, survivor = two_instances if leaders[0] else two_instances[::-1]

        # A burst over both instances; the leader is killed while requests are in flight.
        answered = 0
        killed = asyncio.Event()

        async def one(n: int, goal: str) -> int:
            nonlocal answered
            base = (leader, survivor)[n % 2][1]
            status = await _postback(http, base, clickid=f"C{n}", goal=goal, sum=f"{n}.25")
            answered += 1
            if answered == subscribers // 2 and not killed.is_set():  # mid-burst
                os.kill(leader[0].pid, signal.SIGKILL)
                killed.set()
            return status

        statuses = []
        for goal in ("reg", "dep", "redep"):
            statuses += await asyncio.gather(*(one(n, goal) for n in range(subscribers)))
        assert killed.is_set()
        await asyncio.to_thread(leader[0].wait, 30)
        assert statuses.count(200) >= subscribers  # the survivor answered its share

        health = await _caught_up(http, survivor[1], auth)
        assert health["projections"]["leader"] is True

    # Every 200 is in the log, and the projections the survivor took over equal a replay.
    dsn = dsn_for(pg_schema)
    store = await PostgresEventStore.open(dsn)
    try:
        events = await store.read_all(0, 10_000)
        reached = [e for e in events if e.type == "GoalReached"]
        assert statuses.count(200) <= len(reached) <= statuses.count(200) + statuses.count(0)
        live = PostgresProjectionDatabase(dsn)
        async with temporary_schema(DSN) as scratch:
            fresh = PostgresProjectionDatabase(dsn, schema=scratch)
            runner = ProjectionRunner(store, all_projections(), database=fresh)
            try:
                assert await runner.catch_up() == health["position"]
                await live.open()
                diffs = await compare_databases(live, fresh, all_projections())
            finally:
                await runner.close()
                await live.close()
        assert all(diff.ok for diff in diffs), "\n".join(format_report(diffs))
    finally:
        await store.close()
