"""``telegram``: a goal's ``notify`` text to the subscriber, through the spot's bot.

``POST {api}/bot<token>/sendMessage`` with ``{"chat_id", "text"}``. Telegram answers errors
with its own JSON (``{"ok": false, "error_code", "description", "parameters"}``): a 429
carries ``parameters.retry_after`` (seconds), which is honoured; 403 (the user blocked
the bot) and other 4xx fail for good.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from postback.channels import RETRY, Outcome
from postback.channels.http import classify, post
from projections.deliveries_query import PendingDelivery
from projections.delivery_payloads import TELEGRAM


def judge(status: int, headers: CIMultiDictProxy[str], text: str, now: datetime) -> Outcome:
    outcome = classify(status, headers, text, now)
    if outcome.verdict != RETRY or outcome.retry_after is not None:
        return outcome
    try:
        parameters = orjson.loads(text).get("parameters")
    except (orjson.JSONDecodeError, AttributeError):
        return outcome
    wait = parameters.get("retry_after") if isinstance(parameters, dict) else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
        return Outcome(RETRY, status, outcome.error, outcome.response, float(wait))
    return outcome


class TelegramChannel:
    name = TELEGRAM

    def __init__(self, api_url: str) -> None:
        self._base = api_url.rstrip("/")

    def url(self, bot_token: str) -> str:
        return f"{self._base}/bot{quote(bot_token, safe=':')}/sendMessage"

    async def send(
        self, http: aiohttp.ClientSession, delivery: PendingDelivery, attempt: int, now: datetime
    ) -> Outcome:
        return await post(
            http,
            self.url(delivery.secret),
            body=delivery.payload.encode(),
            headers={},
            now=now,
            secret=delivery.secret,
            judge=judge,
        )
