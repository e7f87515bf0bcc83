"""The chat Contact endpoint (API.md section 2): the seed's exact answers and what is recorded."""

from __future__ import annotations

import pytest

from tests.postback.helpers import (
    CHAT_NEEDS_USER,
    CHAT_PATHS,
    SUBSCRIBER_NOT_FOUND,
    Api,
    Client,
    World,
    chat,
    send,
)


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_a_contact_is_recorded_with_the_seed_answer(
    client: Client, api: Api, world: World, path: str
) -> None:
    status, body = await send(client, path, {"user_id": world.user_id, "spot": world.spot})
    assert status == 200, body
    assert body == {
        "success": True,
        "subscriber": {
            "user_id": int(world.user_id),
            "id": world.subscriber_id,
            "spot": {"id": world.spot_id, "title": world.spot_title},
        },
    }
    assert type(body["subscriber"]["user_id"]) is int
    assert type(body["subscriber"]["id"]) is int
    assert type(body["subscriber"]["spot"]["id"]) is int

    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["contacts"] == 1
    events = await api.history(world.key, world.subscriber_id)
    assert [e["type"] for e in events] == ["SubscriberCreated", "ContactRecorded"]
    contact = events[1]
    assert contact["data"]["subscriber_id"] == world.subscriber_id
    assert contact["data"]["spot_id"] == world.spot_id
    assert contact["data"]["user_id"] == world.user_id
    assert contact["request"]["endpoint"] == "chat"
    assert contact["request"]["status"] == 200
    assert contact["request"]["response"] == body


async def test_the_seed_example_subscriber(client: Client, api: Api) -> None:
    key = await api.create_account()
    spot = await api.create_spot(key, "MVPtestQA", "seed-spot")
    subscriber = await api.create_subscriber(key, "seed-spot", "7275455017")
    status, body = await chat(client, user_id="7275455017", spot="seed-spot")
    assert status == 200
    assert body == {
        "success": True,
        "subscriber": {
            "user_id": 7275455017,
            "id": subscriber["id"],
            "spot": {"id": spot["id"], "title": "MVPtestQA"},
        },
    }


async def test_contacts_repeat(client: Client, api: Api, world: World) -> None:
    for _ in range(3):
        status, _ = await chat(client, user_id=world.user_id, spot=world.spot)
        assert status == 200
    assert (await api.subscriber(world.key, world.subscriber_id))["contacts"] == 3


async def test_a_contact_does_not_disturb_postbacks(client: Client, api: Api, world: World) -> None:
    """The Contact shares the subscriber's stream with the goals: both keep working."""
    status, _ = await send(client, "/postback/", {"clickid": world.clickid, "goal": "reg"})
    assert status == 200
    status, _ = await chat(client, user_id=world.user_id, spot=world.spot)
    assert status == 200
    status, body = await send(client, "/postback/", {"clickid": world.clickid, "goal": "reg"})
    assert status == 409, body
    status, body = await send(client, "/postback/", {"clickid": world.clickid, "goal": "dep"})
    assert status == 200, body


@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user_id": "7788"},
        {"user_id": "7788", "spot": ""},
        {"user_id": "7788", "spot": "no-such-spot"},
        {"spot": "no-such-spot"},
    ],
    ids=["nothing", "no-spot", "empty-spot", "unknown-spot", "unknown-spot-no-user"],
)
async def test_forbidden_without_a_known_spot(
    client: Client, world: World, path: str, params: dict[str, str]
) -> None:
    status, body = await send(client, path, params)
    assert status == 403
    assert body == {}


@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize("params", [{}, {"user_id": ""}], ids=["missing", "empty"])
async def test_user_id_missing(
    client: Client, world: World, path: str, params: dict[str, str]
) -> None:
    status, body = await send(client, path, {**params, "spot": world.spot})
    assert status == 400
    assert body == {"success": False, "error": CHAT_NEEDS_USER}


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_subscriber_not_found(client: Client, api: Api, world: World, path: str) -> None:
    other_spot = await api.create_spot(world.key, "other", "other-spot")
    for params in (
        {"user_id": "999", "spot": world.spot},
        {"user_id": world.user_id, "spot": other_spot["token"]},  # a subscriber of another spot
    ):
        status, body = await send(client, path, params)
        assert status == 404
        assert body == {"success": False, "error": SUBSCRIBER_NOT_FOUND}
    assert (await api.subscriber(world.key, world.subscriber_id))["contacts"] == 0


async def test_a_clickid_does_not_identify_a_chat_subscriber(client: Client, world: World) -> None:
    status, body = await chat(client, clickid=world.clickid, spot=world.spot)
    assert status == 400
    assert body == {"success": False, "error": CHAT_NEEDS_USER}


async def test_post_is_accepted_too(client: Client, world: World) -> None:
    for style in ("form", "json", "multipart"):
        status, body = await send(
            client, "/spot/postback/chat/", {"user_id": world.user_id, "spot": world.spot}, style
        )
        assert status == 200, (style, body)
        assert body["subscriber"]["id"] == world.subscriber_id


async def test_a_non_numeric_user_id(client: Client, api: Api, world: World) -> None:
    subscriber = await api.create_subscriber(world.key, world.spot, "tg-user")
    status, body = await chat(client, user_id="tg-user", spot=world.spot)
    assert status == 200, body
    assert body["subscriber"]["id"] == subscriber["id"]
    assert body["subscriber"]["user_id"] == "tg-user"


@pytest.mark.parametrize(
    ("user_id", "answered"),
    [
        ("-1001234567890", -1001234567890),  # a group's id
        ("9223372036854775807", 9223372036854775807),
        ("00123", "00123"),  # not the number 123: answered as given
        ("+5", "+5"),
        ("1_000", "1_000"),
        ("-0", "-0"),
        ("\u0663", "\u0663"),
        ("9223372036854775808", "9223372036854775808"),
    ],
)
async def test_a_user_id_is_a_number_only_when_it_is_written_as_one(
    client: Client, api: Api, world: World, user_id: str, answered: int | str
) -> None:
    subscriber = await api.create_subscriber(world.key, world.spot, user_id)
    status, body = await chat(client, user_id=user_id, spot=world.spot)
    assert status == 200, body
    assert body["subscriber"]["id"] == subscriber["id"]
    assert body["subscriber"]["user_id"] == answered
    assert type(body["subscriber"]["user_id"]) is type(answered)


async def test_a_user_id_beyond_64_bits_is_not_a_500(
    client: Client, api: Api, world: World
) -> None:
    """user_id is a JSON integer in the answer; one that orjson cannot write must not fail."""
    user_id = "123456789012345678901234567890"
    subscriber = await api.create_subscriber(world.key, world.spot, user_id)
    status, body = await chat(client, user_id=user_id, spot=world.spot)
    assert status == 200, body
    assert body["subscriber"]["id"] == subscriber["id"]
    assert str(body["subscriber"]["user_id"]) == user_id
    assert (await api.subscriber(world.key, subscriber["id"]))["contacts"] == 1
