"""The postback log (GET /api/v1/postbacks): every partner request, accepted or rejected,
with its raw query, source address, time, status and answer; filters; account isolation."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import pytest
from yarl import URL

from postback.keys import STORE
from tests.postback.helpers import (
    SUBSCRIBER_NOT_FOUND,
    Api,
    Client,
    World,
    answer,
    bearer,
    chat,
    make_world,
    postback,
    send,
)


async def test_every_partner_request_is_listed(client: Client, api: Api, world: World) -> None:
    sent = [
        ("/postback/", {"clickid": world.clickid, "goal": "reg"}, "get"),
        ("/postback", {"clickid": world.clickid, "goal": "reg"}, "get"),  # 409
        ("/api/v1/api_send_postback/", {"clickid": world.clickid}, "get"),  # 404 no_goal
        ("/api/v1/api_send_postback", {"clickid": world.clickid, "goal": "x"}, "get"),  # 404
        ("/postback/", {"user_id": "404", "spot": world.spot, "goal": "reg"}, "get"),  # 404
        ("/postback/", {"clickid": world.clickid, "goal": "dep", "sum": "9"}, "form"),
        ("/postback/", {"clickid": world.clickid, "goal": "dep", "sum": "9"}, "json"),  # 409
        ("/spot/postback/chat/", {"user_id": world.user_id, "spot": world.spot}, "get"),
        ("/spot/postback/chat", {"spot": world.spot}, "get"),  # 400
        ("/spot/postback/chat/", {"user_id": "404", "spot": world.spot}, "get"),  # 404
    ]
    answers = [await send(client, path, params, style) for path, params, style in sent]
    assert [status for status, _ in answers] == [200, 409, 404, 404, 404, 200, 409, 200, 400, 404]

    rows = await api.postbacks(world.key)
    assert len(rows) == len(sent)
    positions = [row["position"] for row in rows]
    assert positions == sorted(positions)
    assert len({row["request_id"] for row in rows}) == len(rows)
    for row, (path, params, style), (status, body) in zip(rows, sent, answers, strict=True):
        assert row["path"] == path
        assert row["method"] == ("GET" if style == "get" else "POST")
        assert row["endpoint"] == ("chat" if "chat" in path else "postback")
        assert row["status"] == status
        assert row["ip"] == "127.0.0.1"
        assert datetime.fromisoformat(row["received_at"]).tzinfo is not None
        assert row["clickid"] == params.get("clickid")
        assert row["goal"] == params.get("goal")
        if style == "get":
            assert row["query"] == str(URL("/").with_query(params).query_string)
        else:
            assert row["query"] == ""
        if status == 200:
            assert row["response"]["success"] is True
        else:
            assert row["response"] == body


async def test_the_log_keeps_the_query_as_sent(client: Client, api: Api, world: World) -> None:
    """Percent-escapes, separators inside values and '+' come back as the same parameters."""
    sent = [
        f"clickid={world.clickid}&goal=%7Bgoal%7D&extra=caf%C3%A9&note=a%26b%3Dc",
        f"clickid={world.clickid}&goal=reg&note=%F0%9F%98%80+x&plus=%2B&sum=%31",
    ]
    for raw, expected in zip(sent, (404, 200), strict=True):
        url = URL.build(path="/postback/", query_string=raw, encoded=True)
        status, _ = await answer(await client.get(url))
        assert status == expected
    rows = await api.postbacks(world.key)
    assert [row["status"] for row in rows] == [404, 200]
    for row, raw in zip(rows, sent, strict=True):
        logged = URL.build(path="/", query_string=row["query"], encoded=True)
        assert logged.query == URL.build(path="/", query_string=raw, encoded=True).query
    assert rows[0]["goal"] == "{goal}"


async def test_a_rejected_amount_for_a_known_subscriber_is_listed(
    client: Client, api: Api, world: World
) -> None:
    """The bad_amount answer comes before the subscriber lookup, but the request still names
    one of this account's subscribers: the account must find it in its log (a dispute)."""
    status, body = await postback(client, clickid=world.clickid, goal="dep", sum="{sum}")
    assert status == 400
    rows = await api.postbacks(world.key, clickid=world.clickid)
    assert [(row["status"], row["response"]) for row in rows] == [(400, body)]


async def test_txid_repeats_are_listed_with_their_answer(
    client: Client, api: Api, world: World
) -> None:
    params = {"clickid": world.clickid, "goal": "dep", "sum": "3", "txid": "T-9"}
    first = await postback(client, **params)
    again = await postback(client, **params)
    assert again == first
    rows = await api.postbacks(world.key)
    assert [(row["status"], row["txid"]) for row in rows] == [(200, "T-9"), (200, "T-9")]
    assert rows[1]["response"] == first[1]


async def test_another_account_does_not_see_them(client: Client, api: Api, world: World) -> None:
    other = await make_world(api, name="Other", spot="other-spot", clickid="O-1", user_id="1")
    await postback(client, clickid=world.clickid, goal="reg")
    await postback(client, clickid=world.clickid, goal="nope")
    await chat(client, user_id=world.user_id, spot=world.spot)
    await chat(client, spot=world.spot)
    await postback(client, clickid=other.clickid, goal="reg")

    mine = await api.postbacks(world.key)
    theirs = await api.postbacks(other.key)
    assert len(mine) == 4
    assert [(row["clickid"], row["status"]) for row in theirs] == [(other.clickid, 200)]
    assert await api.postbacks(other.key, clickid=world.clickid) == []
    assert {row["request_id"] for row in mine}.isdisjoint(row["request_id"] for row in theirs)


