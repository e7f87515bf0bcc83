"""Outbound channels: how one delivery becomes one HTTP request, and what its answer means.

A :class:`Channel` sends a :class:`~projections.deliveries_query.PendingDelivery` and tells
the outbox the :class:`Outcome`: ``succeeded`` (2xx), ``retry`` (a timeout, a connection
error, 408, 429 or 5xx; ``retry_after`` when the receiver said how long to wait) or
``failed`` (any other answer: retrying would not help). The outbox decides what to do
with it (retry later, give up, pause the target); channels keep no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import aiohttp

from projections.deliveries_query import PendingDelivery

SUCCEEDED: Final = "succeeded"
RETRY: Final = "retry"
FAILED: Final = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of one attempt.

    ``status`` is the HTTP status (None when no answer came), ``error`` what went wrong in
    words (None on success), ``response`` the start of the answer's body, ``retry_after``
    the seconds the receiver asked us to wait (``Retry-After``, Telegram's
    ``parameters.retry_after``), if it did.
    """

    verdict: str
    status: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        """A failure that may pass: it counts towards pausing the target."""
        return self.verdict == RETRY


class Channel(Protocol):
    """One way out (``facebook_capi``, ``telegram``, ``webhook``)."""

    @property
    def name(self) -> str:
        """The channel's name, as in ``deliveries.channel``."""

    async def send(
        self, http: aiohttp.ClientSession, delivery: PendingDelivery, attempt: int, now: datetime
    ) -> Outcome:
        """Send ``delivery`` once (attempt number ``attempt``, at ``now``); never raises for
        what the network or the receiver does: that is an :class:`Outcome`."""
