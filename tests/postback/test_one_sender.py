"""Two service instances on one log have one sender, and the other takes over when it stops.

On PostgreSQL the leader holds the projections' advisory lock; on SQLite, where every
instance's runner applies, the leader holds a file lock beside the projections file. Only
the leader's outbox sends, so two instances never send a delivery twice.
"""

from __future__ import annotations

from postback.postbacks import RUNNER
from tests.postback.helpers import postback
from tests.postback.outbox_support import (
    MakeService,
    Receiver,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
)


async def _leaders(*services: Service, key: str) -> list[Service]:
    for service in services:
        await service.api.postbacks(key)  # returns once this instance's projections caught up
    return [s for s in services if s.app[RUNNER].is_leader]


async def test_two_instances_send_each_delivery_once_and_hand_over(
    make_service: MakeService, receiver: Receiver
) -> None:
    first = await make_service(leader_retry=0.05)
    second = await make_service(leader_retry=0.05)
    world = await first.world()
    await first.api.define_goal(world.key, "vip", notify="hello {goal}")
    await first.telegram(world.key, world.spot_id)
    await first.webhook(world.key, receiver.hook_url())
    for amount in range(1, 6):
        status, _ = await postback(first.client, clickid=world.clickid, goal="vip", sum=amount)
        assert status == 200

    leaders = await _leaders(first, second, key=world.key)
    assert len(leaders) == 1
    leader = leaders[0]
    follower = second if leader is first else first
    await leader.settle()
    assert len(receiver.of("telegram")) == 5
    assert len(receiver.of("webhook")) == 5

    # The leader stops; the follower takes over (the lock is free) and sends what comes next.
    await leader.client.close()
    status, _ = await postback(follower.client, clickid=world.clickid, goal="vip", sum=6)
    assert status == 200
    assert await _leaders(follower, key=world.key) == [follower]
    await follower.settle()
    assert len(receiver.of("telegram")) == 6
    assert len({r.event_id for r in receiver.of("webhook")}) == len(receiver.of("webhook")) == 6
