"""Partner postbacks (API.md section 1): both paths, GET and POST (form and JSON), every check
in its order with its status, code and error text, and what an accepted postback records."""

from __future__ import annotations

import io
import itertools

import aiohttp
import pytest
from yarl import URL

from postback import partner
from postback.keys import STORE
from tests.postback.helpers import (
    POSTBACK_PATHS,
    STYLES,
    SUBSCRIBER_NOT_FOUND,
    Api,
    Client,
    World,
    answer,
    make_world,
    postback,
    send,
)

ROUTES = list(itertools.product(POSTBACK_PATHS, STYLES))
ROUTE_IDS = [f"{style}:{path}" for path, style in ROUTES]


def refused(body: object, code: str) -> None:
    assert isinstance(body, dict), body
    assert body["success"] is False, body
    assert body["code"] == code, body
    assert isinstance(body["error"], str), body
    assert body["error"], body


# -- accepted -------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "style"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_records_a_postback(
    client: Client, api: Api, world: World, path: str, style: str
) -> None:
    status, body = await send(client, path, {"clickid": world.clickid, "goal": "reg"}, style)
    assert status == 200, body
    assert body["success"] is True
    assert isinstance(body["position"], int)

    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["goals"]["reg"]["count"] == 1
    assert view["registered_at"] is not None


@pytest.mark.parametrize(("path", "style"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_finds_the_subscriber_by_user_id_and_spot(
    client: Client, api: Api, world: World, path: str, style: str
) -> None:
    params = {"user_id": world.user_id, "spot": world.spot, "goal": "dep", "sum": "100"}
    status, body = await send(client, path, params, style)
    assert status == 200, body
    assert body["success"] is True

    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["first_deposit"]["amount"] == "100.00"
    # ... and it is the same subscriber as the one of the clickid.
    status, body = await postback(client, clickid=world.clickid, goal="dep", sum="1")
    assert status == 409
    refused(body, "deposit_already")


async def test_the_seed_examples(client: Client, api: Api, world: World) -> None:
    for params in (
        {"clickid": world.clickid, "goal": "reg"},
        {"clickid": world.clickid, "goal": "dep", "sum": "100"},
        {"clickid": world.clickid, "goal": "redep", "sum": "50"},
        {"clickid": world.clickid, "goal": "level10", "sum": "1"},
        {"user_id": world.user_id, "spot": world.spot, "goal": "rebill"},
    ):
        status, body = await postback(client, **params)
        assert status == 200, (params, body)
        assert body["success"] is True

    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["first_deposit"]["amount"] == "100.00"
    assert view["first_deposit"]["at"] is not None
    assert view["deposits"] == {"count": 2, "total": "150.00"}
    assert view["rebills"] == 1
    assert set(view["goals"]) == {"reg", "dep", "redep", "level10", "rebill"}
    assert view["profile"] == {"level": 10}


@pytest.mark.parametrize("goal", ["redep", "rebill", "level10"])
async def test_repeatable_goals_are_recorded_every_time(
    client: Client, api: Api, world: World, goal: str
) -> None:
    for _ in range(3):
        status, body = await postback(client, clickid=world.clickid, goal=goal, sum="2")
        assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["goals"][goal]["count"] == 3


async def test_amounts_are_exact_decimals(client: Client, api: Api, world: World) -> None:
    for amount in ("0.1", "0.2"):
        status, body = await postback(client, clickid=world.clickid, goal="redep", sum=amount)
        assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["deposits"] == {"count": 2, "total": "0.30"}
    events = await api.history(world.key, world.subscriber_id)
    assert [e["data"]["amount"] for e in events if e["type"] == "GoalReached"] == ["0.10", "0.20"]


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("100.5", "100.50"),
        ("5.", "5.00"),
        (".5", "0.50"),
        ("1e2", "100.00"),
        ("0.12345678", "0.12345678"),
    ],
)
async def test_amount_formats(
    client: Client, api: Api, world: World, raw: str, stored: str
) -> None:
    status, body = await postback(client, clickid=world.clickid, goal="dep", sum=raw)
    assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["first_deposit"]["amount"] == stored


