"""JSON views of the log for operators: events with their request, and subscriber state."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from eventstore import EventStore, RecordedEvent
from postback.amounts import format_amount
from postback.model import Subscriber, subscriber_stream

_SECRETS = ("access_token", "bot_token", "api_key_sha256", "secret")


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    if not any(key in data for key in _SECRETS):
        return data
    return {k: "***" if k in _SECRETS and v else v for k, v in data.items()}


def event_fields(event: RecordedEvent) -> dict[str, Any]:
    """The fields every JSON form of an event starts with (data and the rest vary)."""
    return {
        "position": event.position,
        "stream": event.stream,
        "version": event.version,
        "event_id": str(event.event_id),
        "type": event.type,
        "schema_version": event.schema_version,
        "recorded_at": event.recorded_at.isoformat(),
    }


def event_json(event: RecordedEvent) -> dict[str, Any]:
    """An event for an operator's eyes: secrets (tokens, key digests) are masked."""
    return {
        **event_fields(event),
        "data": _redacted(event.data),
        "request": event.metadata.get("postback"),
    }


async def subscriber_view(store: EventStore, subscriber: Subscriber) -> dict[str, Any]:
    """A subscriber's current state, folded from its whole stream (exact, not eventual)."""
    goals: dict[str, dict[str, Any]] = {}
    registered_at = first_deposit_at = first_deposit_amount = player_id = None
    deposits = rebills = contacts = 0
    total = Decimal(0)
    profile: dict[str, Any] = {}
    for event in await store.read_stream(subscriber_stream(subscriber.id)):
        at = event.recorded_at.isoformat()
        data = event.data
        if event.type == "GoalReached":
            goal = data["goal"]
            reached = goals.setdefault(goal, {"count": 0, "first_at": at})
            reached["count"] += 1
            reached["last_at"] = at
            amount = Decimal(data["amount"]) if data.get("amount") is not None else None
            if goal == "reg":
                registered_at = at
            elif goal in ("dep", "redep"):
                deposits += 1
                total += amount or 0
                if goal == "dep":
                    first_deposit_at, first_deposit_amount = at, data.get("amount")
            elif goal == "rebill":
                rebills += 1
            if data.get("profile"):
                profile.update(data["profile"])
        elif event.type == "PlayerIdAssigned":
            player_id = data["player_id"]
        elif event.type == "ContactRecorded":
            contacts += 1
    return {
        "id": subscriber.id,
        "spot": subscriber.spot_token,
        "user_id": subscriber.user_id,
        "clickid": subscriber.clickid,
        "registered_at": registered_at,
        "first_deposit": {"at": first_deposit_at, "amount": first_deposit_amount},
        "deposits": {"count": deposits, "total": format_amount(total)},
        "rebills": rebills,
        "goals": goals,
        "player_id": player_id,
        "profile": profile,
        "contacts": contacts,
    }
