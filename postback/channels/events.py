"""The outbox's events: what an attempt's outcome becomes in the log (docs/events.md).

Outcome events carry the delivery's identity (delivery, account, subscriber, channel,
target, source event and position) so the projection, the API and a subscriber's history
need nothing else; their ids are deterministic (delivery id + step), so an append retried
after an unknown outcome is recognised as the same events.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from eventstore import NewEvent
from postback.channels import FAILED, RETRY, SUCCEEDED, Outcome
from projections import delivery_payloads as p
from projections.deliveries_query import PendingDelivery

MAX_RETRY_AFTER: Final = 86_400.0
"""A receiver's ``Retry-After`` is honoured up to a day."""


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before attempt ``attempt + 1``: "full jitter", uniform in
    ``[0, min(cap, base * 2 ** (attempt - 1))]``."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt - 1, 60)))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def identity(row: PendingDelivery) -> dict[str, Any]:
    """The fields every outcome event of ``row`` carries."""
    return {
        "delivery_id": row.delivery_id,
        "account_id": row.account_id,
        "subscriber_id": row.subscriber_id,
        "channel": row.channel,
        "target": row.target,
        "source_event_id": row.source_event_id,
        "source_position": row.source_position,
    }


def final(event_type: str, row: PendingDelivery, **data: Any) -> NewEvent:
    """``DeliverySucceeded``, ``DeliveryFailed`` or ``DeliveryExpired`` of ``row``."""
    step = event_type.removeprefix("Delivery").lower()
    return NewEvent(
        event_type,
        {**identity(row), **data},
        event_id=p.outcome_event_id(row.delivery_id, step),
    )


def outcome_events(
    row: PendingDelivery,
    outcome: Outcome,
    *,
    started: datetime,
    finished: datetime,
    max_attempts: int,
    delay: float,
) -> list[NewEvent]:
    """``DeliveryAttempted`` for attempt ``row.attempts + 1``, and ``DeliverySucceeded`` or
    ``DeliveryFailed`` when it ends the delivery. A retryable outcome is retried after
    ``outcome.retry_after`` when the receiver gave one (up to :data:`MAX_RETRY_AFTER`),
    else after ``delay``, unless it was the last of ``max_attempts``."""
    attempt = row.attempts + 1
    verdict, retry_at = outcome.verdict, None
    if verdict == RETRY and attempt < max_attempts:
        wait = delay if outcome.retry_after is None else outcome.retry_after
        retry_at = iso(finished + timedelta(seconds=min(wait, MAX_RETRY_AFTER)))
    elif verdict == RETRY:
        verdict = FAILED
    attempted = NewEvent(
        p.DELIVERY_ATTEMPTED,
        {
            **identity(row),
            "attempt": attempt,
            "attempted_at": iso(started),
            "status": outcome.status,
            "error": outcome.error,
            "response": outcome.response,
            "outcome": verdict,
            "transient": outcome.transient,
            "retry_at": retry_at,
        },
        event_id=p.outcome_event_id(row.delivery_id, f"attempt-{attempt}"),
    )
    if verdict == SUCCEEDED:
        return [attempted, final(p.DELIVERY_SUCCEEDED, row, attempt=attempt)]
    if verdict == FAILED:
        reason = outcome.error or "failed"
        if outcome.transient:
            reason = f"gave up after {attempt} attempts; last: {reason}"
        return [attempted, final(p.DELIVERY_FAILED, row, attempt=attempt, reason=reason)]
    return [attempted]
