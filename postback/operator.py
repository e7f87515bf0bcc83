"""Operator API (API.md section 3): accounts, spots, goals, subscribers, analysts' events.

The outbox's calls (webhooks, deliveries, a subscriber's history) are in
:mod:`postback.deliveries_api`.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from aiohttp import web

from eventstore import NewEvent
from postback import commands
from postback.commands import key_digest
from postback.errors import ApiError, bad_request, not_found, unauthorized
from postback.http import json_body, json_response
from postback.keys import CONFIG, DIRECTORY, STORE
from postback.model import (
    MAX_TEXT,
    SPOTS,
    STANDARD_GOALS,
    Account,
    Spot,
    goals_stream,
    spot_settings_stream,
)
from postback.views import event_json, subscriber_view

_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_GOAL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        token.encode()
    except UnicodeEncodeError as exc:  # raw non-UTF-8 bytes in the header
        raise unauthorized("the Authorization header is not valid UTF-8") from exc
    return token


async def account_of(request: web.Request) -> Account:
    token = _bearer(request)
    if token is None:
        raise unauthorized()
    account = await request.app[DIRECTORY].account_by_key(key_digest(token))
    if account is None:
        raise unauthorized("unknown API key")
    return account


def text_field(
    body: dict[str, Any], name: str, *, required: bool, limit: int = MAX_TEXT
) -> str | None:
    """``body[name]`` as text (a number becomes its digits), or a 400 saying what is wrong;
    None when absent or empty and not ``required``."""
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        if required:
            raise bad_request("missing_field", f"{name!r} is required")
        return None
    if not isinstance(value, str):
        raise bad_request("bad_field", f"{name!r} must be a string")
    if len(value) > limit:
        raise bad_request("bad_field", f"{name!r} is longer than {limit} characters")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise bad_request("bad_field", f"{name!r} is not valid text") from exc
    return value


MAX_INTEGER = 2**63 - 1  # what SQLite (and PostgreSQL's bigint) can hold


def plain_integer(raw: str) -> int | None:
    """Plain ASCII digits only (``int()`` also takes ``1_0``, " 1" and other scripts)."""
    if not raw.isascii() or not raw.isdecimal() or len(raw) > 19:
        return None
    value = int(raw)
    return value if value <= MAX_INTEGER else None


def int_param(
    request: web.Request, name: str, default: int, *, low: int = 0, high: int = MAX_INTEGER
) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = plain_integer(raw)
    if value is None or not low <= value <= high:
        raise bad_request("bad_parameter", f"{name!r} must be an integer from {low} to {high}")
    return value


def path_id(request: web.Request) -> int:
    value = plain_integer(request.match_info["id"])
    if value is None:
        raise not_found("not_found", "no such object")
    return value


# -- accounts ------------------------------------------------------------------------


async def create_account(request: web.Request) -> web.Response:
    admin = request.app[CONFIG].admin_token
    if admin is None:
        raise ApiError(
            403, "admin_disabled", "set POSTBACK_ADMIN_TOKEN to create accounts over HTTP"
        )
    token = _bearer(request)
    if token is None or not hmac.compare_digest(token.encode(), admin.encode()):
        raise unauthorized("the admin token is required")
    name = text_field(await json_body(request), "name", required=True)
    assert name is not None
    account, api_key = await commands.create_account(request.app[DIRECTORY], name)
    return json_response({"id": account.id, "name": account.name, "api_key": api_key}, 201)


# -- spots ---------------------------------------------------------------------------


def _spot_json(spot: Spot) -> dict[str, Any]:
    return {"id": spot.id, "title": spot.title, "token": spot.token}


async def create_spot(request: web.Request) -> web.Response:
    account = await account_of(request)
    body = await json_body(request)
    title = text_field(body, "title", required=True)
    token = text_field(body, "token", required=False, limit=128)
    if token is not None and not _TOKEN.fullmatch(token):
        raise bad_request("bad_field", "'token' may hold only ASCII letters, digits and . _ ~ -")
    spot = await commands.create_spot(request.app[DIRECTORY], account, title or "", token)
    return json_response(_spot_json(spot), 201)


async def list_spots(request: web.Request) -> web.Response:
    account = await account_of(request)
    directory = request.app[DIRECTORY]
    await directory.refresh(SPOTS)
    spots = [_spot_json(s) for s in directory.spots.values() if s.account_id == account.id]
    return json_response(spots)


async def _own_spot(request: web.Request, account: Account) -> Spot:
    directory = request.app[DIRECTORY]
    spot_id = path_id(request)
    if spot_id not in directory.spots:
        await directory.refresh(SPOTS)
    spot = directory.spots.get(spot_id)
    if spot is None or spot.account_id != account.id:
        raise not_found("spot_not_found", "no such spot")
    return spot


async def _configure_spot(
    request: web.Request, event_type: str, fields: dict[str, bool]
) -> web.Response:
    account = await account_of(request)
    spot = await _own_spot(request, account)
    body = await json_body(request)
    settings = {
        name: text_field(body, name, required=required, limit=512)
        for name, required in fields.items()
    }
    await request.app[STORE].append(
        spot_settings_stream(spot.id),
        [NewEvent(event_type, {"spot_id": spot.id, "account_id": account.id, **settings})],
    )
    return json_response(
        {"spot": spot.id, **{k: v for k, v in settings.items() if "token" not in k}}
    )


async def configure_facebook(request: web.Request) -> web.Response:
    return await _configure_spot(
        request,
        "FacebookConfigured",
        {"pixel_id": True, "access_token": True, "test_event_code": False},
    )


async def configure_telegram(request: web.Request) -> web.Response:
    return await _configure_spot(request, "TelegramConfigured", {"bot_token": True})


# -- goals ---------------------------------------------------------------------------


async def define_goal(request: web.Request) -> web.Response:
    account = await account_of(request)
    name = request.match_info["name"]
    if name.lower() in STANDARD_GOALS:  # "Dep" too: a partner's goal=Dep is no deposit
        raise bad_request("standard_goal", f"{name!r} is a standard goal and cannot be redefined")
    if not _GOAL_NAME.fullmatch(name) or not name.strip("."):  # "..": no URL could name it
        raise bad_request("bad_goal_name", "a goal name is 1-64 ASCII letters, digits or _ . : -")
    body = await json_body(request)
    profile = _profile(body.get("profile"))
    notify = text_field(body, "notify", required=False, limit=4096)
    await commands.define_goal(request.app[DIRECTORY], account, name, profile, notify)
    return json_response({"name": name, "profile": profile, "notify": notify})


MAX_PROFILE_FIELDS = 64
MAX_PROFILE_TEXT = 1024


def _profile(profile: Any) -> dict[str, Any] | None:
    """A goal's profile: at most 64 fields (names of 1 to 64 characters) of plain values,
    texts of at most 1,024 characters. Bounded because every conversion of the goal
    copies it into the append-only log."""
    if profile is None:
        return None
    if (
        not isinstance(profile, dict)
        or not all(isinstance(k, str) and 1 <= len(k) <= 64 for k in profile)
        or any(isinstance(v, dict | list) for v in profile.values())
    ):
        raise bad_request("bad_field", "'profile' must be an object of field names to plain values")
    if len(profile) > MAX_PROFILE_FIELDS:
        raise bad_request("bad_field", f"'profile' has at most {MAX_PROFILE_FIELDS} fields")
    if any(isinstance(v, str) and len(v) > MAX_PROFILE_TEXT for v in profile.values()):
        raise bad_request(
            "bad_field", f"a 'profile' value is at most {MAX_PROFILE_TEXT} characters"
        )
    return profile


async def list_goals(request: web.Request) -> web.Response:
    account = await account_of(request)
    directory = request.app[DIRECTORY]
    await directory.refresh(goals_stream(account.id))
    goals: list[dict[str, Any]] = [
        {"name": name, "standard": True, "profile": None, "notify": None} for name in STANDARD_GOALS
    ]
    for goal in directory.goals.get(account.id, {}).values():
        goals.append(
            {"name": goal.name, "standard": False, "profile": goal.profile, "notify": goal.notify}
        )
    return json_response(goals)


# -- subscribers ---------------------------------------------------------------------


async def create_subscriber(request: web.Request) -> web.Response:
    account = await account_of(request)
    body = await json_body(request)
    spot_token = text_field(body, "spot", required=True, limit=128)
    user_id = _partner_key(text_field(body, "user_id", required=True, limit=128), "user_id")
    clickid = _partner_key(text_field(body, "clickid", required=False), "clickid")
    fbclid = text_field(body, "fbclid", required=False, limit=512)
    fbp = text_field(body, "fbp", required=False, limit=512)
    assert spot_token is not None
    assert user_id is not None
    directory = request.app[DIRECTORY]
    spot = await directory.spot_by_token(spot_token)
    if spot is None or spot.account_id != account.id:
        raise not_found("spot_not_found", "no spot with that token in this account")
    subscriber = await commands.create_subscriber(directory, spot, user_id, clickid, fbclid, fbp)
    return json_response(
        {"id": subscriber.id, "spot": spot.token, "user_id": user_id, "clickid": clickid}, 201
    )


def _partner_key(value: str | None, name: str) -> str | None:
    """A value partners will send to find the subscriber by (``user_id``, ``clickid``):
    without blanks at either end or control characters, which a partner's query would not
    carry, so that a subscriber created with them could never be found."""
    if value is not None and (value != value.strip() or not value.isprintable()):
        raise bad_request(
            "bad_field", f"{name!r} must not begin or end with blanks or hold control characters"
        )
    return value


async def own_subscriber(request: web.Request, account: Account) -> int:
    subscriber_id = path_id(request)
    subscriber = await request.app[DIRECTORY].subscriber(subscriber_id)
    if subscriber is None or subscriber.account_id != account.id:
        raise not_found("subscriber_not_found", "no such subscriber")
    return subscriber_id


async def get_subscriber(request: web.Request) -> web.Response:
    account = await account_of(request)
    subscriber_id = await own_subscriber(request, account)
    directory = request.app[DIRECTORY]
    view = await subscriber_view(request.app[STORE], directory.subscribers[subscriber_id])
    return json_response(view)


# -- the account's events, for analysts ------------------------------------------------

_SCAN_LIMIT = 10_000


async def account_events(request: web.Request) -> web.Response:
    """The account's events after a position, in log order.

    Scans at most 10,000 log positions per call; ``next_after`` is where to continue, so
    an analyst pages through the whole log without the server holding it in memory.
    """
    account = await account_of(request)
    after = int_param(request, "after", 0)
    limit = int_param(request, "limit", 100, low=1, high=1000)
    store = request.app[STORE]
    found: list[dict[str, Any]] = []
    scanned_to = after
    while len(found) < limit and scanned_to - after < _SCAN_LIMIT:
        batch = await store.read_all(scanned_to, 1000)
        if not batch:
            break
        for event in batch:
            scanned_to = event.position
            if event.data.get("account_id") == account.id:
                found.append(event_json(event))
                if len(found) == limit:
                    break
    return json_response({"events": found, "next_after": scanned_to})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/accounts", create_account)
    app.router.add_post("/api/v1/spots", create_spot)
    app.router.add_get("/api/v1/spots", list_spots)
    app.router.add_put("/api/v1/spots/{id}/facebook", configure_facebook)
    app.router.add_put("/api/v1/spots/{id}/telegram", configure_telegram)
    app.router.add_put("/api/v1/goals/{name}", define_goal)
    app.router.add_get("/api/v1/goals", list_goals)
    app.router.add_post("/api/v1/subscribers", create_subscriber)
    app.router.add_get("/api/v1/subscribers/{id}", get_subscriber)
    app.router.add_get("/api/v1/events", account_events)
