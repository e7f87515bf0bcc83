"""For the outbox tests: a real HTTP server on loopback that plays Facebook, Telegram and
webhook receivers, a clock moved by hand, and the service built around them.

Test modules import the fixtures (``receiver``, ``make_service``, ``service``) by their
function names (``*_fixture``). The receiver records every raw request (path, query,
headers, body bytes) and answers from a script per kind (``facebook``, ``telegram``,
``webhook``), 200 once the script is used up. ``gate`` (when set) holds the answers to
the requests after the first ``hold_from`` until it is opened.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from postback.app import create_app
from postback.config import Config
from postback.outbox import OUTBOX, Clock, Outbox
from tests.postback.helpers import ADMIN, Api, Client, World, make_world

FACEBOOK_OK = {"events_received": 1, "messages": [], "fbtrace_id": "AbCdEf"}
TELEGRAM_OK = {"ok": True, "result": {"message_id": 1}}


class ManualClock(Clock):
    """Real time plus an offset the test moves (so recorded events stay in the past)."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    kind: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def event_id(self) -> str:
        """The id a receiver deduplicates by."""
        if self.kind == "facebook":
            return str(self.json["data"][0]["event_id"])
        if self.kind == "webhook":
            return self.headers["X-Postback-Event-Id"]
        return f"{self.json['chat_id']}:{self.json['text']}"


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[Reply]] = {}
        self.gate: asyncio.Event | None = None
        self.hold_from = 0
        self.arrived = asyncio.Condition()
        self.server: TestServer | None = None
        self.on_request: Callable[[Received], None] | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def hook_url(self, name: str = "a") -> str:
        return f"{self.url}/hook/{name}"

    def script(self, kind: str, *replies: Reply) -> None:
        self.scripts.setdefault(kind, []).extend(replies)

    def of(self, kind: str) -> list[Received]:
        return [r for r in self.requests if r.kind == kind]

    async def wait_for(self, count: int, kind: str | None = None) -> None:
        async with self.arrived:
            await self.arrived.wait_for(
                lambda: len(self.requests if kind is None else self.of(kind)) >= count
            )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{pixel}/events", self._handler("facebook", FACEBOOK_OK))
        app.router.add_post("/bot{token}/sendMessage", self._handler("telegram", TELEGRAM_OK))
        app.router.add_post("/hook/{name}", self._handler("webhook", {"ok": True}))
        return app

    def _handler(
        self, kind: str, ok: Any
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            received = Received(
                kind,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
            self.requests.append(received)
            number = len(self.requests)
            if self.on_request is not None:
                self.on_request(received)
            async with self.arrived:
                self.arrived.notify_all()
            if self.gate is not None and number > self.hold_from:
                await self.gate.wait()
            script = self.scripts.get(kind)
            reply = script.pop(0) if script else Reply(200, ok)
            return web.json_response(
                reply.body if reply.body is not None else {},
                status=reply.status,
                headers=reply.headers,
            )

        return handle


def signed(secret: str, body: bytes) -> str:
    """What the receiver expects in ``X-Postback-Signature``, computed on its side."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Service:
    client: Client
    api: Api
    app: web.Application
    clock: ManualClock

    @property
    def outbox(self) -> Outbox:
        return self.app[OUTBOX]

    async def settle(self) -> None:
        """Until the outbox has nothing due and nothing in flight (no sleeping)."""
        await self.outbox.wait_idle()

    async def advance(self, seconds: float) -> None:
        """Move the clock and let the outbox do what fell due."""
        self.clock.advance(seconds)
        self.outbox.wake()
        await self.settle()

    async def deliveries(self, key: str, **query: str | int) -> Any:
        params = {name: str(value) for name, value in query.items()}
        status, body = await self.api.call("GET", "/api/v1/deliveries", key, params=params)
        assert status == 200, body
        return body

    async def facebook(self, key: str, spot_id: int, **settings: str) -> None:
        payload = {"pixel_id": "PIXEL1", "access_token": "EAAB-token", **settings}
        status, body = await self.api.call(
            "PUT", f"/api/v1/spots/{spot_id}/facebook", key, json=payload
        )
        assert status == 200, body

    async def telegram(self, key: str, spot_id: int, bot_token: str = "123456:ABC-secret") -> None:
        status, body = await self.api.call(
            "PUT", f"/api/v1/spots/{spot_id}/telegram", key, json={"bot_token": bot_token}
        )
        assert status == 200, body

    async def webhook(self, key: str, url: str, secret: str = "whsec-0123456789-1") -> Any:
        status, body = await self.api.call(
            "POST", "/api/v1/webhooks", key, json={"url": url, "secret": secret}
        )
        assert status in (200, 201), body
        return body

    async def world(self, **kwargs: Any) -> World:
        return await make_world(self.api, **kwargs)


MakeService = Callable[..., Awaitable[Service]]


def service_config(log: dict[str, str], receiver: Receiver, **overrides: Any) -> Config:
    """``log``: the Config fields of the log (``db_path``, or ``dsn``)."""
    settings: dict[str, Any] = {
        **log,
        "admin_token": ADMIN,
        "facebook_graph_url": receiver.url,
        "telegram_api_url": receiver.url,
        "outbox_backoff_base": 0.0,
        "outbox_timeout": 5.0,
        "webhook_allow_private": True,  # the receiver is on loopback
        **overrides,
    }
    return Config(**settings)


@pytest.fixture(name="receiver")
async def receiver_fixture(aiohttp_server: Any) -> Receiver:
    made = Receiver()
    made.server = await aiohttp_server(made.app())
    return made


@pytest.fixture(name="make_service")
def make_service_fixture(
    aiohttp_client: Any, log_settings: dict[str, str], receiver: Receiver
) -> MakeService:
    """The real app (``create_app``) on this test's log, sending to ``receiver``."""

    async def make(*, clock: ManualClock | None = None, **overrides: Any) -> Service:
        chosen = clock or ManualClock()
        app = create_app(service_config(log_settings, receiver, **overrides), clock=chosen)
        client: Client = await aiohttp_client(app)
        return Service(client, Api(client), app, chosen)

    return make


@pytest.fixture(name="service")
async def service_fixture(make_service: MakeService) -> Service:
    return await make_service()
