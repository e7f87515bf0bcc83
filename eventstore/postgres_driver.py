"""The boundary to asyncpg: connecting, and the one place its errors become the store's own.

asyncpg ships no type information, so its objects are ``Any`` here; the rest of the
PostgreSQL backend names them through the aliases below.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import asyncpg  # type: ignore[import-untyped]

from eventstore.errors import EventStoreError, InvalidEventError, StoreUnavailableError

Connection: TypeAlias = Any
"""An ``asyncpg.Connection``."""
Pool: TypeAlias = Any
"""An ``asyncpg.Pool``."""

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
"""What talking to PostgreSQL may raise besides the store's own errors."""

# SQLSTATE classes that mean the server cannot be used now (rather than a bad request):
# connection (08), authorization (28), unknown database (3D), transaction rollback
# (40: serialization failure, deadlock), insufficient resources (53), operator
# intervention (57: shutdown, cancel), system errors (58), internal errors (XX).
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58", "XX"})
# A read-only transaction (25006: the DSN reaches a standby) or a lock timeout (55P03).
_UNAVAILABLE_STATES = frozenset({"25006", "55P03"})
# Data exceptions (22) and program limits (54: e.g. a stream name too long for its index).
_INVALID_CLASSES = frozenset({"22", "54"})

DEFAULT_CONNECT_TIMEOUT = 10.0


def translate_error(exc: BaseException) -> EventStoreError:
    """The one place where asyncpg's (and the socket's) errors become the store's own."""
    if isinstance(exc, EventStoreError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = f"PostgreSQL: {exc} (SQLSTATE {state})"
        if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES:
            return StoreUnavailableError(message)
        if state[:2] in _INVALID_CLASSES:
            return InvalidEventError(message)
        return EventStoreError(message)
    if isinstance(exc, asyncpg.exceptions.DataError):
        return EventStoreError(f"PostgreSQL client: {exc}")
    return StoreUnavailableError(f"PostgreSQL unreachable: {type(exc).__name__}: {exc}")


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection can no longer be used (drop and reconnect)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        # 57P01..57P05: the server ended the session (shutdown, dropped database...);
        # a cancelled statement (57014) leaves the connection usable.
        return state.startswith(("08", "57P"))
    return isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError)


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise driver errors raised inside as the store's own (chained)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate_error(exc) from exc


async def connect(dsn: str, *, timeout: float, server_settings: dict[str, str]) -> Connection:
    """One asyncpg connection to ``dsn`` (driver errors translated)."""
    with translated():
        return await asyncpg.connect(dsn, timeout=timeout, server_settings=server_settings)


async def create_pool(dsn: str, *, size: int, timeout: float) -> Pool:
    """A pool of 1..``size`` connections for reads (driver errors translated)."""
    with translated():
        return await asyncpg.create_pool(dsn, min_size=1, max_size=size, timeout=timeout)
