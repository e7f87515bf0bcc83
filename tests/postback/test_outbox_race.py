"""A round whose read predates a send's recorded outcome must not send it again.

The race, made deterministic: a delivery is in flight (its answer held by the receiver);
another round reads the due deliveries and sees it still pending; the answer comes, the
outcome is recorded and applied, the send leaves the in-flight set; only then does that
round look at what it read. The projection runner is the real one, behind a proxy that
holds that one read until the outcome is applied.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

from postback.keys import CONFIG, STORE
from postback.outbox import Outbox
from postback.postbacks import RUNNER
from projections.runner import ProjectionRunner
from tests.postback.helpers import chat
from tests.postback.outbox_support import (
    MakeService,
    Receiver,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
)

T = TypeVar("T")


class HeldRead:
    """The runner, except that the read after :meth:`hold` returns only once the
    projections have reached ``until`` (and what that woke has run)."""

    def __init__(self, runner: ProjectionRunner) -> None:
        self._runner = runner
        self._until: int | None = None
        self.read = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def hold(self, until: int) -> None:
        self._until = until

    async def query(self, fn: Callable[[Any], T]) -> T:
        result = await self._runner.query(fn)
        if self._until is not None:
            until, self._until = self._until, None
            self.read.set()
            await self._runner.wait_until(until)
            await asyncio.sleep(0)  # the finished send, woken after us, completes first
        return result


async def test_a_stale_read_does_not_send_a_delivery_twice(
    make_service: MakeService, receiver: Receiver
) -> None:
    svc = await make_service(outbox=False)
    world = await svc.world()
    await svc.facebook(world.key, world.spot_id)
    await chat(svc.client, user_id=world.user_id, spot=world.spot)
    store, runner = svc.app[STORE], svc.app[RUNNER]
    config = dataclasses.replace(svc.app[CONFIG], outbox=True, outbox_concurrency=2)
    reads = HeldRead(runner)
    outbox = Outbox(store, cast(ProjectionRunner, reads), config)

    receiver.gate = asyncio.Event()
    task = asyncio.create_task(outbox.run())
    try:
        await receiver.wait_for(1)  # in flight, its answer held
        reads.hold(await store.last_position() + 2)  # its attempt and success, applied
        outbox.wake()
        await reads.read.wait()  # a round read it as pending
        receiver.gate.set()
        await outbox.wait_idle()
    finally:
        await outbox.close()
        await task
    assert len(receiver.requests) == 1
    (done,) = (await svc.deliveries(world.key))["deliveries"]
    assert (done["status"], len(done["attempts"])) == ("succeeded", 1)
