"""Operator API of the outbox (API.md section 3): webhooks, deliveries, subscriber history.

* ``POST /api/v1/webhooks`` ``{"url", "secret"}``: 201 ``{"id", "url", "secret": "***"}``;
  the same URL again replaces its secret (200, same id). At most :data:`MAX_WEBHOOKS` per
  account. Recorded as ``WebhookRegistered`` in ``webhooks-{account}``.
* ``GET /api/v1/webhooks``: the account's webhooks (secrets masked).
* ``DELETE /api/v1/webhooks/{id}``: 200 ``{"id", "url", "removed": true}``, 404 if the
  account has no such webhook (now). Recorded as ``WebhookRemoved``: goal events after
  it make no delivery to it; deliveries made before keep their attempts and retries.
  Ids are never reused: a URL registered again gets a new one.
* ``GET /api/v1/deliveries?status=&channel=&after=&limit=``: the account's outbound
  deliveries with every attempt, from the ``deliveries`` projection, and its targets
  failing or paused right now.
* ``GET /api/v1/subscribers/{id}/events``: the subscriber's stream and the events of its
  deliveries, in log order.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Final

from aiohttp import web

from eventstore import ConcurrencyError, NewEvent, RecordedEvent
from eventstore.base import micros_from_utc
from postback.channels.addresses import webhook_url
from postback.errors import ApiError, bad_request, conflict, not_found
from postback.http import json_body, json_response
from postback.keys import CONFIG, STORE
from postback.model import SUBSCRIBERS, subscriber_stream
from postback.operator import account_of, int_param, own_subscriber, path_id, text_field
from postback.outbox import CLOCK, Clock
from postback.postbacks import fresh_runner
from postback.views import event_json
from projections import delivery_payloads as p
from projections.deliveries_query import list_deliveries, paused_targets, subscriber_delivery_ids
from projections.runner import ProjectionStoppedError
from projections.subscribers import SUBSCRIBER_CREATED

log = logging.getLogger("postback.deliveries")

MAX_WEBHOOKS: Final = 20
MAX_URL: Final = 2048
MAX_SECRET: Final = 256
MIN_SECRET: Final = 16
_ATTEMPTS: Final = 20
MASK: Final = "***"


def _webhook_url(text: str, *, allow_private: bool) -> str:
    """See :func:`postback.channels.addresses.webhook_url`; any refusal is a 400."""
    try:
        return webhook_url(text, allow_private=allow_private)
    except Exception as exc:  # whatever the parser makes of odd text: the input's fault
        raise bad_request("bad_url", f"'url' is refused: {exc}") from exc


def _secret(body: dict[str, Any]) -> str:
    """The webhook's HMAC key: 16 to 256 printable characters. A shorter one is guessable,
    and masking it in the error texts kept of its deliveries would garble them (a secret
    "s" masked everywhere) and tell it."""
    secret = text_field(body, "secret", required=True, limit=MAX_SECRET) or ""
    if any(not c.isprintable() for c in secret):
        raise bad_request("bad_field", "'secret' must not hold control characters")
    if len(secret.strip()) < MIN_SECRET:
        raise bad_request("bad_field", f"'secret' must be at least {MIN_SECRET} characters")
    return secret


def _registered(events: list[RecordedEvent]) -> tuple[dict[str, dict[str, Any]], int]:
    """The account's webhooks by URL, as its stream says now, and the next webhook id
    (one more than any ever given: a removed webhook's id is not given again)."""
    hooks: dict[str, dict[str, Any]] = {}
    last_id = 0
    for event in events:
        data = event.data
        if event.type == p.WEBHOOK_REGISTERED:
            hooks[data["url"]] = {
                "id": data["webhook_id"],
                "url": data["url"],
                "secret": MASK,
                "registered_at": event.recorded_at.isoformat(),
            }
            last_id = max(last_id, data["webhook_id"])
        elif event.type == p.WEBHOOK_REMOVED:
            hooks = {url: hook for url, hook in hooks.items() if hook["id"] != data["webhook_id"]}
    return hooks, last_id + 1


async def register_webhook(request: web.Request) -> web.Response:
    account = await account_of(request)
    body = await json_body(request)
    allow_private = request.app[CONFIG].webhook_allow_private
    url = _webhook_url(
        text_field(body, "url", required=True, limit=MAX_URL) or "", allow_private=allow_private
    )
    secret = _secret(body)
    store = request.app[STORE]
    stream = p.webhooks_stream(account.id)
    for _ in range(_ATTEMPTS):
        events = await store.read_stream(stream)
        hooks, next_id = _registered(events)
        known = hooks.get(url)
        if known is None and len(hooks) >= MAX_WEBHOOKS:
            raise conflict("too_many_webhooks", f"an account may have {MAX_WEBHOOKS} webhooks")
        webhook_id = known["id"] if known else next_id
        data = {"account_id": account.id, "webhook_id": webhook_id, "url": url, "secret": secret}
        try:
            await store.append(
                stream,
                [NewEvent(p.WEBHOOK_REGISTERED, data)],
                expected_version=events[-1].version if events else 0,
            )
        except ConcurrencyError:
            continue  # another registration landed first: check again
        return json_response({"id": webhook_id, "url": url, "secret": MASK}, 200 if known else 201)
    raise ApiError(503, "busy", "too many concurrent webhook registrations; try again")


async def list_webhooks(request: web.Request) -> web.Response:
    account = await account_of(request)
    events = await request.app[STORE].read_stream(p.webhooks_stream(account.id))
    hooks = sorted(_registered(events)[0].values(), key=lambda hook: int(hook["id"]))
    return json_response({"webhooks": hooks})


async def remove_webhook(request: web.Request) -> web.Response:
    account = await account_of(request)
    webhook_id = path_id(request)
    store = request.app[STORE]
    stream = p.webhooks_stream(account.id)
    for _ in range(_ATTEMPTS):
        events = await store.read_stream(stream)
        hooks = _registered(events)[0]
        found = next((hook for hook in hooks.values() if hook["id"] == webhook_id), None)
        if found is None:
            raise not_found("webhook_not_found", f"no webhook {webhook_id} in this account")
        data = {"account_id": account.id, "webhook_id": webhook_id, "url": found["url"]}
        try:
            await store.append(
                stream, [NewEvent(p.WEBHOOK_REMOVED, data)], expected_version=events[-1].version
            )
        except ConcurrencyError:
            continue  # a registration or removal landed first: look again
        return json_response({"id": webhook_id, "url": found["url"], "removed": True})
    raise ApiError(503, "busy", "too many concurrent webhook changes; try again")


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name) or None
    if value is not None and value not in allowed:
        raise bad_request("bad_parameter", f"{name!r} must be one of {', '.join(allowed)}")
    return value


