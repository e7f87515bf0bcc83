"""PostgreSQL for the tests: one server, a fresh schema per test, skipped or required.

The server is ``POSTBACK_TEST_DSN`` (default: the local one, ``postgres@127.0.0.1:5432/test``).
Without a reachable server, PostgreSQL tests are *skipped* and the run's summary says so,
unless ``POSTBACK_REQUIRE_POSTGRES=1`` (set by ``.ci/run``): then they *fail*, so CI can
never pass by skipping them.

Each test gets its own schema (``pg_schema`` fixture), dropped afterwards; code under test
reaches it through :func:`dsn_for`, a DSN whose ``search_path`` is that schema.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from postback.backend import with_search_path

DSN = os.environ.get("POSTBACK_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("POSTBACK_REQUIRE_POSTGRES") == "1"

_available: bool | None = None
skipped = False
"""Set once a PostgreSQL test was skipped; the summary line in tests/conftest.py reads it."""


async def server_available() -> bool:
    """Whether the test server answers (asked once per run)."""
    global _available
    if _available is None:
        try:
            conn = await asyncpg.connect(DSN, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            _available = False
        else:
            await conn.close()
            _available = True
    return _available


def new_schema_name() -> str:
    return "t_" + uuid.uuid4().hex[:16]


def dsn_for(schema: str, dsn: str = DSN) -> str:
    """``dsn`` with ``search_path`` set to ``schema`` (asyncpg passes it as a server setting)."""
    return with_search_path(dsn, schema)


async def create_schema(schema: str) -> None:
    conn = await asyncpg.connect(DSN, timeout=10)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(DSN, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def test_schema() -> AsyncIterator[str]:
    """A fresh schema, dropped on exit; skips (or, when required, fails) the test without a
    server. What the ``pg_schema`` fixture and the backend-parametrized fixtures use."""
    global skipped
    if not await server_available():
        if REQUIRED:
            pytest.fail(f"PostgreSQL is required (POSTBACK_REQUIRE_POSTGRES=1): none at {DSN}")
        skipped = True
        pytest.skip(f"no PostgreSQL at {DSN}")
    schema = new_schema_name()
    await create_schema(schema)
    try:
        yield schema
    finally:
        await drop_schema(schema)


@contextlib.asynccontextmanager
async def schemas_beside(schema: str, count: int) -> AsyncIterator[list[str]]:
    """``count`` more fresh schemas named after ``schema`` (``<schema>_shadowN``: a test's
    shadows), dropped on exit."""
    names = [f"{schema}_shadow{n}" for n in range(count)]
    try:
        for name in names:
            await create_schema(name)
        yield names
    finally:
        for name in names:
            await drop_schema(name)
