"""KeyedLocks: one holder per key, the others in order, nothing left once all are done."""

from __future__ import annotations

import asyncio

import pytest

from postback.locks import KeyedLocks


async def test_one_holder_per_key_in_arrival_order_and_nothing_left() -> None:
    locks = KeyedLocks()
    holders = {"a": 0, "b": 0}
    order: list[int] = []
    gate = asyncio.Event()

    async def user(i: int, key: str) -> None:
        async with locks.hold(key):
            holders[key] += 1
            assert holders[key] == 1
            order.append(i)
            if i == 0:
                await gate.wait()  # the others queue behind the first
            await asyncio.sleep(0)
            holders[key] -= 1

    tasks = [asyncio.create_task(user(i, "a")) for i in range(5)]
    other = asyncio.create_task(user(100, "b"))
    await other  # another key never waits for "a"
    assert order == [0, 100]
    assert len(locks) == 1
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 100, 1, 2, 3, 4]
    assert len(locks) == 0


async def test_a_waiter_cancelled_leaves_the_queue_and_the_key_is_freed() -> None:
    locks = KeyedLocks()
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold(1):
            first_in.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold(1):
            pytest.fail("a cancelled waiter must not get the lock")

    holder = asyncio.create_task(first())
    await first_in.wait()
    cancelled = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # it waits
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert len(locks) == 1
    release.set()
    await holder
    assert len(locks) == 0
    async with locks.hold(1):  # free again, at once
        assert len(locks) == 1


async def test_an_error_inside_releases_the_key() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("inside")
    assert len(locks) == 0
    async with locks.hold("k"):
        pass


async def _hold(locks: KeyedLocks, holding: asyncio.Event, release: asyncio.Event) -> None:
    """Hold key "k": say so with ``holding``, leave when ``release`` is set."""
    async with locks.hold("k"):
        holding.set()
        await release.wait()


async def _take(locks: KeyedLocks, got: list[str], name: str) -> None:
    """Take key "k" and note ``name`` in ``got`` while holding it."""
    async with locks.hold("k"):
        got.append(name)


async def test_a_cancelled_holder_hands_the_key_on() -> None:
    locks = KeyedLocks()
    holding = asyncio.Event()
    got: list[str] = []
    first = asyncio.create_task(_hold(locks, holding, asyncio.Event()))  # until cancelled
    await holding.wait()
    second = asyncio.create_task(_take(locks, got, "second"))
    await asyncio.sleep(0)  # it waits behind the holder
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert got == ["second"]
    assert len(locks) == 0


async def test_a_waiter_cancelled_as_the_key_is_handed_to_it_passes_it_on() -> None:
    locks = KeyedLocks()
    release = asyncio.Event()
    holding = asyncio.Event()
    got: list[str] = []
    first = asyncio.create_task(_hold(locks, holding, release))
    await holding.wait()
    handed = asyncio.create_task(_take(locks, got, "handed"))
    third = asyncio.create_task(_take(locks, got, "third"))
    await asyncio.sleep(0)  # both wait, in order
    release.set()
    await asyncio.sleep(0)  # the holder leaves: the key is handed to the first waiter...
    handed.cancel()  # ...which is cancelled before it runs
    await first
    with pytest.raises(asyncio.CancelledError):
        await handed
    await third
    assert got == ["third"]
    assert len(locks) == 0
