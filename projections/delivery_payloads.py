"""What an outbound delivery sends: channel names, stream names, ids and request bodies.

Everything here is a pure function of events (docs/outbox.md), so the ``deliveries``
projection builds the same rows on every replay. The sender (:mod:`postback.outbox`) adds
only what comes from its configuration: the base URLs of Facebook and Telegram.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any, Final

import orjson

FACEBOOK: Final = "facebook_capi"
TELEGRAM: Final = "telegram"
WEBHOOK: Final = "webhook"
CHANNELS: Final = (FACEBOOK, TELEGRAM, WEBHOOK)

PENDING: Final = "pending"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
EXPIRED: Final = "expired"
STATUSES: Final = (PENDING, SUCCEEDED, FAILED, EXPIRED)

# The outbox's own events (docs/events.md).
DELIVERY_ATTEMPTED: Final = "DeliveryAttempted"
DELIVERY_SUCCEEDED: Final = "DeliverySucceeded"
DELIVERY_FAILED: Final = "DeliveryFailed"
DELIVERY_EXPIRED: Final = "DeliveryExpired"
CHANNEL_PAUSED: Final = "ChannelPaused"
CHANNEL_RESUMED: Final = "ChannelResumed"
WEBHOOK_REGISTERED: Final = "WebhookRegistered"
WEBHOOK_REMOVED: Final = "WebhookRemoved"

TELEGRAM_MAX_TEXT: Final = 4096
"""Telegram's limit on a message's text; longer rendered texts are cut."""

_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "postback:outbox")
_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def delivery_stream(delivery_id: str) -> str:
    """The stream of a delivery's outcome events."""
    return f"delivery-{delivery_id}"


def outbox_stream(account_id: int) -> str:
    """The stream of an account's ``ChannelPaused`` / ``ChannelResumed`` events."""
    return f"outbox-{account_id}"


def webhooks_stream(account_id: int) -> str:
    """The stream of an account's ``WebhookRegistered`` and ``WebhookRemoved`` events."""
    return f"webhooks-{account_id}"


def delivery_id(source_event_id: str, channel: str, target_key: str) -> str:
    """The deterministic id of the delivery of one source event on one channel and target."""
    return str(uuid.uuid5(_NAMESPACE, f"{source_event_id}/{channel}/{target_key}"))


def outcome_event_id(delivery: str, step: str) -> uuid.UUID:
    """The deterministic id of an outcome event (``attempt-3``, ``succeeded``...), so an
    append retried after an unknown outcome is recognised as the same event."""
    return uuid.uuid5(_NAMESPACE, f"{delivery}/{step}")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bot_target(bot_token: str) -> str:
    """How a bot is shown and keyed (never its token): ``bot<id>``, the public numeric id
    before the ``:`` of a token, or ``bot#<12 hex of its SHA-256>`` for another shape."""
    bot_id, colon, _ = bot_token.partition(":")
    if colon and bot_id.isascii() and bot_id.isdecimal():
        return f"bot{bot_id}"
    return f"bot#{sha256_hex(bot_token)[:12]}"


def fbc(fbclid: str, created_us: int) -> str:
    """Facebook's click id parameter, ``fb.1.<ms timestamp>.<fbclid>``: the timestamp is
    when the subscriber (who arrived with that fbclid) was created."""
    return f"fb.1.{created_us // 1000}.{fbclid}"


def facebook_body(
    *,
    event_id: str,
    event_us: int,
    user_id: str,
    fbclid: str | None,
    fbp: str | None,
    created_us: int,
    test_event_code: str | None,
) -> dict[str, Any]:
    """The Conversions API body of one ``Contact`` event (the token goes in the query)."""
    user_data: dict[str, Any] = {"external_id": [sha256_hex(user_id)]}
    if fbclid:
        user_data["fbc"] = fbc(fbclid, created_us)
    if fbp:
        user_data["fbp"] = fbp
    body: dict[str, Any] = {
        "data": [
            {
                "event_name": "Contact",
                "event_time": event_us // 1_000_000,
                "event_id": event_id,
                "action_source": "chat",
                "user_data": user_data,
            }
        ]
    }
    if test_event_code:
        body["test_event_code"] = test_event_code
    return body


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with ``{name}`` replaced by ``values[name]``; unknown names stay as is."""
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def telegram_body(chat_id: str, text: str) -> dict[str, Any]:
    """A ``sendMessage`` body; the chat id as a number when it is one."""
    chat: int | str = int(chat_id) if chat_id.isascii() and chat_id.isdecimal() else chat_id
    return {"chat_id": chat, "text": text[:TELEGRAM_MAX_TEXT]}


def canonical_json(value: Any) -> str:
    """The stored (and sent) form of a payload: orjson with sorted keys."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