async def test_requests_of_no_account_are_listed_to_none(
    client: Client, api: Api, world: World
) -> None:
    await postback(client, goal="reg")  # no identity
    await postback(client, clickid="nobody", goal="reg")  # no subscriber
    await chat(client, user_id=world.user_id)  # no spot
    await chat(client, user_id=world.user_id, spot="no-such-spot")
    assert await api.postbacks(world.key) == []


async def test_filters(client: Client, api: Api, world: World) -> None:
    second = await api.create_subscriber(world.key, world.spot, "2", "CLICK-2")
    await postback(client, clickid=world.clickid, goal="reg")  # 200
    await postback(client, clickid=second["clickid"], goal="reg")  # 200
    await postback(client, clickid=world.clickid, goal="reg")  # 409
    await postback(client, clickid=second["clickid"], goal="")  # 404
    await postback(client, clickid=world.clickid, goal="redep")  # 200

    rows = await api.postbacks(world.key)
    assert [(row["clickid"], row["status"]) for row in rows] == [
        (world.clickid, 200),
        ("CLICK-2", 200),
        (world.clickid, 409),
        ("CLICK-2", 404),
        (world.clickid, 200),
    ]
    by_clickid = await api.postbacks(world.key, clickid=world.clickid)
    assert by_clickid == [rows[0], rows[2], rows[4]]
    assert await api.postbacks(world.key, status=200) == [rows[0], rows[1], rows[4]]
    assert await api.postbacks(world.key, status=409) == [rows[2]]
    assert await api.postbacks(world.key, clickid="CLICK-2", status=404) == [rows[3]]
    assert await api.postbacks(world.key, clickid="CLICK") == []
    assert await api.postbacks(world.key, after=rows[1]["position"]) == rows[2:]
    assert await api.postbacks(world.key, limit=2) == rows[:2]
    assert await api.postbacks(world.key, after=rows[-1]["position"]) == []


async def test_paging_with_next_after(client: Client, api: Api, world: World) -> None:
    for _ in range(5):
        await postback(client, clickid=world.clickid, goal="rebill")
    everything = await api.postbacks(world.key)
    paged: list[Any] = []
    after = 0
    for _ in range(10):
        status, body = await api.call(
            "GET", "/api/v1/postbacks", world.key, params={"after": after, "limit": 2}
        )
        assert status == 200
        if not body["postbacks"]:
            assert body["next_after"] == after
            break
        paged.extend(body["postbacks"])
        assert body["next_after"] == body["postbacks"][-1]["position"]
        after = body["next_after"]
    assert paged == everything


async def test_a_post_body_request_is_identified(client: Client, api: Api, world: World) -> None:
    status, _ = await send(
        client, "/postback/", {"user_id": world.user_id, "spot": world.spot, "goal": "reg"}, "json"
    )
    assert status == 200
    [row] = await api.postbacks(world.key)
    assert (row["method"], row["user_id"], row["spot"], row["goal"]) == (
        "POST",
        world.user_id,
        world.spot,
        "reg",
    )


async def test_a_body_that_is_not_utf8_is_kept_byte_for_byte(
    client: Client, api: Api, world: World
) -> None:
    # A latin-1 form: the text shows U+FFFD, and the exact bytes are kept for a dispute.
    raw = f"clickid={world.clickid}&goal=reg&note=Jos".encode() + b"\xe9"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _ = await answer(await client.post("/postback/", data=raw, headers=headers))
    assert status == 200
    await send(client, "/postback/", {"clickid": world.clickid, "goal": "dep", "sum": "1"}, "form")
    latin, utf8 = await api.postbacks(world.key)
    assert latin["body"].endswith("note=Jos\ufffd")
    assert base64.b64decode(latin["body_base64"]) == raw
    assert utf8["body"] == "clickid=ABC123&goal=dep&sum=1"
    assert utf8["body_base64"] is None


async def test_subscriber_not_found_by_spot_is_listed(
    client: Client, api: Api, world: World
) -> None:
    status, _ = await postback(client, user_id="nobody", spot=world.spot, goal="reg")
    assert status == 404
    [row] = await api.postbacks(world.key)
    assert row["status"] == 404
    assert row["response"]["error"] == SUBSCRIBER_NOT_FOUND


async def test_the_log_needs_a_key(client: Client, world: World) -> None:
    for headers in ({}, bearer("wrong")):
        status, body = await answer(await client.get("/api/v1/postbacks", headers=headers))
        assert status == 401
        assert isinstance(body["error"], str)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "status=abc",
        "status=600",
        "status=-1",
        "status=1.5",
        "after=-1",
        "after=abc",
        "after=99999999999999999999",
        "after=" + "9" * 5000,
    ],
)
async def test_bad_query_is_a_json_400(client: Client, world: World, query: str) -> None:
    status, body = await answer(
        await client.get(f"/api/v1/postbacks?{query}", headers=bearer(world.key))
    )
    assert status == 400, body
    assert isinstance(body["error"], str)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "path", ["/postback/", "/api/v1/api_send_postback", "/spot/postback/chat/"]
)
async def test_other_methods_are_a_logged_json_405(client: Client, method: str, path: str) -> None:
    response = await client.request(method, f"{path}?clickid=ABC&goal=reg")
    assert response.status == 405
    assert response.headers["Allow"] == "GET, POST"
    assert (await response.json())["success"] is False
    store = client.server.app[STORE]
    last = (await store.read_all(await store.last_position() - 1, 1))[0]
    assert last.type == "PostbackRejected"
    assert last.metadata["postback"]["method"] == method
    assert last.metadata["postback"]["status"] == 405
