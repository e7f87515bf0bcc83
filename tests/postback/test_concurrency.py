"""Racing postbacks have one winner; everything survives a restart of the app."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from tests.postback.conftest import MakeClient
from tests.postback.helpers import Api, Client, World, chat, make_world, postback


async def _race(client: Client, n: int, **params: str) -> list[tuple[int, Any]]:
    """``n`` identical postbacks sent at once."""
    return list(await asyncio.gather(*(postback(client, **params) for _ in range(n))))


@pytest.mark.parametrize(
    ("goal", "code"), [("reg", "registration_already"), ("dep", "deposit_already")]
)
async def test_50_racing_postbacks_have_exactly_one_winner(
    client: Client, api: Api, world: World, goal: str, code: str
) -> None:
    results = await _race(client, 50, clickid=world.clickid, goal=goal, sum="10")
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 1, 409: 49}, statuses
    for status, body in results:
        if status == 409:
            assert body == {"success": False, "code": code, "error": body["error"]}

    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["goals"][goal]["count"] == 1
    created, *events = await api.history(world.key, world.subscriber_id)
    assert created["type"] == "SubscriberCreated"
    assert [e["data"]["goal"] for e in events] == [goal]
    rows = await api.postbacks(world.key)
    assert Counter(row["status"] for row in rows) == {200: 1, 409: 49}


async def test_racing_reg_and_dep_by_both_identities(
    client: Client, api: Api, world: World
) -> None:
    by_clickid = {"clickid": world.clickid}
    by_spot = {"user_id": world.user_id, "spot": world.spot}
    results = await asyncio.gather(
        *(
            postback(client, **(by_clickid if i % 2 else by_spot), goal=goal, sum="1")
            for i in range(40)
            for goal in ("reg", "dep")
        )
    )
    assert Counter(status for status, _ in results) == {200: 2, 409: 78}
    view = await api.subscriber(world.key, world.subscriber_id)
    assert {goal: reached["count"] for goal, reached in view["goals"].items()} == {
        "reg": 1,
        "dep": 1,
    }


async def test_racing_repeats_of_one_txid_all_answer_like_the_first(
    client: Client, api: Api, world: World
) -> None:
    results = await _race(client, 20, clickid=world.clickid, goal="reg", txid="T-RACE")
    assert {status for status, _ in results} == {200}, results
    assert len({str(body) for _, body in results}) == 1, results
    events = await api.history(world.key, world.subscriber_id)
    assert [e["type"] for e in events] == ["SubscriberCreated", "GoalReached"]


async def test_racing_repeatable_goals_are_all_recorded(
    client: Client, api: Api, world: World
) -> None:
    """Each racing ``redep`` is a conversion of its own: every one is recorded and gets 200
    (never a 503 because the others kept winning the optimistic append)."""
    n = 200
    results = await _race(client, n, clickid=world.clickid, goal="redep", sum="0.01")
    assert Counter(status for status, _ in results) == {200: n}
    assert len({body["position"] for _, body in results}) == n
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["deposits"] == {"count": n, "total": "2.00"}


async def test_racing_contacts_and_postbacks(client: Client, api: Api, world: World) -> None:
    results = await asyncio.gather(
        *(chat(client, user_id=world.user_id, spot=world.spot) for _ in range(10)),
        *(postback(client, clickid=world.clickid, goal="reg") for _ in range(10)),
    )
    statuses = [status for status, _ in results]
    assert statuses[:10] == [200] * 10
    assert sorted(statuses[10:]) == [200] + [409] * 9
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["contacts"] == 10
    assert view["goals"]["reg"]["count"] == 1


async def test_racing_subscriber_creation_has_one_winner(api: Api, world: World) -> None:
    results = await asyncio.gather(
        *(
            api.call(
                "POST",
                "/api/v1/subscribers",
                world.key,
                json={"spot": world.spot, "user_id": f"u{i}", "clickid": "SAME"},
            )
            for i in range(20)
        )
    )
    assert Counter(status for status, _ in results) == {201: 1, 409: 19}


async def test_the_state_survives_a_restart(make_client: MakeClient, db_path: str) -> None:
    client = await make_client()
    api = Api(client)
    world = await make_world(api)
    other = await make_world(api, name="Other", spot="other-spot", clickid="O-1", user_id="1")
    assert (await postback(client, clickid=world.clickid, goal="reg", playerid="P-1"))[0] == 200
    txid_answer = await postback(client, clickid=world.clickid, goal="dep", sum="0.1", txid="T")
    assert txid_answer[0] == 200
    assert (await postback(client, clickid=world.clickid, goal="redep", sum="0.2"))[0] == 200
    assert (await postback(client, clickid=world.clickid, goal="reg"))[0] == 409
    assert (await chat(client, user_id=world.user_id, spot=world.spot))[0] == 200
    view = await api.subscriber(world.key, world.subscriber_id)
    history = await api.history(world.key, world.subscriber_id)
    log = await api.postbacks(world.key)
    spots = await api.call("GET", "/api/v1/spots", world.key)
    goals = await api.call("GET", "/api/v1/goals", world.key)
    await client.close()

    client = await make_client(db=db_path)
    api = Api(client)
    # Keys, spots, goals, subscribers and their state are all still there.
    assert await api.subscriber(world.key, world.subscriber_id) == view
    assert view["deposits"] == {"count": 2, "total": "0.30"}
    assert view["player_id"] == "P-1"
    assert await api.history(world.key, world.subscriber_id) == history
    assert await api.postbacks(world.key) == log
    assert len(log) == 5
    assert await api.call("GET", "/api/v1/spots", world.key) == spots
    assert await api.call("GET", "/api/v1/goals", world.key) == goals
    # Decisions use the persisted state.
    status, body = await postback(client, clickid=world.clickid, goal="reg")
    assert (status, body["code"]) == (409, "registration_already")
    status, body = await postback(client, user_id=world.user_id, spot=world.spot, goal="dep")
    assert (status, body["code"]) == (409, "deposit_already")
    assert await postback(client, clickid=world.clickid, goal="dep", sum="0.1", txid="T") == (
        txid_answer
    )
    assert (await postback(client, clickid=world.clickid, goal="level10"))[0] == 200
    assert (await postback(client, clickid=other.clickid, goal="reg"))[0] == 200
    # New objects get new ids, not reused ones.
    created = await api.create_subscriber(world.key, world.spot, "new", "NEW")
    assert created["id"] not in (world.subscriber_id, other.subscriber_id)
    assert len(await api.postbacks(world.key)) == 9