async def test_sumrd_is_used_when_sum_is_absent_or_empty(
    client: Client, api: Api, world: World
) -> None:
    status, body = await postback(client, clickid=world.clickid, goal="redep", sumrd="7")
    assert status == 200, body
    status, body = await postback(client, clickid=world.clickid, goal="redep", sum="", sumrd="3")
    assert status == 200, body
    # sum wins over a sumrd that would be refused.
    status, body = await postback(client, clickid=world.clickid, goal="redep", sum="5", sumrd="x")
    assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["deposits"] == {"count": 3, "total": "15.00"}


async def test_playerid_assigns_then_replaces(client: Client, api: Api, world: World) -> None:
    assert (await api.subscriber(world.key, world.subscriber_id))["player_id"] is None
    status, _ = await postback(client, clickid=world.clickid, goal="reg", playerid="P-1")
    assert status == 200
    assert (await api.subscriber(world.key, world.subscriber_id))["player_id"] == "P-1"
    status, _ = await postback(client, clickid=world.clickid, goal="redep", playerid="P-2")
    assert status == 200
    assert (await api.subscriber(world.key, world.subscriber_id))["player_id"] == "P-2"

    events = await api.history(world.key, world.subscriber_id)
    assigned = [e["data"] for e in events if e["type"] == "PlayerIdAssigned"]
    assert [(a["player_id"], a["previous"]) for a in assigned] == [("P-1", None), ("P-2", "P-1")]


async def test_a_refused_postback_does_not_assign_the_playerid(
    client: Client, api: Api, world: World
) -> None:
    status, _ = await postback(client, clickid=world.clickid, goal="reg", playerid="P-1")
    assert status == 200
    status, body = await postback(client, clickid=world.clickid, goal="reg", playerid="P-9")
    assert status == 409
    refused(body, "registration_already")
    assert (await api.subscriber(world.key, world.subscriber_id))["player_id"] == "P-1"


# -- parameters ---------------------------------------------------------------------------


async def test_a_repeated_parameter_counts_by_its_first_value(
    client: Client, api: Api, world: World
) -> None:
    params = [("clickid", world.clickid), ("goal", "dep"), ("goal", "reg"), ("sum", "9")]
    status, body = await send(client, "/postback/", params)
    assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert set(view["goals"]) == {"dep"}


async def test_body_parameters_win_over_the_query(client: Client, api: Api, world: World) -> None:
    url = URL("/postback/").with_query({"clickid": "nobody", "goal": "reg"})
    status, body = await answer(await client.post(url, data={"clickid": world.clickid}))
    assert status == 200, body  # the body's clickid, the query's goal
    status, body = await answer(
        await client.post(url, json={"clickid": world.clickid, "goal": "dep", "sum": 4})
    )
    assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert set(view["goals"]) == {"reg", "dep"}
    assert view["first_deposit"]["amount"] == "4.00"


async def test_an_empty_clickid_falls_back_to_user_id_and_spot(
    client: Client, api: Api, world: World
) -> None:
    status, body = await postback(
        client, clickid="", user_id=world.user_id, spot=world.spot, goal="reg"
    )
    assert status == 200, body
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"]["reg"]["count"] == 1


async def test_json_body_numbers_are_parameters(client: Client, api: Api, world: World) -> None:
    payload = {"user_id": int(world.user_id), "spot": world.spot, "goal": "dep", "sum": 12.5}
    status, body = await answer(await client.post("/postback", json=payload))
    assert status == 200, body
    assert (await api.subscriber(world.key, world.subscriber_id))["first_deposit"][
        "amount"
    ] == "12.50"


