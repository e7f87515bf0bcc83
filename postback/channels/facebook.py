"""``facebook_capi``: a Contact event to the Conversions API of the spot's pixel.

``POST {graph}/{version}/{pixel_id}/events?access_token=...`` with the JSON body the
projection built (:func:`projections.delivery_payloads.facebook_body`). Besides the
generic rules (:func:`postback.channels.http.classify`), a Graph API error that says
``is_transient``, or is one of its throttling / temporary codes, is retried.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from postback.channels import RETRY, Outcome
from postback.channels.http import SNIPPET, classify, post
from projections.deliveries_query import PendingDelivery
from projections.delivery_payloads import FACEBOOK

TRANSIENT_CODES: Final = frozenset({1, 2, 4, 17, 32, 341, 613})
"""Graph API error codes for an unknown or temporary error and for rate limits."""


def judge(status: int, headers: CIMultiDictProxy[str], text: str, now: datetime) -> Outcome:
    outcome = classify(status, headers, text, now)
    if outcome.verdict == RETRY or status < 400:
        return outcome
    try:
        error = orjson.loads(text).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return outcome
    if isinstance(error, dict) and (
        error.get("is_transient") is True or error.get("code") in TRANSIENT_CODES
    ):
        return Outcome(RETRY, status, f"HTTP {status} (transient)", text[:SNIPPET] or None)
    return outcome


class FacebookChannel:
    name = FACEBOOK

    def __init__(self, graph_url: str, api_version: str) -> None:
        self._base = f"{graph_url.rstrip('/')}/{quote(api_version, safe='.')}"

    def url(self, pixel_id: str) -> str:
        return f"{self._base}/{quote(pixel_id, safe='')}/events"

    async def send(
        self, http: aiohttp.ClientSession, delivery: PendingDelivery, attempt: int, now: datetime
    ) -> Outcome:
        return await post(
            http,
            self.url(delivery.target),
            body=delivery.payload.encode(),
            headers={},
            params={"access_token": delivery.secret},
            now=now,
            secret=delivery.secret,
            judge=judge,
        )
