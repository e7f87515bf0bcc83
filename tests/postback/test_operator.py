"""The operator API (API.md section 3): accounts, spots, goals, subscribers, spot settings,
the account's events, health and metrics, and JSON errors for every kind of bad input."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from typing import Any

import pytest
from yarl import URL

from eventstore import postgres as postgres_module
from eventstore import postgres_writer
from eventstore import sqlite as sqlite_module
from eventstore.errors import StoreUnavailableError
from eventstore.sqlite import SQLiteEventStore
from postback.keys import STORE
from tests.postback.conftest import MakeClient
from tests.postback.helpers import (
    ADMIN,
    Api,
    Client,
    World,
    answer,
    bearer,
    make_world,
    postback,
)

OPERATOR_CALLS = [
    ("POST", "/api/v1/spots", {"title": "t"}),
    ("GET", "/api/v1/spots", None),
    ("PUT", "/api/v1/goals/level10", {}),
    ("GET", "/api/v1/goals", None),
    ("POST", "/api/v1/subscribers", {"spot": "87fa11c2-ff00-44a1", "user_id": "1"}),
    ("GET", "/api/v1/subscribers/1", None),
    ("GET", "/api/v1/subscribers/1/events", None),
    ("PUT", "/api/v1/spots/1/facebook", {"pixel_id": "1", "access_token": "x"}),
    ("PUT", "/api/v1/spots/1/telegram", {"bot_token": "x"}),
    ("GET", "/api/v1/events", None),
    ("GET", "/api/v1/postbacks", None),
    ("POST", "/api/v1/webhooks", {"url": "https://example.com/", "secret": "s"}),
    ("GET", "/api/v1/webhooks", None),
    ("DELETE", "/api/v1/webhooks/1", None),
    ("GET", "/api/v1/deliveries", None),
]
CALL_IDS = [f"{method} {path}" for method, path, _ in OPERATOR_CALLS]


def is_error(status: int, body: Any) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body


async def raw_request(client: Client, head: bytes) -> tuple[int, bytes, bytes]:
    """Send ``head`` (a whole HTTP/1.1 request without a body) on a fresh connection."""
    assert client.server.host is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    header, _, body = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, header, body


# -- authentication ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "payload"), OPERATOR_CALLS, ids=CALL_IDS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": f"Bearer {ADMIN}"},  # the admin token is not an account's key
    ],
    ids=["missing", "wrong", "empty", "basic", "admin"],
)
async def test_a_missing_or_wrong_key_is_401(
    client: Client,
    world: World,
    method: str,
    path: str,
    payload: Any,
    headers: dict[str, str],
) -> None:
    response = await client.request(method, path, json=payload, headers=headers)
    assert response.headers.get("WWW-Authenticate") == "Bearer"  # RFC 6750
    status, body = await answer(response)
    assert status == 401, body
    is_error(status, body)


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe", b"Bearer caf\xc3\xa9", b"Bearer \xed\xa0\x80"],
    ids=["latin1", "utf8", "surrogate"],
)
@pytest.mark.parametrize(
    "request_line", [b"GET /api/v1/spots", b"POST /api/v1/accounts"], ids=["key", "admin"]
)
async def test_a_non_ascii_authorization_header_is_401(
    client: Client, world: World, authorization: bytes, request_line: bytes
) -> None:
    head = (
        request_line + b" HTTP/1.1\r\nHost: test\r\nAuthorization: " + authorization + b"\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    status, header, body = await raw_request(client, head)
    assert status == 401, body
    assert b"application/json" in header.lower()


# -- accounts ---------------------------------------------------------------------------


async def test_create_account(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/accounts", ADMIN, json={"name": "Acme"})
    assert status == 201, body
    assert set(body) == {"id", "name", "api_key"}
    assert type(body["id"]) is int
    assert body["name"] == "Acme"
    assert isinstance(body["api_key"], str)
    assert len(body["api_key"]) >= 20

    status, spots = await api.call("GET", "/api/v1/spots", body["api_key"])
    assert (status, spots) == (200, [])

    status, second = await api.call("POST", "/api/v1/accounts", ADMIN, json={"name": "Acme"})
    assert status == 201
    assert second["id"] != body["id"]
    assert second["api_key"] != body["api_key"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN}"}],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_create_account_needs_the_admin_token(
    client: Client, headers: dict[str, str]
) -> None:
    status, body = await answer(
        await client.post("/api/v1/accounts", json={"name": "x"}, headers=headers)
    )
    assert status == 401
    is_error(status, body)


async def test_an_account_key_is_not_the_admin_token(api: Api) -> None:
    key = await api.create_account()
    status, body = await api.call("POST", "/api/v1/accounts", key, json={"name": "x"})
    assert status == 401
    is_error(status, body)


@pytest.mark.parametrize("token", [None, ADMIN, ""], ids=["none", "admin", "empty"])
async def test_create_account_without_an_admin_token_configured_is_403(
    make_client: MakeClient, token: str | None
) -> None:
    client = await make_client(admin_token=None)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    status, body = await answer(
        await client.post("/api/v1/accounts", json={"name": "x"}, headers=headers)
    )
    assert status == 403
    is_error(status, body)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b"[]",
        b'["name"]',
        b'"Acme"',
        b"null",
        b"{}",
        b'{"name": ""}',
        b'{"name": null}',
        b'{"name": ["Acme"]}',
        b'{"name": {"a": 1}}',
        b'{"name": true}',
        b'{"name": 1.5}',
        b'{"name": "' + b"x" * 257 + b'"}',
        b'{"name": "\\ud800"}',
        b"\xff\xfe\x00",
    ],
)
async def test_create_account_bad_body(client: Client, raw: bytes) -> None:
    status, body = await answer(
        await client.post(
            "/api/v1/accounts",
            data=raw,
            headers={**bearer(ADMIN), "Content-Type": "application/json"},
        )
    )
    assert status == 400, body
    is_error(status, body)


# -- spots ------------------------------------------------------------------------------


async def test_create_spot_with_a_token(api: Api) -> None:
    key = await api.create_account()
    status, body = await api.call(
        "POST", "/api/v1/spots", key, json={"title": "My bot", "token": "87fa11c2-ff00-44a1"}
    )
    assert status == 201, body
    assert set(body) == {"id", "title", "token"}
    assert type(body["id"]) is int
    assert (body["title"], body["token"]) == ("My bot", "87fa11c2-ff00-44a1")


async def test_create_spot_generates_a_token(client: Client, api: Api) -> None:
    key = await api.create_account()
    first = await api.create_spot(key, "one")
    second = await api.create_spot(key, "two")
    for spot in (first, second):
        assert isinstance(spot["token"], str)
        assert len(spot["token"]) >= 8
    assert first["token"] != second["token"]
    assert first["id"] != second["id"]
    # The generated token is a working spot token for partners.
    status, body = await answer(
        await client.get("/spot/postback/chat/", params={"spot": first["token"]})
    )
    assert status == 400, body


async def test_a_taken_spot_token_is_409(api: Api) -> None:
    key = await api.create_account()
    other = await api.create_account("Other")
    await api.create_spot(key, "bot", "taken")
    for owner in (key, other):
        status, body = await api.call(
            "POST", "/api/v1/spots", owner, json={"title": "again", "token": "taken"}
        )
        assert status == 409, body
        is_error(status, body)
    status, spots = await api.call("GET", "/api/v1/spots", other)
    assert spots == []


async def test_list_spots_shows_only_the_accounts_own(api: Api) -> None:
    key = await api.create_account()
    other = await api.create_account("Other")
    mine = [await api.create_spot(key, "a", "a-token"), await api.create_spot(key, "b")]
    theirs = await api.create_spot(other, "c", "c-token")
    status, listed = await api.call("GET", "/api/v1/spots", key)
    assert status == 200
    assert sorted(listed, key=lambda s: s["id"]) == mine
    status, listed = await api.call("GET", "/api/v1/spots", other)
    assert listed == [theirs]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"title": ""},
        {"title": None},
        {"title": ["x"]},
        {"title": {"x": 1}},
        {"title": False},
        {"title": "x" * 257},
        {"title": "t", "token": "has space"},
        {"title": "t", "token": "a/b"},
        {"title": "t", "token": "é"},
        {"title": "t", "token": "x" * 129},
        {"title": "t", "token": ["x"]},
        {"title": "t", "token": 1.5},
    ],
)
async def test_create_spot_bad_body(api: Api, payload: dict[str, Any]) -> None:
    key = await api.create_account()
    status, body = await api.call("POST", "/api/v1/spots", key, json=payload)
    assert status == 400, body
    is_error(status, body)


# -- goals ------------------------------------------------------------------------------


async def test_define_and_list_goals(api: Api) -> None:
    key = await api.create_account()
    status, body = await api.call(
        "PUT", "/api/v1/goals/level10", key, json={"profile": {"level": 10}, "notify": "Level 10!"}
    )
    assert status == 200, body
    status, body = await api.call("PUT", "/api/v1/goals/tutorial_complete", key, json={})
    assert status == 200, body
    status, body = await api.call("PUT", "/api/v1/goals/kyc_submit", key)  # no body at all
    assert status == 200, body

    status, goals = await api.call("GET", "/api/v1/goals", key)
    assert status == 200
    by_name = {goal["name"]: goal for goal in goals}
    assert set(by_name) == {
        "reg",
        "dep",
        "redep",
        "rebill",
        "level10",
        "tutorial_complete",
        "kyc_submit",
    }
    for name in ("reg", "dep", "redep", "rebill"):
        assert by_name[name]["standard"] is True
    assert by_name["level10"]["standard"] is False
    assert by_name["level10"]["profile"] == {"level": 10}
    assert by_name["level10"]["notify"] == "Level 10!"
    assert by_name["kyc_submit"]["standard"] is False

    # Redefining a goal replaces its definition.
    await api.define_goal(key, "level10", {"level": 11})
    status, goals = await api.call("GET", "/api/v1/goals", key)
    assert [g["profile"] for g in goals if g["name"] == "level10"] == [{"level": 11}]


async def test_goals_are_per_account(api: Api) -> None:
    key = await api.create_account()
    other = await api.create_account("Other")
    await api.define_goal(key, "mine")
    status, goals = await api.call("GET", "/api/v1/goals", other)
    assert status == 200
    assert [g["name"] for g in goals] == ["reg", "dep", "redep", "rebill"]


@pytest.mark.parametrize("name", ["reg", "dep", "redep", "rebill", "REG", "Dep", "reDep"])
async def test_standard_goal_names_are_refused(api: Api, name: str) -> None:
    # In any case: a custom "Dep" would let a partner's goal=Dep count as no deposit.
    key = await api.create_account()
    status, body = await api.call("PUT", f"/api/v1/goals/{name}", key, json={})
    assert status == 400, body
    is_error(status, body)
    status, goals = await api.call("GET", "/api/v1/goals", key)
    assert [g for g in goals if g["name"].lower() == name.lower()] == [
        {"name": name.lower(), "standard": True, "profile": None, "notify": None}
    ]


async def test_a_goal_profile_at_its_bounds_is_taken(api: Api) -> None:
    key = await api.create_account()
    profile: dict[str, object] = {f"f{i}": i for i in range(63)}
    profile["k" * 64] = "x" * 1024
    status, body = await api.call("PUT", "/api/v1/goals/wide", key, json={"profile": profile})
    assert status == 200, body
    assert body["profile"] == profile


async def test_a_goal_profile_is_applied_to_the_subscriber(
    client: Client, api: Api, world: World
) -> None:
    await api.define_goal(world.key, "vip", {"tier": "gold", "vip": True})
    status, _ = await postback(client, clickid=world.clickid, goal="vip")
    assert status == 200
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["profile"] == {"tier": "gold", "vip": True}
    assert view["goals"]["vip"]["count"] == 1


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("ok", b"{"),
        ("ok", b"[]"),
        ("ok", b'"x"'),
        ("ok", b'{"profile": []}'),
        ("ok", b'{"profile": "level"}'),
        ("ok", b'{"profile": 5}'),
        ("ok", b'{"profile": {"a": {"b": 1}}}'),
        ("ok", b'{"profile": {"a": [1]}}'),
        ("ok", b'{"profile": {"' + b"k" * 65 + b'": 1}}'),
        ("ok", b'{"profile": {"": 1}}'),
        ("ok", b'{"profile": {"v": "' + b"x" * 1025 + b'"}}'),
        ("ok", b'{"profile": {' + b",".join(b'"f%d": 1' % i for i in range(65)) + b"}}"),
        ("ok", b'{"notify": ["x"]}'),
        ("ok", b'{"notify": {"x": 1}}'),
        ("ok", b'{"notify": "' + b"x" * 4097 + b'"}'),
        ("x" * 65, b"{}"),
        ("has%20space", b"{}"),
        ("caf%C3%A9", b"{}"),
        ("semi;colon", b"{}"),
        ("%2e%2e", b"{}"),  # a path that URLs normalize away: it could never be addressed
        ("%2e", b"{}"),
        ("...", b"{}"),
    ],
)
async def test_define_goal_bad_input(client: Client, api: Api, name: str, raw: bytes) -> None:
    key = await api.create_account()
    status, body = await answer(
        await client.put(
            URL.build(path=f"/api/v1/goals/{name}", encoded=True),  # sent as written
            data=raw,
            headers={**bearer(key), "Content-Type": "application/json"},
        )
    )
    assert status == 400, body
    is_error(status, body)


# -- subscribers ------------------------------------------------------------------------


async def test_create_subscriber(api: Api) -> None:
    key = await api.create_account()
    await api.create_spot(key, "bot", "87fa11c2-ff00-44a1")
    status, body = await api.call(
        "POST",
        "/api/v1/subscribers",
        key,
        json={"spot": "87fa11c2-ff00-44a1", "user_id": "7788", "clickid": "ABC123"},
    )
    assert status == 201, body
    assert set(body) == {"id", "spot", "user_id", "clickid"}
    assert type(body["id"]) is int
    assert (body["spot"], body["user_id"], body["clickid"]) == (
        "87fa11c2-ff00-44a1",
        "7788",
        "ABC123",
    )
    status, second = await api.call(
        "POST",
        "/api/v1/subscribers",
        key,
        json={"spot": "87fa11c2-ff00-44a1", "user_id": "7789", "fbclid": "fb", "fbp": "fbp"},
    )
    assert status == 201, second
    assert second["clickid"] is None
    assert second["id"] != body["id"]


async def test_a_fresh_subscribers_state(api: Api, world: World) -> None:
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["id"] == world.subscriber_id
    assert view["spot"] == world.spot
    assert view["user_id"] == world.user_id
    assert view["clickid"] == world.clickid
    assert view["goals"] == {}
    assert view["registered_at"] is None
    assert view["first_deposit"] == {"at": None, "amount": None}
    assert view["deposits"] == {"count": 0, "total": "0.00"}
    assert view["player_id"] is None
    assert view["profile"] == {}
    (created,) = await api.history(world.key, world.subscriber_id)
    assert created["type"] == "SubscriberCreated"
    assert created["data"]["subscriber_id"] == world.subscriber_id
    assert (created["data"]["clickid"], created["data"]["spot_token"]) == (
        world.clickid,
        world.spot,
    )
    assert created["request"] is None


async def test_the_subscribers_state_after_postbacks(
    client: Client, api: Api, world: World
) -> None:
    for params in (
        {"goal": "reg", "playerid": "P-7"},
        {"goal": "dep", "sum": "100.5"},
        {"goal": "redep", "sum": "0.25"},
        {"goal": "rebill"},
        {"goal": "level10"},
    ):
        status, body = await postback(client, clickid=world.clickid, **params)
        assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["registered_at"] is not None
    assert view["first_deposit"]["amount"] == "100.50"
    assert view["first_deposit"]["at"] is not None
    assert view["deposits"] == {"count": 2, "total": "100.75"}
    assert view["rebills"] == 1
    assert view["player_id"] == "P-7"
    assert view["profile"] == {"level": 10}
    assert {goal: reached["count"] for goal, reached in view["goals"].items()} == {
        "reg": 1,
        "dep": 1,
        "redep": 1,
        "rebill": 1,
        "level10": 1,
    }


async def test_subscriber_history(client: Client, api: Api, world: World) -> None:
    await postback(client, clickid=world.clickid, goal="reg")
    await postback(client, clickid=world.clickid, goal="dep", sum="5", playerid="P")
    await postback(client, clickid=world.clickid, goal="dep", sum="5")  # refused: not history
    created, *events = await api.history(world.key, world.subscriber_id)
    assert created["type"] == "SubscriberCreated"
    assert [e["type"] for e in events] == ["GoalReached", "PlayerIdAssigned", "GoalReached"]
    positions = [e["position"] for e in (created, *events)]
    assert positions == sorted(positions)
    assert len(set(positions)) == 4
    for event in events:
        assert {"position", "type", "data", "request", "recorded_at"} <= set(event)
        assert event["data"]["subscriber_id"] == world.subscriber_id
        assert event["request"]["status"] == 200
        assert event["request"]["clickid"] == world.clickid
    assert events[0]["data"]["goal"] == "reg"
    assert events[0]["request"]["query"] == f"clickid={world.clickid}&goal=reg"
    assert events[2]["data"]["amount"] == "5.00"
    assert events[1]["data"]["player_id"] == "P"
    assert events[1]["request"]["request_id"] == events[2]["request"]["request_id"]


async def test_a_taken_clickid_is_409(api: Api, world: World) -> None:
    other = await api.create_account("Other")
    await api.create_spot(other, "bot", "other-spot")
    for key, spot in ((world.key, world.spot), (other, "other-spot")):
        status, body = await api.call(
            "POST",
            "/api/v1/subscribers",
            key,
            json={"spot": spot, "user_id": "new-user", "clickid": world.clickid},
        )
        assert status == 409, body
        is_error(status, body)


async def test_a_user_id_is_unique_per_spot(api: Api, world: World) -> None:
    status, body = await api.call(
        "POST",
        "/api/v1/subscribers",
        world.key,
        json={"spot": world.spot, "user_id": world.user_id},
    )
    assert status == 409, body
    is_error(status, body)
    await api.create_spot(world.key, "second", "second-spot")
    status, body = await api.call(
        "POST",
        "/api/v1/subscribers",
        world.key,
        json={"spot": "second-spot", "user_id": world.user_id},
    )
    assert status == 201, body


async def test_a_spot_of_another_account_is_404(api: Api, world: World) -> None:
    other = await api.create_account("Other")
    for spot in (world.spot, "no-such-spot"):
        status, body = await api.call(
            "POST", "/api/v1/subscribers", other, json={"spot": spot, "user_id": "1"}
        )
        assert status == 404, body
        is_error(status, body)


async def test_another_accounts_subscriber_is_404(api: Api, world: World) -> None:
    other = await api.create_account("Other")
    for path in (
        f"/api/v1/subscribers/{world.subscriber_id}",
        f"/api/v1/subscribers/{world.subscriber_id}/events",
    ):
        status, body = await api.call("GET", path, other)
        assert status == 404, body
        is_error(status, body)


@pytest.mark.parametrize(
    "subscriber_id", ["999", "0", "-1", "abc", "1.0", "99999999999999999999999999", "%F0%9F%98%80"]
)
@pytest.mark.parametrize("suffix", ["", "/events"])
async def test_unknown_or_malformed_subscriber_ids(
    api: Api, world: World, subscriber_id: str, suffix: str
) -> None:
    status, body = await api.call("GET", f"/api/v1/subscribers/{subscriber_id}{suffix}", world.key)
    assert status == 404, body
    is_error(status, body)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"spot": "87fa11c2-ff00-44a1"},
        {"user_id": "1"},
        {"spot": "87fa11c2-ff00-44a1", "user_id": ""},
        {"spot": "87fa11c2-ff00-44a1", "user_id": ["1"]},
        {"spot": "87fa11c2-ff00-44a1", "user_id": 1.5},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "x" * 129},
        {"spot": ["87fa11c2-ff00-44a1"], "user_id": "1"},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "1", "clickid": {"a": 1}},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "1", "clickid": "x" * 257},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "1", "fbclid": False},
        # what no partner's request would carry: the subscriber could never be found
        {"spot": "87fa11c2-ff00-44a1", "user_id": " 558 "},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "558\n"},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "5\x0058"},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "1", "clickid": "ABC "},
        {"spot": "87fa11c2-ff00-44a1", "user_id": "1", "clickid": "\tABC"},
    ],
)
async def test_create_subscriber_bad_body(api: Api, world: World, payload: dict[str, Any]) -> None:
    status, body = await api.call("POST", "/api/v1/subscribers", world.key, json=payload)
    assert status == 400, body
    is_error(status, body)


# -- spot settings ----------------------------------------------------------------------


async def test_configure_facebook_and_telegram(api: Api, world: World) -> None:
    status, body = await api.call(
        "PUT",
        f"/api/v1/spots/{world.spot_id}/facebook",
        world.key,
        json={"pixel_id": "123", "access_token": "EAAB", "test_event_code": "TEST1"},
    )
    assert status == 200, body
    assert body["spot"] == world.spot_id
    status, body = await api.call(
        "PUT",
        f"/api/v1/spots/{world.spot_id}/facebook",
        world.key,
        json={"pixel_id": "456", "access_token": "EAAC"},
    )
    assert status == 200, body
    status, body = await api.call(
        "PUT", f"/api/v1/spots/{world.spot_id}/telegram", world.key, json={"bot_token": "1:AA"}
    )
    assert status == 200, body
    assert body["spot"] == world.spot_id

    events = (await api.events(world.key, limit=1000))["events"]
    settings = [e for e in events if e["type"] in ("FacebookConfigured", "TelegramConfigured")]
    assert [e["type"] for e in settings] == [
        "FacebookConfigured",
        "FacebookConfigured",
        "TelegramConfigured",
    ]
    assert settings[0]["data"]["pixel_id"] == "123"
    assert settings[0]["data"]["test_event_code"] == "TEST1"
    assert settings[1]["data"]["pixel_id"] == "456"
    assert all(e["data"]["spot_id"] == world.spot_id for e in settings)


@pytest.mark.parametrize(
    ("channel", "payload"),
    [("facebook", {"pixel_id": "1", "access_token": "x"}), ("telegram", {"bot_token": "x"})],
)
async def test_spot_settings_of_another_account_or_unknown_spot_are_404(
    api: Api, world: World, channel: str, payload: dict[str, str]
) -> None:
    other = await api.create_account("Other")
    for key, spot_id in ((other, str(world.spot_id)), (world.key, "999"), (world.key, "abc")):
        status, body = await api.call(
            "PUT", f"/api/v1/spots/{spot_id}/{channel}", key, json=payload
        )
        assert status == 404, (key, spot_id, body)
        is_error(status, body)


@pytest.mark.parametrize(
    ("channel", "raw"),
    [
        ("facebook", b""),
        ("facebook", b"{}"),
        ("facebook", b'{"pixel_id": "1"}'),
        ("facebook", b'{"access_token": "x"}'),
        ("facebook", b'{"pixel_id": "", "access_token": "x"}'),
        ("facebook", b'{"pixel_id": ["1"], "access_token": "x"}'),
        ("facebook", b'{"pixel_id": "1", "access_token": "x", "test_event_code": {}}'),
        ("facebook", b"{"),
        ("facebook", b"[]"),
        ("telegram", b"{}"),
        ("telegram", b'{"bot_token": null}'),
        ("telegram", b'{"bot_token": 1.5}'),
        ("telegram", b'{"bot_token": "' + b"x" * 513 + b'"}'),
        ("telegram", b"nope"),
        ("telegram", b"[1]"),
    ],
)
async def test_spot_settings_bad_body(
    client: Client, world: World, channel: str, raw: bytes
) -> None:
    status, body = await answer(
        await client.put(
            f"/api/v1/spots/{world.spot_id}/{channel}",
            data=raw,
            headers={**bearer(world.key), "Content-Type": "application/json"},
        )
    )
    assert status == 400, body
    is_error(status, body)


# -- the account's events ---------------------------------------------------------------


async def test_events_are_the_accounts_own_in_log_order(
    client: Client, api: Api, world: World
) -> None:
    other = await make_world(api, name="Other", spot="other-spot", clickid="O-1", user_id="1")
    await postback(client, clickid=world.clickid, goal="reg")
    await postback(client, clickid=other.clickid, goal="reg")
    await postback(client, clickid=world.clickid, goal="dep", sum="3")

    mine = (await api.events(world.key))["events"]
    theirs = (await api.events(other.key))["events"]
    positions = [e["position"] for e in mine]
    assert positions == sorted(positions)
    assert not {e["position"] for e in mine} & {e["position"] for e in theirs}
    assert [e["type"] for e in mine] == [
        "AccountCreated",
        "SpotCreated",
        "GoalDefined",
        "SubscriberCreated",
        "GoalReached",
        "GoalReached",
    ]
    goals = [e for e in mine if e["type"] == "GoalReached"]
    assert [e["data"]["goal"] for e in goals] == ["reg", "dep"]
    assert all(e["data"]["subscriber_id"] == world.subscriber_id for e in goals)
    assert goals[0]["request"]["clickid"] == world.clickid
    assert [e["data"]["goal"] for e in theirs if e["type"] == "GoalReached"] == ["reg"]


async def test_events_after_and_limit(client: Client, api: Api, world: World) -> None:
    for amount in ("1", "2", "3"):
        await postback(client, clickid=world.clickid, goal="redep", sum=amount)
    everything = await api.events(world.key)
    events = everything["events"]
    assert len(events) == 7
    assert everything["next_after"] >= events[-1]["position"]

    paged: list[Any] = []
    after = 0
    for _ in range(20):
        page = await api.events(world.key, after=after, limit=2)
        assert len(page["events"]) <= 2
        if not page["events"]:
            break
        paged.extend(page["events"])
        assert page["next_after"] == page["events"][-1]["position"]
        after = page["next_after"]
    assert paged == events

    later = await api.events(world.key, after=events[3]["position"])
    assert later["events"] == events[4:]
    assert (await api.events(world.key, after=events[-1]["position"]))["events"] == []


@pytest.mark.parametrize(
    "query",
    [
        "after=abc",
        "after=-1",
        "after=1.5",
        "after=99999999999999999999",
        "limit=0",
        "limit=-5",
        "limit=1001",
        "limit=abc",
        "limit=99999999999999999999",
        "limit=" + "9" * 5000,
    ],
)
async def test_events_bad_query(client: Client, world: World, query: str) -> None:
    status, body = await answer(
        await client.get(f"/api/v1/events?{query}", headers=bearer(world.key))
    )
    assert status == 400, body
    is_error(status, body)


# -- service endpoints and errors ---------------------------------------------------------


async def test_healthz(client: Client, api: Api, world: World) -> None:
    await postback(client, clickid=world.clickid, goal="reg")
    await api.postbacks(world.key)  # answers once the projections have applied the log
    status, body = await answer(await client.get("/healthz"))
    assert status == 200
    assert body["ok"] is True
    # The only instance leads its projections, and they are up to date.
    assert body["projections"] == {"leader": True, "position": body["position"]}


async def test_healthz_is_503_while_the_log_takes_no_appends(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer runs, but the database refuses to write (a read-only file, a full disk):
    # a load balancer must see it, not a 200 beside a 503 for every postback; and once the
    # database takes writes again, /healthz must say so with no postback to tell it (the
    # balancer sends none to an instance it took out).
    store = client.server.app[STORE]
    if isinstance(store, SQLiteEventStore):

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("attempt to write a readonly database")

        monkeypatch.setattr(sqlite_module, "commit_batch", refuse)
        monkeypatch.setattr(sqlite_module, "_probe_write", refuse)
    else:

        async def refuse_async(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailableError("PostgreSQL: the database is read-only")

        monkeypatch.setattr(postgres_writer, "commit_batch", refuse_async)
        monkeypatch.setattr(postgres_module, "_probe_write", refuse_async)
    assert (await answer(await client.get("/healthz")))[0] == 200  # nothing failed yet
    status, body = await postback(client, clickid=world.clickid, goal="reg")
    assert status == 503, body
    for _ in range(2):  # and again: the check finds it still refusing
        status, body = await answer(await client.get("/healthz"))
        assert (status, body) == (503, {"ok": False, "error": "the log takes no appends"})

    monkeypatch.undo()  # the database takes writes again
    status, body = await answer(await client.get("/healthz"))
    assert (status, body["ok"]) == (200, True)
    assert store.write_failure is None
    assert (await postback(client, clickid=world.clickid, goal="reg"))[0] == 200


async def test_metrics(client: Client, world: World) -> None:
    await postback(client, clickid=world.clickid, goal="reg")
    response = await client.get("/metrics")
    async with response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert "postback_http_requests" in text
    assert 'route="/postback/"' in text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/api/v1/nope"),
        ("GET", "/api/v1/spots/1"),
        ("GET", "/api/v1/subscribers/1/history"),
        ("GET", "/postback/extra"),
    ],
)
async def test_unknown_routes_are_a_json_404(client: Client, method: str, path: str) -> None:
    status, body = await answer(await client.request(method, path))
    assert status == 404
    is_error(status, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/accounts"),
        ("DELETE", "/api/v1/spots"),
        ("PUT", "/api/v1/spots"),
        ("POST", "/api/v1/goals/level10"),
        ("DELETE", "/api/v1/subscribers/1"),
        ("GET", "/api/v1/subscribers"),
        ("POST", "/api/v1/subscribers/1"),
        ("POST", "/api/v1/events"),
        ("POST", "/healthz"),
        ("PATCH", "/spot/postback/chat/"),
    ],
)
async def test_wrong_methods_are_a_json_405(client: Client, method: str, path: str) -> None:
    status, body = await answer(await client.request(method, path))
    assert status == 405
    is_error(status, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/spots"),
        ("PUT", "/api/v1/goals/level10"),
        ("POST", "/api/v1/subscribers"),
        ("PUT", "/api/v1/spots/1/facebook"),
        ("PUT", "/api/v1/spots/1/telegram"),
    ],
)
@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b"[{}]",
        b"1",
        b'"text"',
        b"null",
        b"\x00\xff",
        b'{"a": 1e999}',
        b'{"\\ud83d": 1}',
    ],
)
async def test_bad_json_to_any_operator_call_is_a_json_400(
    client: Client, world: World, method: str, path: str, raw: bytes
) -> None:
    status, body = await answer(
        await client.request(
            method,
            path,
            data=raw,
            headers={**bearer(world.key), "Content-Type": "application/json"},
        )
    )
    assert status == 400, body
    is_error(status, body)


@pytest.mark.parametrize("alias", ["0_1", "%EF%BC%91", "%D9%A1", "%201", "1%20"])
async def test_an_id_is_plain_decimal_digits(api: Api, world: World, alias: str) -> None:
    """Only the decimal spelling names an object: ``0_1`` or a full-width digit is no id."""
    assert world.subscriber_id == 1
    for path in (f"/api/v1/subscribers/{alias}", f"/api/v1/subscribers/{alias}/events"):
        status, body = await api.call("GET", path, world.key)
        assert status == 404, (path, body)
        is_error(status, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/spots"),
        ("PUT", "/api/v1/goals/level10"),
        ("POST", "/api/v1/subscribers"),
        ("PUT", "/api/v1/spots/1/telegram"),
    ],
)
async def test_a_body_over_the_limit_is_a_json_413(
    client: Client, world: World, method: str, path: str
) -> None:
    raw = b'{"title": "' + b"x" * (1024**2 + 1) + b'"}'
    status, body = await answer(
        await client.request(
            method,
            path,
            data=io.BytesIO(raw),
            headers={**bearer(world.key), "Content-Type": "application/json"},
        )
    )
    assert status == 413, body
    is_error(status, body)