async def test_a_multipart_form_skips_file_parts(client: Client, api: Api, world: World) -> None:
    form = aiohttp.FormData()
    form.add_field("clickid", world.clickid)
    form.add_field("goal", "dep")
    form.add_field("sum", io.BytesIO(b"999"), filename="sum.txt")  # a file: no parameter
    form.add_field("sum", "7.25")
    status, body = await answer(await client.post("/postback/", data=form))
    assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["first_deposit"]["amount"] == "7.25"


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="goal"\r\n\r\nreg'),
        ("multipart/form-data; boundary=x", b"no boundary in it"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
            b'Content-Disposition: form-data; name="goal"\r\n\r\nreg\r\n--x--\r\n',
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="goal"\r\n\r\nde',
        ),
    ],
    ids=["no-boundary-parameter", "no-parts", "unknown-charset", "cut-off"],
)
async def test_a_broken_multipart_body_is_bad_body(
    client: Client, api: Api, world: World, content_type: str, raw: bytes
) -> None:
    url = URL("/postback/").with_query({"clickid": world.clickid, "goal": "reg"})
    status, body = await answer(
        await client.post(url, data=raw, headers={"Content-Type": content_type})
    )
    assert status == 400, body
    refused(body, "bad_body")
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"] == {}


async def test_a_parser_failure_is_a_logged_400_not_a_500(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: object, body: bytes) -> dict[str, str]:
        raise RecursionError("what a hostile body did to a parser")

    monkeypatch.setattr(partner, "partner_params", broken)
    status, body = await answer(await client.post("/postback/?clickid=x", data=b"sum=1"))
    assert status == 400, body
    refused(body, "bad_body")
    assert "could not be read" in caplog.text
    store = client.server.app[STORE]
    (logged,) = [e for e in await store.read_all() if e.type == "PostbackRejected"]
    assert logged.metadata["postback"]["body"] == "sum=1"
    assert logged.metadata["postback"]["response"] == body


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("field", ["sum", "sumrd"])
async def test_a_json_boolean_is_no_amount(
    client: Client, api: Api, world: World, field: str, flag: bool
) -> None:
    payload = {"clickid": world.clickid, "goal": "dep", field: flag}
    status, body = await answer(await client.post("/postback/", json=payload))
    assert status == 400, body
    refused(body, "bad_amount")
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"] == {}


async def test_a_json_boolean_goal_is_the_word(client: Client, world: World) -> None:
    payload = {"clickid": world.clickid, "goal": True}
    status, body = await answer(await client.post("/postback/", json=payload))
    assert status == 404, body
    refused(body, "unknown_goal")
    assert "'true'" in body["error"]


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("application/json", b"{not json"),
        ("application/json", b"[1, 2]"),
        ("application/json", b'"clickid"'),
        ("application/json", b'{"clickid": {"nested": 1}, "goal": "reg"}'),
        ("application/json", b'{"clickid": "\\ud800", "goal": "reg"}'),
        ("application/json", b"\xff\xfe"),
    ],
)
async def test_a_bad_json_body_is_a_json_400(
    client: Client, world: World, content_type: str, raw: bytes
) -> None:
    status, body = await answer(
        await client.post("/postback/", data=raw, headers={"Content-Type": content_type})
    )
    assert status == 400, body
    assert body["success"] is False
    assert isinstance(body["error"], str)


async def test_percent_escapes_that_decode_to_lone_surrogates(client: Client, world: World) -> None:
    url = URL.build(path="/postback/", query_string="clickid=%ED%A0%80&goal=reg", encoded=True)
    status, body = await answer(await client.get(url))
    assert status == 404, body
    assert body == {
        "success": False,
        "code": "subscriber_not_found",
        "error": SUBSCRIBER_NOT_FOUND,
    }


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD"])
async def test_other_methods_are_a_json_405(client: Client, method: str) -> None:
    response = await client.request(method, "/postback/?clickid=A&goal=reg")
    async with response:
        assert response.status == 405
        if method != "HEAD":
            assert response.content_type == "application/json"
            assert (await response.json())["success"] is False


