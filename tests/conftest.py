"""Suite-wide: every async test has a time limit, so a hang fails its test, not the suite."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any

import pytest

from tests import pg

TEST_TIMEOUT = 60.0
"""Seconds an async test may take (a lost wake-up or a dead writer task shows up here)."""


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
            and inspect.iscoroutinefunction(item.obj)
            and not getattr(item.obj, "is_hypothesis_test", False)
        ):
            item.obj = _with_timeout(item.obj)


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL schema for this test (dropped afterwards).

    Skips the test when no server answers, or fails it under ``POSTBACK_REQUIRE_POSTGRES=1``.
    Pass :func:`tests.pg.dsn_for` ``(schema)`` to the code under test.
    """
    async with pg.test_schema() as schema:
        yield schema


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any) -> Generator[None, None, None]:
    # A wrapper, so the line comes after pytest's own short summary, where a newcomer looks.
    yield
    if pg.skipped:
        terminalreporter.write_line(
            f"PostgreSQL tests were SKIPPED: no server at {pg.DSN} "
            "(set POSTBACK_TEST_DSN, or start one; CI sets POSTBACK_REQUIRE_POSTGRES=1)",
            yellow=True,
            bold=True,
        )
