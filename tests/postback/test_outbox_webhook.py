"""Webhooks: registration (and its refusals), signed goal events, secrets never shown."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from tests.postback.helpers import ADMIN, chat, postback
from tests.postback.outbox_support import (
    Receiver,
    Reply,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
    service_fixture,  # noqa: F401
    signed,
)

SECRET = "whsec-0123456789abcdef"


async def test_registration_answers_201_and_never_echoes_the_secret(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    url = receiver.hook_url("a")
    status, body = await service.api.call(
        "POST", "/api/v1/webhooks", world.key, json={"url": url, "secret": SECRET}
    )
    assert status == 201
    assert body == {"id": 1, "url": url, "secret": "***"}
    # the same URL again: its secret is replaced, same id
    status, body = await service.api.call(
        "POST",
        "/api/v1/webhooks",
        world.key,
        json={"url": url, "secret": "other-secret-0123456789"},
    )
    assert (status, body["id"]) == (200, 1)
    other = await service.webhook(world.key, receiver.hook_url("b"), SECRET)
    assert other["id"] == 2
    status, listed = await service.api.call("GET", "/api/v1/webhooks", world.key)
    assert status == 200
    assert [(h["id"], h["url"], h["secret"]) for h in listed["webhooks"]] == [
        (1, url, "***"),
        (2, receiver.hook_url("b"), "***"),
    ]
    events = await service.api.events(world.key)
    registered = [e for e in events["events"] if e["type"] == "WebhookRegistered"]
    assert len(registered) == 3
    assert {e["stream"] for e in registered} == {"webhooks-1"}
    assert all(e["data"]["secret"] == "***" for e in registered)
    assert SECRET not in str(events)
    assert "other-secret-0123456789" not in str(events)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"secret": SECRET}, "missing_field"),
        ({"url": "https://example.com/hook"}, "missing_field"),
        ({"url": "ftp://example.com/hook", "secret": SECRET}, "bad_url"),
        ({"url": "example.com/hook", "secret": SECRET}, "bad_url"),
        ({"url": "http:///hook", "secret": SECRET}, "bad_url"),
        ({"url": "https://exa mple.com/", "secret": SECRET}, "bad_url"),
        ({"url": "https://example.com:99999/", "secret": SECRET}, "bad_url"),
        ({"url": "javascript:alert(1)", "secret": SECRET}, "bad_url"),
        ({"url": ["https://example.com"], "secret": SECRET}, "bad_field"),
        ({"url": "https://example.com/" + "a" * 2048, "secret": SECRET}, "bad_field"),
        ({"url": "https://example.com/", "secret": "s" * 257}, "bad_field"),
        ({"url": "https://example.com/", "secret": "s" * 15}, "bad_field"),
        ({"url": "https://example.com/", "secret": "s"}, "bad_field"),
        ({"url": "https://example.com/", "secret": " " * 20}, "bad_field"),
        ({"url": "https://example.com/", "secret": {"a": 1}}, "bad_field"),
    ],
)
async def test_bad_registrations_are_400_json(
    service: Service, payload: dict[str, Any], code: str
) -> None:
    key = await service.api.create_account()
    status, body = await service.api.call("POST", "/api/v1/webhooks", key, json=payload)
    assert status == 400
    assert body["success"] is False
    assert body["code"] == code


async def test_other_refusals(service: Service) -> None:
    key = await service.api.create_account()
    status, body = await service.api.call("POST", "/api/v1/webhooks", key, data=b"{not json")
    assert (status, body["code"]) == (400, "bad_json")
    status, body = await service.api.call("POST", "/api/v1/webhooks", None, json={})
    assert status == 401
    status, body = await service.api.call("POST", "/api/v1/webhooks", ADMIN, json={})
    assert status == 401
    for n in range(20):
        await service.webhook(key, f"https://example.com/{n}", SECRET)
    status, body = await service.api.call(
        "POST", "/api/v1/webhooks", key, json={"url": "https://example.com/x", "secret": SECRET}
    )
    assert (status, body["code"]) == (409, "too_many_webhooks")


async def test_goal_events_are_posted_signed_with_the_event_id(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    await service.webhook(world.key, receiver.hook_url("a"), SECRET)
    await service.webhook(world.key, receiver.hook_url("b"), "second-secret-0123456789")
    status, _ = await postback(service.client, clickid=world.clickid, goal="reg")
    assert status == 200
    status, _ = await postback(
        service.client, clickid=world.clickid, goal="dep", sum="100.50", playerid="P-1"
    )
    assert status == 200
    await chat(service.client, user_id=world.user_id, spot=world.spot)  # not a goal: not sent
    await service.settle()

    history = await service.api.history(world.key, world.subscriber_id)
    goals = [e for e in history if e["type"] == "GoalReached"]
    sent = receiver.of("webhook")
    assert len(sent) == 4
    for request in sent:
        secret = SECRET if request.path == "/hook/a" else "second-secret-0123456789"
        expected = signed(secret, request.body)
        assert hmac.compare_digest(request.headers["X-Postback-Signature"], expected)
        assert request.headers["Content-Type"] == "application/json"
        body = request.json
        assert request.headers["X-Postback-Event-Id"] == body["event_id"]
        assert request.headers["X-Postback-Attempt"] == "1"
        assert body["type"] == "GoalReached"
    by_goal = {r.json["goal"]: r.json for r in sent if r.path == "/hook/a"}
    dep = goals[1]
    assert by_goal["dep"] == {
        "event_id": dep["event_id"],
        "type": "GoalReached",
        "position": dep["position"],
        "recorded_at": dep["recorded_at"],
        "account_id": 1,
        "subscriber_id": world.subscriber_id,
        "spot_id": world.spot_id,
        "goal": "dep",
        "standard": True,
        "amount": "100.50",
        "txid": None,
        "profile": None,
        "user_id": world.user_id,
        "clickid": world.clickid,
        "player_id": "P-1",
    }
    # a tampered body does not verify
    assert signed(SECRET, sent[0].body + b" ") != sent[0].headers["X-Postback-Signature"]


async def test_only_the_accounts_own_goals_and_only_after_registration(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    other = await service.world(name="Other", spot="other-spot", clickid="OTHER", user_id="1")
    await postback(service.client, clickid=world.clickid, goal="reg")  # before registering
    await service.webhook(world.key, receiver.hook_url("a"), SECRET)
    await postback(service.client, clickid=other.clickid, goal="reg")  # another account
    await postback(service.client, clickid=world.clickid, goal="dep", sum="1")
    await service.settle()
    assert [r.json["goal"] for r in receiver.of("webhook")] == ["dep"]


async def test_a_removed_webhook_gets_nothing_more_and_its_id_is_not_given_again(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    first = await service.webhook(world.key, receiver.hook_url("a"), SECRET)
    second = await service.webhook(world.key, receiver.hook_url("b"), SECRET)
    await postback(service.client, clickid=world.clickid, goal="reg")
    status, body = await service.api.call("DELETE", f"/api/v1/webhooks/{first['id']}", world.key)
    assert status == 200, body
    assert body == {"id": first["id"], "url": receiver.hook_url("a"), "removed": True}
    await postback(service.client, clickid=world.clickid, goal="dep", sum="1")
    await service.settle()
    sent = sorted((r.path, r.json["goal"]) for r in receiver.of("webhook"))
    assert sent == [("/hook/a", "reg"), ("/hook/b", "dep"), ("/hook/b", "reg")], sent

    status, listed = await service.api.call("GET", "/api/v1/webhooks", world.key)
    assert [h["id"] for h in listed["webhooks"]] == [second["id"]]
    # gone now: removing it again is a 404; registering its URL again gives a new id
    status, body = await service.api.call("DELETE", f"/api/v1/webhooks/{first['id']}", world.key)
    assert (status, body["code"]) == (404, "webhook_not_found")
    again = await service.webhook(world.key, receiver.hook_url("a"), SECRET)
    assert again["id"] == 3
    events = await service.api.events(world.key)
    removed = [e for e in events["events"] if e["type"] == "WebhookRemoved"]
    assert [e["data"] for e in removed] == [
        {"account_id": 1, "webhook_id": first["id"], "url": receiver.hook_url("a")}
    ]


async def test_removal_is_the_accounts_own_and_frees_a_place(service: Service) -> None:
    key = await service.api.create_account()
    other = await service.api.create_account("Other")
    hooks = [await service.webhook(key, f"https://example.com/{n}", SECRET) for n in range(20)]
    for path in ("/api/v1/webhooks/1", "/api/v1/webhooks/99", "/api/v1/webhooks/x"):
        status, body = await service.api.call("DELETE", path, other)
        assert status == 404, (path, body)
    status, _ = await service.api.call("DELETE", "/api/v1/webhooks/1", None)
    assert status == 401
    status, _ = await service.api.call("DELETE", f"/api/v1/webhooks/{hooks[4]['id']}", key)
    assert status == 200
    added = await service.webhook(key, "https://example.com/new", SECRET)  # the 20th again
    assert added["id"] == 21


async def test_a_5xx_is_retried_and_a_410_gives_up(service: Service, receiver: Receiver) -> None:
    world = await service.world()
    await service.webhook(world.key, receiver.hook_url("a"), SECRET)
    receiver.script("webhook", Reply(502), Reply(200), Reply(410, {"gone": True}))
    await postback(service.client, clickid=world.clickid, goal="reg")
    await service.settle()
    await postback(service.client, clickid=world.clickid, goal="dep", sum="1")
    await service.settle()
    attempts = [r.headers["X-Postback-Attempt"] for r in receiver.of("webhook")]
    assert attempts == ["1", "2", "1"]
    listed = (await service.deliveries(world.key))["deliveries"]
    assert [(d["status"], len(d["attempts"])) for d in listed] == [
        ("succeeded", 2),
        ("failed", 1),
    ]
    assert listed[1]["reason"] == "HTTP 410"


async def test_a_secret_echoed_by_the_receiver_is_masked(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    await service.webhook(world.key, receiver.hook_url("a"), SECRET)
    receiver.script("webhook", Reply(403, {"error": f"bad secret {SECRET}?"}))
    await postback(service.client, clickid=world.clickid, goal="reg")
    await service.settle()
    (failed,) = (await service.deliveries(world.key))["deliveries"]
    assert failed["attempts"][0]["response"] == '{"error": "bad secret ***?"}'
    assert SECRET not in str(await service.api.events(world.key, limit=1000))