# -- the checks, in order -------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"goal": "reg"},
        {"user_id": "7788", "goal": "reg"},
        {"spot": "87fa11c2-ff00-44a1", "goal": "reg"},
        {"clickid": "", "goal": "reg"},
        {"clickid": "", "user_id": "7788", "spot": "", "goal": "reg"},
    ],
    ids=["nothing", "goal-only", "user_id-only", "spot-only", "empty-clickid", "empty-spot"],
)
async def test_no_identity(
    client: Client, world: World, params: dict[str, str], style: str
) -> None:
    status, body = await send(client, "/api/v1/api_send_postback/", params, style)
    assert status == 400, body
    refused(body, "no_identity")


BAD_AMOUNTS = [
    "{sum}",
    "abc",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1,5",
    "1e999",
    "0x10",
    "1 5",
    "$5",
    "5$",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: a digit to Python's Decimal, not to a tracker
    "\uff11.50",  # FULLWIDTH DIGIT ONE
    "1\u0665",
]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_bad_amount_in_sum(
    client: Client, api: Api, world: World, amount: str, style: str
) -> None:
    params = {"clickid": world.clickid, "goal": "dep", "sum": amount}
    status, body = await send(client, "/postback", params, style)
    assert status == 400, body
    refused(body, "bad_amount")
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"] == {}


@pytest.mark.parametrize(
    "amount", ["{sum}", "abc", "NaN", "1,5", "1e999", "1234567890123456", "0.123456789"]
)
async def test_bad_amount_in_sumrd(client: Client, world: World, amount: str) -> None:
    status, body = await postback(client, clickid=world.clickid, goal="dep", sumrd=amount)
    assert status == 400, body
    refused(body, "bad_amount")
    status, body = await postback(client, clickid=world.clickid, goal="dep", sum="", sumrd=amount)
    assert status == 400, body
    refused(body, "bad_amount")


async def test_checks_come_in_the_documented_order(client: Client, api: Api, world: World) -> None:
    other_spot = (await api.create_spot(world.key, "other", "other-spot"))["token"]
    cases: list[tuple[dict[str, str], int, str]] = [
        # no identity AND bad amount AND no goal
        ({"sum": "{sum}"}, 400, "no_identity"),
        ({"user_id": world.user_id, "sum": "abc", "goal": "reg"}, 400, "no_identity"),
        # bad amount AND unknown subscriber (AND no goal)
        ({"clickid": "nobody", "goal": "dep", "sum": "{sum}"}, 400, "bad_amount"),
        ({"clickid": "nobody", "sumrd": "NaN"}, 400, "bad_amount"),
        # bad amount AND known subscriber AND no goal / unknown goal
        ({"clickid": world.clickid, "sum": "1,5"}, 400, "bad_amount"),
        ({"clickid": world.clickid, "goal": "nope", "sum": "1,5"}, 400, "bad_amount"),
        # unknown subscriber AND no goal / unknown goal
        ({"clickid": "nobody"}, 404, "subscriber_not_found"),
        ({"clickid": "nobody", "goal": ""}, 404, "subscriber_not_found"),
        ({"clickid": "nobody", "goal": "nope"}, 404, "subscriber_not_found"),
        ({"user_id": "999", "spot": world.spot}, 404, "subscriber_not_found"),
        (
            {"user_id": world.user_id, "spot": other_spot, "goal": "reg"},
            404,
            "subscriber_not_found",
        ),
        (
            {"user_id": world.user_id, "spot": "no-such-spot", "goal": "reg"},
            404,
            "subscriber_not_found",
        ),
        # known subscriber: goal missing, empty, unknown
        ({"clickid": world.clickid}, 404, "no_goal"),
        ({"clickid": world.clickid, "goal": ""}, 404, "no_goal"),
        ({"user_id": world.user_id, "spot": world.spot, "goal": ""}, 404, "no_goal"),
        ({"clickid": world.clickid, "goal": "level11"}, 404, "unknown_goal"),
        ({"clickid": world.clickid, "goal": "REG"}, 404, "unknown_goal"),
    ]
    for params, status, code in cases:
        got_status, body = await postback(client, **params)
        assert (got_status, body["code"]) == (status, code), (params, body)
        refused(body, code)
        if code == "subscriber_not_found":
            assert body["error"] == SUBSCRIBER_NOT_FOUND

    # Nothing of it was recorded for the subscriber.
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"] == {}


