"""Fixtures: the real app on a SQLite file under tmp_path, served through ``aiohttp_client``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from postback.app import create_app
from postback.config import Config
from tests.postback.helpers import ADMIN, Api, Client, World, make_world

MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "t.db")


@pytest.fixture
def make_client(aiohttp_client: Any, db_path: str) -> MakeClient:
    """Start the real app (``create_app``) on ``db_path`` (or another file) and a client to it."""

    async def make(*, admin_token: str | None = ADMIN, db: str | None = None) -> Client:
        config = Config(db_path=db or db_path, admin_token=admin_token)
        client: Client = await aiohttp_client(create_app(config))
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@pytest.fixture
def api(client: Client) -> Api:
    return Api(client)


@pytest.fixture
async def world(api: Api) -> World:
    return await make_world(api)
