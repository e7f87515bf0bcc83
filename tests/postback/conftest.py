"""Fixtures: the real app on a SQLite file under tmp_path, served through ``aiohttp_client``."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from postback.app import create_app
from postback.config import Config
from tests.postback.helpers import ADMIN, Api, Client, World, make_world

TEST_TIMEOUT = 60.0
"""Seconds an async test here may take: a hang fails its test instead of the whole suite."""

HERE = Path(__file__).parent

MakeClient = Callable[..., Awaitable[Client]]


def _with_timeout(
    test: Callable[..., Coroutine[Any, Any, Any]],
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await test(*args, **kwargs)

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and item.path.is_relative_to(HERE)
            and inspect.iscoroutinefunction(item.obj)
            and not getattr(item.obj, "is_hypothesis_test", False)
        ):
            item.obj = _with_timeout(item.obj)


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