@pytest.mark.parametrize(("path", "style"), ROUTES, ids=ROUTE_IDS)
async def test_subscriber_not_found_answer(client: Client, path: str, style: str) -> None:
    status, body = await send(client, path, {"clickid": "nobody", "goal": "reg"}, style)
    assert status == 404
    assert body == {
        "success": False,
        "code": "subscriber_not_found",
        "error": SUBSCRIBER_NOT_FOUND,
    }


async def test_a_custom_goal_of_another_account_is_unknown(
    client: Client, api: Api, world: World
) -> None:
    other = await api.create_account("Other")
    await api.define_goal(other, "kyc_submit")
    status, body = await postback(client, clickid=world.clickid, goal="kyc_submit")
    assert status == 404
    refused(body, "unknown_goal")
    await api.define_goal(world.key, "kyc_submit")
    status, body = await postback(client, clickid=world.clickid, goal="kyc_submit")
    assert status == 200, body


@pytest.mark.parametrize("style", STYLES)
async def test_registration_already(client: Client, api: Api, world: World, style: str) -> None:
    params = {"clickid": world.clickid, "goal": "reg"}
    assert (await send(client, "/postback", params, style))[0] == 200
    status, body = await send(client, "/postback", params, style)
    assert status == 409
    refused(body, "registration_already")
    status, body = await postback(client, user_id=world.user_id, spot=world.spot, goal="reg")
    assert status == 409
    refused(body, "registration_already")
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"]["reg"]["count"] == 1


@pytest.mark.parametrize("style", STYLES)
async def test_deposit_already(client: Client, api: Api, world: World, style: str) -> None:
    params = {"clickid": world.clickid, "goal": "dep", "sum": "10"}
    assert (await send(client, "/postback", params, style))[0] == 200
    status, body = await send(client, "/postback", {**params, "sum": "20"}, style)
    assert status == 409
    refused(body, "deposit_already")
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["first_deposit"]["amount"] == "10.00"
    assert view["deposits"] == {"count": 1, "total": "10.00"}


async def test_a_deposit_without_registration_is_accepted(
    client: Client, api: Api, world: World
) -> None:
    status, body = await postback(client, clickid=world.clickid, goal="dep")
    assert status == 200, body
    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["registered_at"] is None
    assert view["deposits"]["count"] == 1


# -- txid -----------------------------------------------------------------------------------


async def test_a_txid_repeat_answers_like_the_first_and_records_nothing(
    client: Client, api: Api, world: World
) -> None:
    params = {"clickid": world.clickid, "goal": "dep", "sum": "25", "txid": "T-1"}
    first = await postback(client, **params)
    assert first[0] == 200, first
    for _ in range(2):
        assert await postback(client, **params) == first

    view = await api.subscriber(world.key, world.subscriber_id)
    assert view["deposits"] == {"count": 1, "total": "25.00"}
    events = await api.history(world.key, world.subscriber_id)
    assert [e["type"] for e in events] == ["SubscriberCreated", "GoalReached"]
    assert events[1]["data"]["txid"] == "T-1"


