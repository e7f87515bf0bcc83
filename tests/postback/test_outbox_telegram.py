"""Goal notifications through the spot's Telegram bot, through the real app and server."""

from __future__ import annotations

from tests.postback.helpers import postback
from tests.postback.outbox_support import (
    MakeService,
    Receiver,
    Reply,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
    service_fixture,  # noqa: F401
)

BOT = "123456:ABC-secret"
NOTIFY = "You reached {goal}: {amount} (player {player_id}) {unknown} {}"


async def _notified_world(service: Service, notify: str | None = NOTIFY) -> tuple[str, str]:
    world = await service.world()
    await service.api.define_goal(world.key, "vip", notify=notify)
    await service.telegram(world.key, world.spot_id, BOT)
    return world.key, world.clickid


async def test_a_goal_with_notify_text_is_sent_to_the_subscriber(
    service: Service, receiver: Receiver
) -> None:
    key, clickid = await _notified_world(service)
    status, _ = await postback(service.client, clickid=clickid, goal="vip", sum="100.50")
    assert status == 200
    status, _ = await postback(service.client, clickid=clickid, goal="vip", sum="7", playerid="P-9")
    assert status == 200
    await service.settle()

    sent = receiver.of("telegram")
    assert [r.path for r in sent] == [f"/bot{BOT}/sendMessage"] * 2
    assert sorted((r.json for r in sent), key=str) == [
        {"chat_id": 7788, "text": "You reached vip: 100.50 (player ) {unknown} {}"},
        {"chat_id": 7788, "text": "You reached vip: 7.00 (player P-9) {unknown} {}"},
    ]
    listed = await service.deliveries(key, channel="telegram")
    assert [d["status"] for d in listed["deliveries"]] == ["succeeded", "succeeded"]
    assert listed["deliveries"][0]["target"] == "bot123456"
    assert "ABC-secret" not in str(listed)


async def test_no_message_without_notify_text_or_without_a_bot(
    service: Service, receiver: Receiver
) -> None:
    world = await service.world()
    await service.api.define_goal(world.key, "vip", notify="hi")
    await postback(service.client, clickid=world.clickid, goal="vip")  # no bot yet
    await service.telegram(world.key, world.spot_id, BOT)
    await postback(service.client, clickid=world.clickid, goal="level10")  # no notify text
    await postback(service.client, clickid=world.clickid, goal="reg")  # standard goal
    await service.api.define_goal(world.key, "vip")  # notify text removed
    await postback(service.client, clickid=world.clickid, goal="vip")
    await service.settle()
    assert receiver.of("telegram") == []
    assert (await service.deliveries(world.key))["deliveries"] == []


async def test_403_bot_blocked_is_a_permanent_failure(service: Service, receiver: Receiver) -> None:
    key, clickid = await _notified_world(service)
    blocked = {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"}
    receiver.script("telegram", Reply(403, blocked))
    await postback(service.client, clickid=clickid, goal="vip")
    await service.settle()
    assert len(receiver.of("telegram")) == 1
    (failed,) = (await service.deliveries(key))["deliveries"]
    assert failed["status"] == "failed"
    assert failed["reason"] == "HTTP 403"
    assert "bot was blocked" in failed["attempts"][0]["response"]


async def test_429_honours_parameters_retry_after(service: Service, receiver: Receiver) -> None:
    key, clickid = await _notified_world(service)
    slow = {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    receiver.script("telegram", Reply(429, slow))
    await postback(service.client, clickid=clickid, goal="vip")
    await service.settle()
    (pending,) = (await service.deliveries(key))["deliveries"]
    assert pending["status"] == "pending"
    assert len(receiver.of("telegram")) == 1
    await service.advance(6)
    assert len(receiver.of("telegram")) == 1
    await service.advance(1.5)
    assert len(receiver.of("telegram")) == 2
    (done,) = (await service.deliveries(key))["deliveries"]
    assert done["status"] == "succeeded"
    assert [a["status_code"] for a in done["attempts"]] == [429, 200]


async def test_an_unreachable_api_is_retried_and_the_token_never_shows(
    make_service: MakeService, receiver: Receiver
) -> None:
    svc = await make_service(telegram_api_url="http://127.0.0.1:9", outbox_max_attempts=2)
    key, clickid = await _notified_world(svc)
    await postback(svc.client, clickid=clickid, goal="vip")
    await svc.settle()
    (failed,) = (await svc.deliveries(key))["deliveries"]
    assert failed["status"] == "failed"
    assert len(failed["attempts"]) == 2
    assert failed["attempts"][0]["status_code"] is None
    assert failed["attempts"][0]["outcome"] == "retry"
    assert failed["reason"].startswith("gave up after 2 attempts")
    assert "ABC-secret" not in str(failed)
    history = await svc.api.events(key)
    assert "ABC-secret" not in str(history)
