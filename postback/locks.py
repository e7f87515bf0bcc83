"""Per-key asyncio locks that exist only while someone holds or waits for them."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType


class KeyedLocks:
    """``async with locks.hold(key):`` one holder per key at a time, the others queued in
    order. A key nobody holds costs nothing: no lock is made until a second comer waits
    (the common case, a postback for a subscriber nobody else is posting for, takes a
    dict entry and gives it back)."""

    def __init__(self) -> None:
        self._held: dict[Hashable, _Entry] = {}

    def hold(self, key: Hashable) -> _Holding:
        return _Holding(self, key)

    def __len__(self) -> int:
        return len(self._held)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock: asyncio.Lock | None = None  # made when a second user comes
        self.users = 1


class _Holding:
    __slots__ = ("_key", "_locks")

    def __init__(self, locks: KeyedLocks, key: Hashable) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        held = self._locks._held
        entry = held.get(self._key)
        if entry is None:  # free: taken without a lock
            held[self._key] = _Entry()
            return
        entry.users += 1
        if entry.lock is None:  # the holder took it lock-free: a lock, locked for it
            entry.lock = asyncio.Lock()
            await entry.lock.acquire()  # free, so this does not wait
        try:
            await entry.lock.acquire()
        except BaseException:
            self._leave(entry, locked=False)
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave(self._locks._held[self._key], locked=True)

    def _leave(self, entry: _Entry, *, locked: bool) -> None:
        entry.users -= 1
        if locked and entry.lock is not None:
            entry.lock.release()
        if entry.users == 0:
            del self._locks._held[self._key]
