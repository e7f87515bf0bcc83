"""``GET /api/v1/deliveries`` (filters, paging, refusals) and the subscriber's history."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.postback.helpers import chat, postback
from tests.postback.outbox_support import (
    MakeService,
    Receiver,
    Reply,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
    service_fixture,  # noqa: F401
)


async def _busy_world(service: Service, receiver: Receiver) -> tuple[str, int]:
    """Two Contacts (Facebook), one webhook delivery that fails, and one that succeeds."""
    world = await service.world()
    await service.facebook(world.key, world.spot_id)
    await service.webhook(world.key, receiver.hook_url("a"), "whsec-0123456789-a")
    receiver.script("webhook", Reply(400))
    await chat(service.client, user_id=world.user_id, spot=world.spot)
    await postback(service.client, clickid=world.clickid, goal="reg")
    await service.settle()  # the 400 goes to reg's webhook delivery, not dep's
    await chat(service.client, user_id=world.user_id, spot=world.spot)
    await postback(service.client, clickid=world.clickid, goal="dep", sum="5")
    await service.settle()
    return world.key, world.subscriber_id


async def test_listing_filters_and_pages(service: Service, receiver: Receiver) -> None:
    key, subscriber_id = await _busy_world(service, receiver)
    everything = await service.deliveries(key)
    rows = everything["deliveries"]
    assert [(d["channel"], d["status"]) for d in rows] == [
        ("facebook_capi", "succeeded"),
        ("webhook", "failed"),
        ("facebook_capi", "succeeded"),
        ("webhook", "succeeded"),
    ]
    assert [d["seq"] for d in rows] == [1, 2, 3, 4]
    assert everything["next_after"] == 4
    assert everything["targets"] == []
    first = rows[0]
    assert first["subscriber_id"] == subscriber_id
    assert first["source"]["type"] == "ContactRecorded"
    assert first["next_attempt_at"] is None
    assert first["completed_at"] is not None
    attempt = first["attempts"][0]
    assert set(attempt) == {
        "attempt",
        "position",
        "at",
        "status_code",
        "error",
        "response",
        "outcome",
        "retry_at",
    }
    assert (attempt["attempt"], attempt["status_code"], attempt["outcome"]) == (1, 200, "succeeded")

    webhooks = await service.deliveries(key, channel="webhook")
    assert [d["seq"] for d in webhooks["deliveries"]] == [2, 4]
    failed = await service.deliveries(key, status="failed")
    assert [d["seq"] for d in failed["deliveries"]] == [2]
    page = await service.deliveries(key, limit=3)
    assert [d["seq"] for d in page["deliveries"]] == [1, 2, 3]
    rest = await service.deliveries(key, limit=3, after=page["next_after"])
    assert [d["seq"] for d in rest["deliveries"]] == [4]
    assert rest["next_after"] == 4
    assert (await service.deliveries(key, after=4))["deliveries"] == []

    other = await service.api.create_account("Other")
    assert (await service.deliveries(other))["deliveries"] == []


@pytest.mark.parametrize(
    "query",
    [
        {"status": "done"},
        {"channel": "sms"},
        {"after": "-1"},
        {"after": "x"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "1.5"},
    ],
)
async def test_bad_parameters_are_400_json(service: Service, query: dict[str, str]) -> None:
    key = await service.api.create_account()
    status, body = await service.api.call("GET", "/api/v1/deliveries", key, params=query)
    assert status == 400
    assert body["success"] is False
    assert body["code"] == "bad_parameter"


async def test_an_api_key_is_required(service: Service) -> None:
    status, body = await service.api.call("GET", "/api/v1/deliveries", None)
    assert status == 401
    assert body["code"] == "unauthorized"


async def test_the_subscribers_history_shows_its_deliveries(
    service: Service, receiver: Receiver
) -> None:
    key, subscriber_id = await _busy_world(service, receiver)
    other = await service.api.create_subscriber(key, "87fa11c2-ff00-44a1", "5555", "C-5555")
    await chat(service.client, user_id="5555", spot="87fa11c2-ff00-44a1")
    await service.settle()

    history = await service.api.history(key, subscriber_id)
    positions = [e["position"] for e in history]
    assert positions == sorted(positions)
    assert Counter(e["type"] for e in history) == {
        "SubscriberCreated": 1,
        "ContactRecorded": 2,
        "GoalReached": 2,
        "DeliveryAttempted": 4,
        "DeliverySucceeded": 3,
        "DeliveryFailed": 1,
    }
    by_id = {e["event_id"]: e for e in history}
    for event in history:
        if event["type"].startswith("Delivery"):  # after its source, in the same history
            source = by_id[event["data"]["source_event_id"]]
            assert source["position"] < event["position"]
    attempted = next(e for e in history if e["type"] == "DeliveryAttempted")
    assert attempted["stream"].startswith("delivery-")
    assert attempted["data"]["subscriber_id"] == subscriber_id
    assert history[0]["type"] == "SubscriberCreated"
    assert attempted["data"]["source_event_id"] == history[1]["event_id"]
    assert (attempted["data"]["channel"], attempted["data"]["target"]) == (
        "facebook_capi",
        "PIXEL1",
    )
    assert "EAAB-token" not in str(history)

    others = await service.api.history(key, other["id"])
    assert [e["type"] for e in others] == [
        "SubscriberCreated",
        "ContactRecorded",
        "DeliveryAttempted",
        "DeliverySucceeded",
    ]
    status, body = await service.api.call("GET", f"/api/v1/subscribers/{other['id']}/events", key)
    assert (status, body["delivery_events"]) == (200, "included")


async def test_with_the_outbox_off_nothing_is_sent_but_deliveries_are_listed(
    make_service: MakeService, receiver: Receiver
) -> None:
    svc = await make_service(outbox=False)
    world = await svc.world()
    await svc.facebook(world.key, world.spot_id)
    await chat(svc.client, user_id=world.user_id, spot=world.spot)
    (pending,) = (await svc.deliveries(world.key))["deliveries"]
    assert pending["status"] == "pending"
    assert pending["attempts"] == []
    assert pending["next_attempt_at"] == pending["source"]["recorded_at"]
    assert receiver.requests == []
