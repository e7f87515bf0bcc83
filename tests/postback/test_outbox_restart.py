"""After a stop in the middle of a run, every delivery completes exactly once per event id.

1. In process: an outbox task is cancelled while its sends are held by the receiver; a
   new outbox finishes the work.
2. Across processes: ``postback serve`` (a child) is SIGKILLed while delivering; the
   service started again on the same files finishes the work.

The receiver deduplicates by event id and counts raw requests: a delivery may reach it
twice only if its send was in flight at the stop (its outcome was never recorded), and
the log holds one ``DeliverySucceeded`` per delivery and every recorded attempt.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from postback.app import create_app
from postback.keys import CONFIG, STORE
from postback.outbox import Outbox
from postback.postbacks import RUNNER
from projections.delivery_payloads import delivery_stream
from tests.postback.helpers import Api, chat
from tests.postback.outbox_support import (
    MakeService,
    Receiver,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
    service_config,
    service_fixture,  # noqa: F401
)

CONTACTS = 60
CONCURRENCY = 8


async def _contacts(svc: Service, count: int) -> str:
    """An account with Facebook on its spot, ``count`` subscribers, one Contact each."""
    world = await svc.world()
    await svc.facebook(world.key, world.spot_id)
    for n in range(count - 1):
        await svc.api.create_subscriber(world.key, world.spot, f"u{n}")
    users = [world.user_id, *(f"u{n}" for n in range(count - 1))]
    for user in users:
        status, body = await chat(svc.client, user_id=user, spot=world.spot)
        assert status == 200, body
    return world.key


async def _check_exactly_once(svc: Service, receiver: Receiver, key: str, at_stop: int) -> None:
    """Every delivery succeeded once; the receiver saw each event id, at most ``at_stop``
    of them twice; each delivery's stream holds its attempts 1..n and one success."""
    listed = await svc.deliveries(key, limit=1000)
    deliveries = listed["deliveries"]
    assert len(deliveries) == CONTACTS
    assert {d["status"] for d in deliveries} == {"succeeded"}
    raw = Counter(r.event_id for r in receiver.of("facebook"))
    assert set(raw) == {d["source"]["event_id"] for d in deliveries}
    assert max(raw.values()) <= 2
    assert sum(count - 1 for count in raw.values()) <= at_stop
    store = svc.app[STORE]
    for delivery in deliveries:
        events = await store.read_stream(delivery_stream(delivery["id"]))
        kinds = [e.type for e in events]
        assert kinds.count("DeliverySucceeded") == 1, kinds
        attempts = [e.data["attempt"] for e in events if e.type == "DeliveryAttempted"]
        assert attempts == list(range(1, len(attempts) + 1))
        assert [a["attempt"] for a in delivery["attempts"]] == attempts


async def test_a_cancelled_outbox_resumes_without_losing_or_resending_completed_work(
    make_service: MakeService, receiver: Receiver
) -> None:
    svc = await make_service(outbox=False, outbox_concurrency=CONCURRENCY)
    key = await _contacts(svc, CONTACTS)
    store, runner, config = svc.app[STORE], svc.app[RUNNER], svc.app[CONFIG]

    receiver.gate, receiver.hold_from = asyncio.Event(), 20  # 20 answered, then held
    first = Outbox(store, runner, config)
    task = asyncio.create_task(first.run())
    await receiver.wait_for(20 + CONCURRENCY)  # a full set of sends in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    receiver.gate.set()
    receiver.gate = None

    second = Outbox(store, runner, config)
    task = asyncio.create_task(second.run())
    try:
        await second.wait_idle()
    finally:
        await second.close()
        await task
    assert len(receiver.requests) >= CONTACTS
    await _check_exactly_once(svc, receiver, key, at_stop=CONCURRENCY)


def _serve(log: dict[str, str], receiver: Receiver, db: str) -> subprocess.Popen[bytes]:
    """``postback serve`` on the log in a child, sending to ``receiver`` (stderr to a file
    beside ``db``)."""
    where = ["--dsn", log["dsn"]] if "dsn" in log else ["--db", log["db_path"]]
    env = {
        **os.environ,
        "POSTBACK_FACEBOOK_GRAPH_URL": receiver.url,
        "POSTBACK_OUTBOX_BACKOFF_BASE": "0",
        "POSTBACK_OUTBOX_CONCURRENCY": str(CONCURRENCY),
    }
    with open(f"{db}.serve.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "postback", "serve", *where, "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


@pytest.mark.slow
async def test_a_killed_service_resumes_without_losing_or_resending_completed_work(
    make_service: MakeService,
    receiver: Receiver,
    db_path: str,
    log_settings: dict[str, str],
    aiohttp_client: Any,
) -> None:
    seeding = await make_service(outbox=False)
    key = await _contacts(seeding, CONTACTS)
    await seeding.client.close()

    killed = asyncio.Event()
    child: list[subprocess.Popen[bytes]] = []

    def kill_midway(_: object) -> None:
        if len(receiver.requests) == CONTACTS // 3 and not killed.is_set():
            os.kill(child[0].pid, signal.SIGKILL)
            killed.set()

    receiver.on_request = kill_midway
    child.append(_serve(log_settings, receiver, db_path))
    try:
        await asyncio.wait_for(killed.wait(), 30)
        await asyncio.to_thread(child[0].wait, 30)
    finally:
        if child[0].poll() is None:
            child[0].kill()
            child[0].wait()
    assert child[0].returncode == -signal.SIGKILL
    receiver.on_request = None
    before = len(receiver.requests)
    assert CONTACTS // 3 <= before < CONTACTS + CONCURRENCY

    config = service_config(log_settings, receiver, outbox_concurrency=CONCURRENCY)
    client = await aiohttp_client(create_app(config))
    svc = Service(client, Api(client), client.app, seeding.clock)
    await svc.settle()
    await _check_exactly_once(svc, receiver, key, at_stop=CONCURRENCY)
