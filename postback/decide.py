"""The postback decision: a pure function of (subscriber state, request).

Consistency does not come from here: the caller appends the events with the state's
version as the expected stream version, so two racing decisions can never both land.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from eventstore import NewEvent, new_event_id
from postback.amounts import format_amount
from postback.errors import conflict, not_found
from postback.model import STANDARD_GOALS, GoalDefinition, Subscriber, SubscriberState

# Event ids of postbacks that carry a txid are derived from (account, txid), so a retry
# of the same txid maps to the same event and the store's idempotency recognises it.
TXID_NAMESPACE: Final = uuid.UUID("6f1c3f0e-2b8a-5d3e-9c41-7a52e0b1d9a4")


def txid_event_id(account_id: int, txid: str, part: str = "goal") -> uuid.UUID:
    return uuid.uuid5(TXID_NAMESPACE, f"{account_id}\x1f{txid}\x1f{part}")


@dataclass(frozen=True, slots=True)
class Conversion:
    """A validated postback for a known subscriber, before the state is consulted."""

    goal: str
    amount: Decimal | None
    player_id: str | None
    txid: str | None


def decide(
    subscriber: Subscriber,
    state: SubscriberState,
    conversion: Conversion,
    custom_goals: dict[str, GoalDefinition],
    metadata: dict[str, Any],
) -> list[NewEvent]:
    """The events that record ``conversion``, or the ApiError that refuses it.

    Order of checks (API.md section 1): goal present, goal known, then the conflicts.
    """
    goal = conversion.goal
    if not goal:
        raise not_found("no_goal", "No goal passed")
    definition = custom_goals.get(goal)
    if goal not in STANDARD_GOALS and definition is None:
        raise not_found(
            "unknown_goal", f"Goal {goal!r} is neither standard nor in the account's goal list"
        )
    if goal == "reg" and state.registered:
        raise conflict(
            "registration_already", "The subscriber is already registered (registration_already)"
        )
    if goal == "dep" and state.first_deposit:
        raise conflict(
            "deposit_already",
            "The subscriber's first deposit is already recorded (deposit_already)",
        )

    events: list[NewEvent] = []
    txid = conversion.txid
    if conversion.player_id is not None and conversion.player_id != state.player_id:
        events.append(
            NewEvent(
                "PlayerIdAssigned",
                {
                    "subscriber_id": subscriber.id,
                    "account_id": subscriber.account_id,
                    "player_id": conversion.player_id,
                    "previous": state.player_id,
                },
                metadata,
                event_id=txid_event_id(subscriber.account_id, txid, "player")
                if txid
                else new_event_id(),
            )
        )
    events.append(
        NewEvent(
            "GoalReached",
            {
                "subscriber_id": subscriber.id,
                "account_id": subscriber.account_id,
                "spot_id": subscriber.spot_id,
                "goal": goal,
                "standard": definition is None,
                "amount": None if conversion.amount is None else format_amount(conversion.amount),
                "txid": txid,
                "profile": definition.profile if definition is not None else None,
            },
            metadata,
            event_id=txid_event_id(subscriber.account_id, txid) if txid else new_event_id(),
        )
    )
    return events