async def deliveries(request: web.Request) -> web.Response:
    account = await account_of(request)
    status = _choice(request, "status", p.STATUSES)
    channel = _choice(request, "channel", p.CHANNELS)
    after = int_param(request, "after", 0)
    limit = int_param(request, "limit", 100, low=1, high=1000)
    runner = await fresh_runner(request)
    rows = await runner.query(
        partial(
            list_deliveries,
            account_id=account.id,
            status=status,
            channel=channel,
            after=after,
            limit=limit,
        )
    )
    now = request.app.get(CLOCK, Clock()).now()
    targets = await runner.query(
        partial(paused_targets, account_id=account.id, now_us=micros_from_utc(now))
    )
    next_after = rows[-1]["seq"] if rows else after
    return json_response({"deliveries": rows, "next_after": next_after, "targets": targets})


async def subscriber_events(request: web.Request) -> web.Response:
    """The subscriber's history, in log order: its ``SubscriberCreated`` (the attribution:
    spot, clickid, fbclid), its own stream and its deliveries' events.

    The deliveries are found through the ``deliveries`` projection; should it be down,
    the subscriber's own events still come, with ``"delivery_events": "unavailable"``.
    """
    account = await account_of(request)
    subscriber_id = await own_subscriber(request, account)
    store = request.app[STORE]
    # A subscriber's id is its SubscriberCreated's version in that stream (docs/events.md).
    events = [
        created
        for created in await store.read_stream(SUBSCRIBERS, from_version=subscriber_id, limit=1)
        if created.type == SUBSCRIBER_CREATED and created.data.get("subscriber_id") == subscriber_id
    ]
    events += await store.read_stream(subscriber_stream(subscriber_id))
    included = "included"
    try:
        runner = await fresh_runner(request)
        ids = await runner.query(partial(subscriber_delivery_ids, subscriber_id=subscriber_id))
    except ProjectionStoppedError:
        log.error("subscriber history without deliveries: the projections have stopped")
        ids, included = [], "unavailable"
    for delivery in ids:
        events.extend(await store.read_stream(p.delivery_stream(delivery)))
    events.sort(key=lambda event: event.position)
    return json_response(
        {"events": [event_json(event) for event in events], "delivery_events": included}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/webhooks", register_webhook)
    app.router.add_get("/api/v1/webhooks", list_webhooks)
    app.router.add_delete("/api/v1/webhooks/{id}", remove_webhook)
    app.router.add_get("/api/v1/deliveries", deliveries)
    app.router.add_get("/api/v1/subscribers/{id}/events", subscriber_events)
