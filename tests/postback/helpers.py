"""Helpers for the HTTP suite: operator calls and partner requests through a test client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

ADMIN = "admin-secret"
SUBSCRIBER_NOT_FOUND = "Subscriber not exists with this clickid"
CHAT_NEEDS_USER = "That's endpoint for chat"

POSTBACK_PATHS = (
    "/api/v1/api_send_postback",
    "/api/v1/api_send_postback/",
    "/postback",
    "/postback/",
)
CHAT_PATHS = ("/spot/postback/chat", "/spot/postback/chat/")
STYLES = ("get", "form", "json", "multipart")
"""How partner parameters travel: GET query, POST form-encoded, JSON or multipart body."""

Params = Mapping[str, str] | Sequence[tuple[str, str]]
Client = TestClient[Any, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def answer(response: Any) -> tuple[int, Any]:
    """(status, JSON body) of a response, asserting the body is JSON."""
    async with response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


async def send(client: Client, path: str, params: Params, style: str = "get") -> tuple[int, Any]:
    """A partner request with ``params`` in the query (get) or a form/JSON body (post)."""
    if style == "get":
        return await answer(await client.get(path, params=params))
    if style == "form":
        return await answer(await client.post(path, data=params))
    if style == "json":
        return await answer(await client.post(path, json=dict(params)))
    if style == "multipart":  # multipart/form-data, as PHP's curl posts an array of fields
        form = aiohttp.FormData(dict(params), default_to_multipart=True)
        return await answer(await client.post(path, data=form))
    raise AssertionError(f"unknown style {style!r}")


async def postback(client: Client, style: str = "get", **params: str) -> tuple[int, Any]:
    return await send(client, "/postback/", params, style)


async def chat(client: Client, **params: str) -> tuple[int, Any]:
    return await send(client, "/spot/postback/chat/", params)


@dataclass
class Api:
    """Operator calls over HTTP; each asserts the documented success status."""

    client: Client

    async def call(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = bearer(key) if key is not None else {}
        return await answer(await self.client.request(method, path, headers=headers, **kwargs))

    async def create_account(self, name: str = "Acme") -> str:
        status, body = await self.call("POST", "/api/v1/accounts", ADMIN, json={"name": name})
        assert status == 201, body
        assert isinstance(body["api_key"], str)
        return body["api_key"]

    async def create_spot(self, key: str, title: str = "bot", token: str | None = None) -> Any:
        payload = {"title": title} if token is None else {"title": title, "token": token}
        status, body = await self.call("POST", "/api/v1/spots", key, json=payload)
        assert status == 201, body
        return body

    async def define_goal(
        self,
        key: str,
        name: str,
        profile: dict[str, Any] | None = None,
        notify: str | None = None,
    ) -> Any:
        payload: dict[str, Any] = {}
        if profile is not None:
            payload["profile"] = profile
        if notify is not None:
            payload["notify"] = notify
        status, body = await self.call("PUT", f"/api/v1/goals/{name}", key, json=payload)
        assert status == 200, body
        return body

    async def create_subscriber(
        self, key: str, spot: str, user_id: str, clickid: str | None = None, **extra: str
    ) -> Any:
        payload = {"spot": spot, "user_id": user_id, **extra}
        if clickid is not None:
            payload["clickid"] = clickid
        status, body = await self.call("POST", "/api/v1/subscribers", key, json=payload)
        assert status == 201, body
        return body

    async def subscriber(self, key: str, subscriber_id: int) -> Any:
        status, body = await self.call("GET", f"/api/v1/subscribers/{subscriber_id}", key)
        assert status == 200, body
        return body

    async def history(self, key: str, subscriber_id: int) -> list[Any]:
        status, body = await self.call("GET", f"/api/v1/subscribers/{subscriber_id}/events", key)
        assert status == 200, body
        events: list[Any] = body["events"]
        return events

    async def postbacks(self, key: str, **query: str | int) -> list[Any]:
        params = {name: str(value) for name, value in query.items()}
        status, body = await self.call("GET", "/api/v1/postbacks", key, params=params)
        assert status == 200, body
        rows: list[Any] = body["postbacks"]
        return rows

    async def events(self, key: str, **query: str | int) -> Any:
        params = {name: str(value) for name, value in query.items()}
        status, body = await self.call("GET", "/api/v1/events", key, params=params)
        assert status == 200, body
        return body


@dataclass
class World:
    """One account with a spot, a custom goal and a subscriber (the README's walk-through)."""

    key: str
    spot_id: int
    spot: str
    spot_title: str
    subscriber_id: int
    clickid: str
    user_id: str


async def make_world(
    api: Api,
    *,
    name: str = "Acme",
    spot: str = "87fa11c2-ff00-44a1",
    title: str = "MVPtestQA",
    clickid: str = "ABC123",
    user_id: str = "7788",
) -> World:
    key = await api.create_account(name)
    created = await api.create_spot(key, title, spot)
    await api.define_goal(key, "level10", {"level": 10})
    subscriber = await api.create_subscriber(key, spot, user_id, clickid)
    return World(
        key=key,
        spot_id=created["id"],
        spot=spot,
        spot_title=title,
        subscriber_id=subscriber["id"],
        clickid=clickid,
        user_id=user_id,
    )
