"""Contact events to the Facebook Conversions API, through the real app and a real server.

The exact request (path, token in the query, body), retries on 500 and on 429 with
Retry-After, permanent failure on 400, the 7-day rule, and no delivery without Facebook
configured (or configured only after the Contact).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from urllib.parse import quote

from tests.postback.helpers import chat
from tests.postback.outbox_support import (
    MakeService,
    ManualClock,
    Receiver,
    Reply,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
    service_fixture,  # noqa: F401
)


async def _contact(svc: Service, user_id: str, spot: str) -> None:
    status, body = await chat(svc.client, user_id=user_id, spot=spot)
    assert status == 200, body


async def test_a_contact_becomes_the_documented_capi_request(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    key = world.key
    await service.facebook(world.key, world.spot_id, test_event_code="TEST123")
    # a second subscriber registered with fbclid and fbp
    created = await service.api.create_subscriber(
        key, world.spot, "9911", "CLICK-2", fbclid="IwAR2abc", fbp="fb.1.1596403881668.1116446470"
    )
    await _contact(service, world.user_id, world.spot)
    await _contact(service, "9911", world.spot)
    await service.settle()

    sent = receiver.of("facebook")
    assert len(sent) == 2
    history = await service.api.history(key, created["id"])
    subscriber_created = await service.api.events(key)
    created_at = next(
        e["recorded_at"]
        for e in subscriber_created["events"]
        if e["type"] == "SubscriberCreated" and e["data"]["subscriber_id"] == created["id"]
    )
    contact = next(e for e in history if e["type"] == "ContactRecorded")
    for request in sent:
        assert request.path == "/v21.0/PIXEL1/events"
        assert request.query == {"access_token": "EAAB-token"}
        assert request.headers["Content-Type"] == "application/json"
    body = sent[1].json
    contact_at = datetime.fromisoformat(contact["recorded_at"])
    created_ms = int(datetime.fromisoformat(created_at).timestamp() * 1000)
    assert body == {
        "data": [
            {
                "event_name": "Contact",
                "event_time": int(contact_at.timestamp()),
                "event_id": contact["event_id"],
                "action_source": "chat",
                "user_data": {
                    "external_id": [hashlib.sha256(b"9911").hexdigest()],
                    "fbc": f"fb.1.{created_ms}.IwAR2abc",
                    "fbp": "fb.1.1596403881668.1116446470",
                },
            }
        ],
        "test_event_code": "TEST123",
    }
    # the first subscriber had neither fbclid nor fbp
    assert sent[0].json["data"][0]["user_data"] == {
        "external_id": [hashlib.sha256(world.user_id.encode()).hexdigest()]
    }

    listed = await service.deliveries(key)
    assert [d["status"] for d in listed["deliveries"]] == ["succeeded", "succeeded"]
    first = listed["deliveries"][0]
    assert first["channel"] == "facebook_capi"
    assert first["target"] == "PIXEL1"
    assert "EAAB-token" not in str(listed)
    assert first["attempts"][0]["status_code"] == 200
    assert '"events_received":1' in first["attempts"][0]["response"].replace(" ", "")


async def test_without_facebook_configured_at_that_point_nothing_is_sent(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    await _contact(service, world.user_id, world.spot)  # before the pixel is set
    await service.facebook(world.key, world.spot_id)
    await service.settle()
    assert receiver.of("facebook") == []
    assert (await service.deliveries(world.key))["deliveries"] == []

    await _contact(service, world.user_id, world.spot)  # after: sent
    await service.settle()
    assert len(receiver.of("facebook")) == 1


async def test_a_500_then_a_429_with_retry_after_are_retried_until_success(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    await service.facebook(world.key, world.spot_id)
    receiver.script(
        "facebook",
        Reply(500, {"error": {"message": "oops"}}),
        Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "30"}),
    )
    await _contact(service, world.user_id, world.spot)
    await service.settle()
    # the 500 was retried at once (backoff 0 here), the 429 asked for 30 s
    assert len(receiver.of("facebook")) == 2
    (pending,) = (await service.deliveries(world.key))["deliveries"]
    assert pending["status"] == "pending"
    assert [a["status_code"] for a in pending["attempts"]] == [500, 429]
    assert [a["outcome"] for a in pending["attempts"]] == ["retry", "retry"]
    second = pending["attempts"][1]
    waited = datetime.fromisoformat(second["retry_at"]) - datetime.fromisoformat(second["at"])
    assert timedelta(seconds=30) <= waited < timedelta(seconds=31)

    await service.advance(29)
    assert len(receiver.of("facebook")) == 2  # not yet
    await service.advance(2)
    assert len(receiver.of("facebook")) == 3
    (done,) = (await service.deliveries(world.key))["deliveries"]
    assert done["status"] == "succeeded"
    assert [a["status_code"] for a in done["attempts"]] == [500, 429, 200]
    # every attempt went out with the same event id, for Facebook to deduplicate
    assert len({r.event_id for r in receiver.of("facebook")}) == 1


async def test_a_400_fails_for_good_after_one_attempt(service: Service, receiver: Receiver) -> None:
    world = await service.world()
    await service.facebook(world.key, world.spot_id)
    receiver.script(
        "facebook", Reply(400, {"error": {"message": "Invalid parameter", "code": 100}})
    )
    await _contact(service, world.user_id, world.spot)
    await service.settle()
    assert len(receiver.of("facebook")) == 1
    (failed,) = (await service.deliveries(world.key, status="failed"))["deliveries"]
    assert failed["reason"] == "HTTP 400"
    assert failed["attempts"][0]["response"].startswith('{"error"')


async def test_a_token_echoed_by_the_receiver_is_masked_in_what_is_kept(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    token = "EAAB/tok+en=1"
    await service.facebook(world.key, world.spot_id, access_token=token)
    echoed = f"Malformed access token {token} (GET ...?access_token={quote(token, safe='')})"
    receiver.script("facebook", Reply(400, {"error": {"message": echoed, "code": 190}}))
    await _contact(service, world.user_id, world.spot)
    await service.settle()
    assert receiver.of("facebook")[0].query == {"access_token": token}  # sent, as it must be
    (failed,) = (await service.deliveries(world.key, status="failed"))["deliveries"]
    response = failed["attempts"][0]["response"]
    assert "Malformed access token *** (GET ...?access_token=***)" in response
    events = await service.api.events(world.key, limit=1000)
    for kept in (str(failed), str(events)):
        assert token not in kept
        assert quote(token, safe="") not in kept


async def test_a_transient_graph_error_is_retried(service: Service, receiver: Receiver) -> None:
    world = await service.world()
    await service.facebook(world.key, world.spot_id)
    throttled = {"error": {"message": "Application request limit reached", "code": 4}}
    receiver.script("facebook", Reply(400, throttled))
    await _contact(service, world.user_id, world.spot)
    await service.settle()
    (done,) = (await service.deliveries(world.key))["deliveries"]
    assert done["status"] == "succeeded"
    assert [a["status_code"] for a in done["attempts"]] == [400, 200]


async def test_events_older_than_seven_days_are_expired_not_sent(
    make_service: MakeService, receiver: Receiver
) -> None:
    clock = ManualClock()
    svc = await make_service(clock=clock, outbox_backoff_base=3600.0)
    world = await svc.world()
    await svc.facebook(world.key, world.spot_id)
    receiver.script("facebook", Reply(503))
    await _contact(svc, world.user_id, world.spot)
    await svc.settle()
    assert len(receiver.of("facebook")) == 1  # tried once, retry due within the hour

    clock.offset = timedelta(days=7, hours=1)  # the retry falls due after 7 days
    await svc.advance(0)
    assert len(receiver.of("facebook")) == 1
    (expired,) = (await svc.deliveries(world.key))["deliveries"]
    assert expired["status"] == "expired"
    assert "7 days" in expired["reason"]
    assert expired["attempts"][0]["status_code"] == 503

    clock.offset = timedelta(days=6, hours=23)
    await _contact(svc, world.user_id, world.spot)  # 6 days 23 hours old to the outbox
    await svc.settle()
    assert len(receiver.of("facebook")) == 2


async def test_a_reconfigured_pixel_applies_to_later_contacts_only(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    await service.facebook(world.key, world.spot_id)
    await _contact(service, world.user_id, world.spot)
    await service.facebook(world.key, world.spot_id, pixel_id="PIXEL2", access_token="EAAB-two")
    await _contact(service, world.user_id, world.spot)
    await service.settle()
    sent = receiver.of("facebook")
    assert sorted((r.path, r.query["access_token"]) for r in sent) == [
        ("/v21.0/PIXEL1/events", "EAAB-token"),
        ("/v21.0/PIXEL2/events", "EAAB-two"),
    ]


async def test_many_contacts_are_each_sent_exactly_once(
    make_service: MakeService, receiver: Receiver
) -> None:
    """No delivery is picked twice, even by a round that read it before its outcome was
    applied (raw requests are counted, not deduplicated)."""
    clock = ManualClock(timedelta(hours=-1))  # every Contact is due an hour from now
    svc = await make_service(clock=clock, outbox_concurrency=8)
    world = await svc.world()
    await svc.facebook(world.key, world.spot_id)
    for _ in range(300):
        await _contact(svc, world.user_id, world.spot)
    await svc.settle()
    assert receiver.requests == []
    await svc.advance(3600)  # all due at once
    sent = receiver.of("facebook")
    assert len(sent) == 300
    assert len({r.event_id for r in sent}) == 300
