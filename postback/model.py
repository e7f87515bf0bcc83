"""The domain: who exists (accounts, spots, goals, subscribers) and what a subscriber did.

Everything here is a fold of events (see ``docs/events.md``); nothing does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

STANDARD_GOALS: Final = ("reg", "dep", "redep", "rebill")

# Stream names.
ACCOUNTS: Final = "accounts"
SPOTS: Final = "spots"
SUBSCRIBERS: Final = "subscribers"
POSTBACK_LOG: Final = "postback-log"
MAX_TEXT: Final = 256
"""Characters of an operator's text field (a name, a title), over HTTP and the CLI."""


def goals_stream(account_id: int) -> str:
    return f"goals-{account_id}"


def subscriber_stream(subscriber_id: int) -> str:
    return f"subscriber-{subscriber_id}"


def spot_settings_stream(spot_id: int) -> str:
    return f"spot-settings-{spot_id}"


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    api_key_sha256: str


@dataclass(frozen=True, slots=True)
class Spot:
    id: int
    account_id: int
    title: str
    token: str


@dataclass(frozen=True, slots=True)
class GoalDefinition:
    name: str
    profile: dict[str, Any] | None
    notify: str | None


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: int
    account_id: int
    spot_id: int
    spot_token: str
    user_id: str
    clickid: str | None
    fbclid: str | None
    fbp: str | None


@dataclass(slots=True)
class SubscriberState:
    """What the write side must know to decide a postback, folded from the subscriber's stream."""

    version: int = 0
    registered: bool = False
    first_deposit: bool = False
    player_id: str | None = None

    def apply(self, event_type: str, data: dict[str, Any]) -> None:
        self.version += 1
        if event_type == "GoalReached":
            if data["goal"] == "reg":
                self.registered = True
            elif data["goal"] == "dep":
                self.first_deposit = True
        elif event_type == "PlayerIdAssigned":
            self.player_id = data["player_id"]
