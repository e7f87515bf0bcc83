"""Operator commands on the directory: used by the HTTP API, the CLI and the demo alike.

Uniqueness checks (a taken token, clickid or user id) run inside ``Directory.append``
against a fold that is current when the append lands: a stale fold conflicts, catches
up and checks again, so no read is needed first.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from eventstore import NewEvent
from postback.directory import Directory
from postback.errors import conflict
from postback.model import ACCOUNTS, SPOTS, SUBSCRIBERS, Account, Spot, Subscriber, goals_stream


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


async def create_account(directory: Directory, name: str) -> tuple[Account, str]:
    """Create an account; returns it with its API key (shown once, stored hashed)."""
    api_key = secrets.token_urlsafe(32)
    event = await directory.append(
        ACCOUNTS,
        lambda next_id: NewEvent(
            "AccountCreated",
            {"account_id": next_id, "name": name, "api_key_sha256": key_digest(api_key)},
        ),
    )
    return directory.accounts[event.data["account_id"]], api_key


async def create_spot(
    directory: Directory, account: Account, title: str, token: str | None
) -> Spot:
    chosen = token or secrets.token_hex(12)

    def make(next_id: int) -> NewEvent:
        if chosen in directory.spots_by_token:
            raise conflict("token_taken", "that spot token is taken")
        return NewEvent(
            "SpotCreated",
            {"spot_id": next_id, "account_id": account.id, "title": title, "token": chosen},
        )

    event = await directory.append(SPOTS, make)
    return directory.spots[event.data["spot_id"]]


async def define_goal(
    directory: Directory,
    account: Account,
    name: str,
    profile: dict[str, Any] | None,
    notify: str | None,
) -> None:
    data = {"account_id": account.id, "name": name, "profile": profile, "notify": notify}
    await directory.append(goals_stream(account.id), lambda _version: NewEvent("GoalDefined", data))


async def create_subscriber(
    directory: Directory,
    spot: Spot,
    user_id: str,
    clickid: str | None,
    fbclid: str | None = None,
    fbp: str | None = None,
) -> Subscriber:
    def make(next_id: int) -> NewEvent:
        if clickid is not None and clickid in directory.by_clickid:
            raise conflict("clickid_taken", "a subscriber with that clickid exists")
        if (spot.id, user_id) in directory.by_spot_user:
            raise conflict("user_id_taken", "that user_id is already a subscriber of the spot")
        return NewEvent(
            "SubscriberCreated",
            {
                "subscriber_id": next_id,
                "account_id": spot.account_id,
                "spot_id": spot.id,
                "spot_token": spot.token,
                "user_id": user_id,
                "clickid": clickid,
                "fbclid": fbclid,
                "fbp": fbp,
            },
        )

    event = await directory.append(SUBSCRIBERS, make)
    return directory.subscribers[event.data["subscriber_id"]]
