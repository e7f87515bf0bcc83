"""``postback rebuild deliveries`` beside a running outbox: nothing done is sent again.

The rebuild (another runner on the same projection database) resets the projection, so a
delivery that succeeded long ago comes back ``pending`` at version 0 until the rebuild
passes its outcome events, while the serving runner's own position stays past them. The
outbox checks the delivery's stream before each send and holds such a row until the
stored projection has caught up. The rebuild's reads of the log are gated here, so it
stops at a chosen point for as long as the test likes (a slow or interrupted rebuild).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any, cast

import pytest

from eventstore.base import EventStore, RecordedEvent
from postback.backend import projection_runner
from postback.keys import CONFIG, STORE
from tests.postback.helpers import World, postback
from tests.postback.outbox_support import (
    Receiver,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
    service_fixture,  # noqa: F401
)

_BOUND = 10.0
"""Seconds a settle may take at most (without the fix, the outbox never idles)."""


class GatedStore:
    """The log as the rebuild sees it: a read past ``until`` waits for ``gate``."""

    def __init__(self, store: EventStore, until: int) -> None:
        self._store = store
        self.until = until
        self.gate = asyncio.Event()
        self.blocked = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read_all(
        self, after: int = 0, limit: int = 1000, *, leave_out: Collection[str] = ()
    ) -> list[RecordedEvent]:
        if after >= self.until:
            self.blocked.set()
            await self.gate.wait()
        return await self._store.read_all(after, limit, leave_out=leave_out)


async def _one_sent_message(service: Service, receiver: Receiver) -> tuple[World, int]:
    world = await service.world()
    await service.api.define_goal(world.key, "vip", notify="hello {goal}")
    await service.telegram(world.key, world.spot_id, "123456:ABC-secret")
    status, body = await postback(service.client, clickid=world.clickid, goal="vip")
    assert status == 200, body
    await service.settle()
    assert len(receiver.of("telegram")) == 1
    return world, int(body["position"])


async def _settle(service: Service) -> None:
    async with asyncio.timeout(_BOUND):
        await service.settle()


@pytest.mark.parametrize("stop_after", ["goal", "reset"])
async def test_a_rebuild_under_way_sends_nothing_again(
    service: Service, receiver: Receiver, caplog: pytest.LogCaptureFixture, stop_after: str
) -> None:
    world, goal_at = await _one_sent_message(service, receiver)
    caplog.set_level(logging.WARNING, "postback.outbox")
    # "goal": the rebuild has re-made the delivery (pending, version 0) but not yet applied
    # its outcome; "reset": it has emptied the projection and applied nothing yet.
    until = goal_at if stop_after == "goal" else 0
    gated = GatedStore(service.app[STORE], until)
    rebuilder = projection_runner(
        cast(EventStore, gated), service.app[CONFIG], batch_size=max(goal_at, 1)
    )
    await rebuilder.open()
    rebuild = asyncio.create_task(rebuilder.rebuild(["deliveries"]))
    try:
        await gated.blocked.wait()
        service.outbox.wake()
        await _settle(service)
        assert len(receiver.of("telegram")) == 1
        if stop_after == "goal":
            assert "being rebuilt?" in caplog.text
        else:  # a new goal meanwhile: the serving runner finds the reset and catches up
            status, body = await postback(service.client, clickid=world.clickid, goal="vip")
            assert status == 200, body
            await _settle(service)
            assert len(receiver.of("telegram")) == 2  # the new one only
    finally:
        gated.gate.set()
        await rebuild
        await rebuilder.close()
    service.outbox.wake()
    await _settle(service)
    assert len(receiver.of("telegram")) == (1 if stop_after == "goal" else 2)
    listed = await service.deliveries(world.key)
    assert {d["status"] for d in listed["deliveries"]} == {"succeeded"}
    assert [len(d["attempts"]) for d in listed["deliveries"]] == [1] * len(listed["deliveries"])
