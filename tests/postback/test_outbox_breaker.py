"""The circuit breaker: a target failing N times in a row is paused, reported and probed.

One send at a time (``outbox_concurrency=1``) so the counts are exact; the clock is moved
by hand, so the cool-down is never slept.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.postback.helpers import postback
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

BREAKER = {
    "outbox_concurrency": 1,
    "outbox_breaker_failures": 3,
    "outbox_breaker_cooldown": 60.0,
    "outbox_max_attempts": 50,
}


async def _events(svc: Service, key: str, kind: str) -> list[dict[str, Any]]:
    body = await svc.api.events(key, limit=1000)
    return [e for e in body["events"] if e["type"] == kind]


def _count(receiver: Receiver, path: str) -> int:
    return sum(1 for r in receiver.of("webhook") if r.path == path)


async def _world(make_service: MakeService, receiver: Receiver) -> tuple[Service, str, str]:
    svc = await make_service(clock=ManualClock(), **BREAKER)
    world = await svc.world()
    await svc.webhook(world.key, receiver.hook_url("down"), "whsec-0123456789-s1")
    return svc, world.key, world.clickid


async def test_three_failures_in_a_row_pause_the_target_until_a_probe_succeeds(
    make_service: MakeService, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    svc, key, clickid = await _world(make_service, receiver)
    await svc.webhook(key, receiver.hook_url("up"), "whsec-0123456789-s2")
    receiver.script("webhook", Reply(500), Reply(200), Reply(500), Reply(500))
    caplog.set_level(logging.WARNING, "postback.outbox")
    # reg: /down 500, /up 200, /down 500, /down 500 -> paused after three in a row
    await postback(svc.client, clickid=clickid, goal="reg")
    await svc.settle()
    assert _count(receiver, "/hook/down") == 3
    assert _count(receiver, "/hook/up") == 1
    (paused,) = await _events(svc, key, "ChannelPaused")
    assert paused["data"]["target"] == receiver.hook_url("down")
    assert paused["data"]["failures"] == 3
    assert paused["data"]["error"] == "HTTP 500"
    assert "failed 3 times in a row" in caplog.text
    listed = await svc.deliveries(key)
    (target,) = listed["targets"]
    assert target["target"] == receiver.hook_url("down")
    assert (target["paused"], target["consecutive_failures"]) == (True, 3)
    assert target["paused_until"] is not None
    metrics = await (await svc.client.get("/metrics")).text()
    assert 'postback_outbox_paused_targets{channel="webhook"} 1.0' in metrics
    assert 'postback_outbox_pauses_total{channel="webhook"} 1.0' in metrics

    # while paused, other targets are still served; the paused one is not touched
    await postback(svc.client, clickid=clickid, goal="dep", sum="1")
    await svc.settle()
    await svc.advance(59)
    assert _count(receiver, "/hook/down") == 3
    assert _count(receiver, "/hook/up") == 2

    await svc.advance(2)  # the cool-down is over: a probe succeeds, the rest follows
    assert _count(receiver, "/hook/down") == 5
    assert len(await _events(svc, key, "ChannelResumed")) == 1
    listed = await svc.deliveries(key)
    assert listed["targets"] == []
    assert {d["status"] for d in listed["deliveries"]} == {"succeeded"}
    metrics = await (await svc.client.get("/metrics")).text()
    assert 'postback_outbox_paused_targets{channel="webhook"} 0.0' in metrics


async def test_a_failed_probe_pauses_again_for_twice_as_long(
    make_service: MakeService, receiver: Receiver
) -> None:
    svc, key, clickid = await _world(make_service, receiver)
    receiver.script("webhook", *[Reply(503)] * 4)
    await postback(svc.client, clickid=clickid, goal="reg")
    await svc.settle()
    assert _count(receiver, "/hook/down") == 3
    await svc.advance(61)
    assert _count(receiver, "/hook/down") == 4  # the probe, alone, failed
    pauses = await _events(svc, key, "ChannelPaused")
    assert len(pauses) == 2
    await svc.advance(61)
    assert _count(receiver, "/hook/down") == 4  # paused for 120 s this time
    await svc.advance(60)
    assert _count(receiver, "/hook/down") == 5
    (done,) = (await svc.deliveries(key))["deliveries"]
    assert done["status"] == "succeeded"
    assert len(done["attempts"]) == 5


async def test_a_pause_survives_a_restart(
    make_service: MakeService, receiver: Receiver, db_path: str
) -> None:
    clock = ManualClock()
    svc = await make_service(clock=clock, **BREAKER)
    world = await svc.world()
    await svc.webhook(world.key, receiver.hook_url("down"), "whsec-0123456789-s1")
    receiver.script("webhook", *[Reply(500)] * 3)
    await postback(svc.client, clickid=world.clickid, goal="reg")
    await svc.settle()
    assert len(receiver.of("webhook")) == 3
    await svc.client.close()

    again = await make_service(clock=clock, **BREAKER)
    await postback(again.client, clickid=world.clickid, goal="dep", sum="1")
    await again.settle()
    assert len(receiver.of("webhook")) == 3  # still paused after the restart
    await again.advance(61)
    assert len(receiver.of("webhook")) == 5


async def test_a_definite_answer_resets_the_stored_count_as_the_breaker_does(
    make_service: MakeService, receiver: Receiver
) -> None:
    clock = ManualClock()
    svc = await make_service(clock=clock, **BREAKER)
    world = await svc.world()
    hook = receiver.hook_url("down")
    await svc.webhook(world.key, hook, "whsec-0123456789-s1")
    later = Reply(500, headers={"Retry-After": "100"})
    receiver.script("webhook", Reply(500), Reply(500), Reply(410), later)
    await postback(svc.client, clickid=world.clickid, goal="reg")  # 500, 500, then 410
    await svc.settle()
    assert (await svc.deliveries(world.key))["targets"] == []  # the 410 ended the row
    await postback(svc.client, clickid=world.clickid, goal="dep", sum="1")  # 500, retried later
    await svc.settle()
    (target,) = (await svc.deliveries(world.key))["targets"]
    assert (target["target"], target["consecutive_failures"]) == (hook, 1)
    live = svc.outbox.breaker.snapshot()
    assert list(live.values()) == [(1, None)]
    await svc.client.close()

    again = await make_service(clock=clock, **BREAKER)
    await again.settle()
    assert again.outbox.breaker.snapshot() == live
