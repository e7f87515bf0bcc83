"""Fixtures: the real app served through ``aiohttp_client``, on each backend of the log.

``log_settings`` is parametrized: every HTTP test runs on an SQLite file under tmp_path and
on a fresh PostgreSQL schema (skipped without a server, see tests/pg.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from postback.app import create_app
from postback.config import Config
from tests import pg
from tests.postback.helpers import ADMIN, Api, Client, World, make_world

MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "t.db")


@pytest.fixture(params=["sqlite", "postgres"])
async def log_settings(
    request: pytest.FixtureRequest, db_path: str
) -> AsyncIterator[dict[str, str]]:
    """The Config fields that choose this test's log: ``db_path``, or a PostgreSQL ``dsn``."""
    if request.param == "sqlite":
        yield {"db_path": db_path}
        return
    async with pg.test_schema() as schema:
        yield {"dsn": pg.dsn_for(schema)}


@pytest.fixture
def make_client(aiohttp_client: Any, log_settings: dict[str, str]) -> MakeClient:
    """Start the real app (``create_app``) on this test's log and a client to it.

    ``db``: another SQLite file instead (ignored on PostgreSQL, where the log is the schema);
    other keywords are fields of the ``Config``.
    """

    async def make(
        *, admin_token: str | None = ADMIN, db: str | None = None, **config: Any
    ) -> Client:
        settings = dict(log_settings)
        if db is not None and "db_path" in settings:
            settings["db_path"] = db
        app = create_app(Config(**settings, **config, admin_token=admin_token))
        client: Client = await aiohttp_client(app)
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