async def test_a_txid_repeat_of_reg_is_200_not_409(client: Client, api: Api, world: World) -> None:
    params = {"clickid": world.clickid, "goal": "reg", "txid": "R-1"}
    first = await postback(client, **params)
    assert first[0] == 200
    assert await postback(client, **params) == first
    assert await postback(client, "form", **params) == first
    assert await postback(client, "json", **params) == first
    # Without the txid (or with another one) it is a second registration: refused.
    status, body = await postback(client, clickid=world.clickid, goal="reg")
    assert status == 409
    refused(body, "registration_already")
    status, body = await postback(client, clickid=world.clickid, goal="reg", txid="R-2")
    assert status == 409
    refused(body, "registration_already")
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"]["reg"]["count"] == 1


async def test_a_txid_repeat_with_playerid_answers_like_the_first(
    client: Client, api: Api, world: World
) -> None:
    params = {"clickid": world.clickid, "goal": "redep", "sum": "1", "txid": "P-1", "playerid": "X"}
    first = await postback(client, **params)
    assert first[0] == 200
    assert await postback(client, **params) == first
    events = await api.history(world.key, world.subscriber_id)
    assert [e["type"] for e in events] == ["SubscriberCreated", "PlayerIdAssigned", "GoalReached"]
    assert first[1]["position"] == events[-1]["position"]


async def test_distinct_txids_are_distinct_conversions(
    client: Client, api: Api, world: World
) -> None:
    for txid in ("A", "B", "C"):
        status, _ = await postback(client, clickid=world.clickid, goal="redep", sum="1", txid=txid)
        assert status == 200
    assert (await api.subscriber(world.key, world.subscriber_id))["deposits"]["count"] == 3


async def test_a_txid_is_per_account(client: Client, api: Api, world: World) -> None:
    other = await make_world(api, name="Other", spot="other-spot", clickid="OTHER1", user_id="1")
    status, first = await postback(client, clickid=world.clickid, goal="dep", sum="1", txid="T")
    assert status == 200
    status, second = await postback(client, clickid=other.clickid, goal="dep", sum="2", txid="T")
    assert status == 200
    assert second["position"] != first["position"]
    assert (await api.subscriber(other.key, other.subscriber_id))["deposits"] == {
        "count": 1,
        "total": "2.00",
    }
    assert (await api.subscriber(world.key, world.subscriber_id))["deposits"] == {
        "count": 1,
        "total": "1.00",
    }


# -- what the history keeps -----------------------------------------------------------------


async def test_the_history_holds_the_request_of_each_event(
    client: Client, api: Api, world: World
) -> None:
    await postback(client, clickid=world.clickid, goal="reg", playerid="P")
    events = await api.history(world.key, world.subscriber_id)
    assert [e["type"] for e in events] == ["SubscriberCreated", "PlayerIdAssigned", "GoalReached"]
    created, first, second = events
    assert created["request"] is None  # an operator's doing, not a partner's
    assert created["data"]["clickid"] == world.clickid
    assert created["position"] < first["position"]
    assert first["position"] < second["position"]
    assert first["request"]["request_id"] == second["request"]["request_id"]
    request = second["request"]
    assert request["endpoint"] == "postback"
    assert request["method"] == "GET"
    assert request["path"] == "/postback/"
    assert request["clickid"] == world.clickid
    assert request["goal"] == "reg"
    assert request["status"] == 200
    assert request["response"]["success"] is True
    assert "clickid=ABC123" in request["query"]
    assert request["ip"] == "127.0.0.1"
    assert second["data"]["goal"] == "reg"
    assert second["data"]["standard"] is True


@pytest.mark.parametrize("path", [*POSTBACK_PATHS, "/spot/postback/chat/"])
async def test_a_body_over_the_limit_is_a_json_413(client: Client, world: World, path: str) -> None:
    raw = f"clickid={world.clickid}&goal=reg&pad=".encode() + b"x" * (1024**2 + 1)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = await answer(await client.post(path, data=io.BytesIO(raw), headers=headers))
    assert status == 413, body
    assert body["success"] is False
