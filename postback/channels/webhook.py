"""``webhook``: an account's goal events POSTed, signed, to the URLs it registered.

The body is the JSON the projection stored (sorted keys), sent byte for byte. Headers:

* ``X-Postback-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body with the webhook's
  secret; a receiver recomputes it over the bytes it got and compares in constant time;
* ``X-Postback-Event-Id``: the id of the goal event, the same on every attempt: a receiver
  that has seen it already answers 2xx and ignores the repeat;
* ``X-Postback-Delivery-Id`` and ``X-Postback-Attempt`` (1, 2, ...), for its logs.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

import aiohttp
from yarl import URL

from postback.channels import FAILED, Outcome
from postback.channels.addresses import refusal
from postback.channels.http import post
from projections.deliveries_query import PendingDelivery
from projections.delivery_payloads import WEBHOOK

SIGNATURE_HEADER = "X-Postback-Signature"
EVENT_ID_HEADER = "X-Postback-Event-Id"


def signature(secret: str, body: bytes) -> str:
    """The ``X-Postback-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    """Unless ``allow_private``, an IP-literal host that is not public (or ``localhost``)
    fails for good here; the outbox's webhook session refuses names that resolve to such
    addresses (:mod:`postback.channels.addresses`)."""

    name = WEBHOOK

    def __init__(self, *, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    async def send(
        self, http: aiohttp.ClientSession, delivery: PendingDelivery, attempt: int, now: datetime
    ) -> Outcome:
        if not self.allow_private:
            try:
                host = URL(delivery.target).raw_host or ""
            except ValueError:
                host = ""  # post() fails it with the parser's reason
            if host and (reason := refusal(host)) is not None:
                return Outcome(FAILED, None, f"refused: {reason}")
        body = delivery.payload.encode()
        return await post(
            http,
            delivery.target,
            body=body,
            headers={
                SIGNATURE_HEADER: signature(delivery.secret, body),
                EVENT_ID_HEADER: delivery.source_event_id,
                "X-Postback-Delivery-Id": delivery.delivery_id,
                "X-Postback-Attempt": str(attempt),
            },
            now=now,
            secret=delivery.secret,
        )
