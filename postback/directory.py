"""Accounts, spots, goals and subscribers as this process knows them.

Each kind lives in one registry stream (``accounts``, ``spots``, ``subscribers``,
``goals-{account}``); the directory folds them into lookup maps and catches up from the
log when a lookup misses, so a subscriber created by another process is found. Creating
something appends to its registry stream with the folded version as the expected
version: a uniqueness check (a taken clickid, a taken spot token) made against the fold
is therefore never overtaken by another writer; on a conflict the fold catches up and
the check runs again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from eventstore import ConcurrencyError, EventStore, NewEvent
from postback.errors import ApiError
from postback.model import (
    ACCOUNTS,
    SPOTS,
    SUBSCRIBERS,
    Account,
    GoalDefinition,
    Spot,
    Subscriber,
    goals_stream,
)

_READ_BATCH = 1000
_MAX_ATTEMPTS = 20


class Directory:
    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._versions: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._misses: dict[str, int] = {}
        self._covered: dict[str, int] = {}
        self.accounts: dict[int, Account] = {}
        self.accounts_by_key: dict[str, Account] = {}
        self.spots: dict[int, Spot] = {}
        self.spots_by_token: dict[str, Spot] = {}
        self.subscribers: dict[int, Subscriber] = {}
        self.by_clickid: dict[str, Subscriber] = {}
        self.by_spot_user: dict[tuple[int, str], Subscriber] = {}
        self.goals: dict[int, dict[str, GoalDefinition]] = {}

    async def load(self) -> None:
        """Fold every registry stream (at start-up)."""
        for stream in (ACCOUNTS, SPOTS, SUBSCRIBERS):
            await self.refresh(stream)
        for account_id in list(self.accounts):
            await self.refresh(goals_stream(account_id))

    def _lock(self, stream: str) -> asyncio.Lock:
        lock = self._locks.get(stream)
        if lock is None:
            lock = self._locks[stream] = asyncio.Lock()
        return lock

    async def refresh(self, stream: str) -> None:
        """Fold the events of ``stream`` appended since the last fold (by any process).

        Concurrent misses share one read: a task that waited while another caught up
        the same stream does not read again.
        """
        # A catch-up covers a miss only if it *started* after the miss: it then reads
        # everything committed before the miss. Concurrent misses share one such read.
        ticket = self._misses[stream] = self._misses.get(stream, 0) + 1
        async with self._lock(stream):
            if self._covered.get(stream, 0) >= ticket:
                return
            covers = self._misses[stream]
            await self._catch_up(stream)
            self._covered[stream] = covers

    async def _catch_up(self, stream: str) -> None:
        while True:
            events = await self._store.read_stream(
                stream, self._versions.get(stream, 0) + 1, _READ_BATCH
            )
            for event in events:
                self._apply(event.type, event.data)
                self._versions[stream] = event.version
            if len(events) < _READ_BATCH:
                return

    async def append(self, stream: str, make: Callable[[int], NewEvent]) -> NewEvent:
        """Append the event ``make(next_version)`` builds, checked against a current fold.

        ``make`` raises ApiError to refuse (a taken token...). It is called again with the
        caught-up fold whenever another writer got there first.
        """
        async with self._lock(stream):
            for _ in range(_MAX_ATTEMPTS):
                version = self._versions.get(stream, 0)
                event = make(version + 1)
                try:
                    await self._store.append(stream, [event], expected_version=version)
                except ConcurrencyError:
                    await self._catch_up(stream)
                    continue
                self._apply(event.type, dict(event.data))
                self._versions[stream] = version + 1
                return event
        raise ApiError(503, "busy", f"too many concurrent changes to {stream}; try again")

    def _apply(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "AccountCreated":
            account = Account(data["account_id"], data["name"], data["api_key_sha256"])
            self.accounts[account.id] = account
            self.accounts_by_key[account.api_key_sha256] = account
        elif event_type == "SpotCreated":
            spot = Spot(data["spot_id"], data["account_id"], data["title"], data["token"])
            self.spots[spot.id] = spot
            self.spots_by_token[spot.token] = spot
        elif event_type == "SubscriberCreated":
            subscriber = Subscriber(
                data["subscriber_id"],
                data["account_id"],
                data["spot_id"],
                data["spot_token"],
                data["user_id"],
                data.get("clickid"),
                data.get("fbclid"),
                data.get("fbp"),
            )
            self.subscribers[subscriber.id] = subscriber
            if subscriber.clickid is not None:
                self.by_clickid[subscriber.clickid] = subscriber
            self.by_spot_user[(subscriber.spot_id, subscriber.user_id)] = subscriber
        elif event_type == "GoalDefined":
            self.goals.setdefault(data["account_id"], {})[data["name"]] = GoalDefinition(
                data["name"], data.get("profile"), data.get("notify")
            )

    # -- lookups that catch up once before they answer "no" --------------------------

    async def account_by_key(self, key_sha256: str) -> Account | None:
        if key_sha256 not in self.accounts_by_key:
            await self.refresh(ACCOUNTS)
        return self.accounts_by_key.get(key_sha256)

    async def spot_by_token(self, token: str) -> Spot | None:
        if token not in self.spots_by_token:
            await self.refresh(SPOTS)
        return self.spots_by_token.get(token)

    async def subscriber_by_clickid(self, clickid: str) -> Subscriber | None:
        if clickid not in self.by_clickid:
            await self.refresh(SUBSCRIBERS)
        return self.by_clickid.get(clickid)

    async def subscriber_in_spot(self, spot: Spot, user_id: str) -> Subscriber | None:
        key = (spot.id, user_id)
        if key not in self.by_spot_user:
            await self.refresh(SUBSCRIBERS)
        return self.by_spot_user.get(key)

    async def subscriber(self, subscriber_id: int) -> Subscriber | None:
        if subscriber_id not in self.subscribers:
            await self.refresh(SUBSCRIBERS)
        return self.subscribers.get(subscriber_id)

    async def custom_goals(
        self, account_id: int, wanted: str | None = None
    ) -> dict[str, GoalDefinition]:
        goals = self.goals.get(account_id, {})
        if wanted is not None and wanted not in goals:
            await self.refresh(goals_stream(account_id))
            goals = self.goals.get(account_id, {})
        return goals
