"""Suite-wide: every async test has a time limit, so a hang fails its test, not the suite."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

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
