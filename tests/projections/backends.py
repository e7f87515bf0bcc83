"""The projection databases the projection tests run on: SQLite files and PostgreSQL schemas.

A *scope* hands out databases by *place* (``"live"``, ``"fresh"``, ``"rebuilt"``...): the
same place is the same database for every runner and connection of the scope, another place
is another database. It also opens synchronous connections (for tests that fold batches by
hand): to a place, or to a new empty database each time. Everything it made is closed (and
on PostgreSQL its schemas dropped) by :meth:`close`; :meth:`child` is a scope of its own
(per hypothesis example).

On SQLite, the ``"live"`` place is the runner's default file beside the log (``database``
is None), so the default keeps being tested; on PostgreSQL each place is a schema, and
synchronous connections are :class:`~projections.pg_bridge.PgBridge` objects whose asyncpg
connection lives in a background event loop of the scope.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import asyncpg
from hypothesis import settings

from eventstore.base import EventStore
from projections.database import ProjectionDatabase, SqlConnection
from projections.pg_bridge import PgBridge
from projections.pg_database import PostgresProjectionDatabase
from projections.runner import Projection, ProjectionRunner
from tests import pg

T = TypeVar("T")

LOCK_RETRY = 0.05
"""How often a PostgreSQL follower tries the leadership lock in tests (seconds)."""


class Scope(Protocol):
    name: str

    def database(self, place: str = "live", **options: Any) -> ProjectionDatabase | None: ...

    def runner(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        place: str = "live",
        batch_size: int = 5000,
        live_interval: float = 0.0,
        **options: Any,
    ) -> ProjectionRunner:
        """A runner on the database at ``place`` (``options`` go to :meth:`database`)."""
        database = self.database(place, **options)
        return ProjectionRunner(
            store,
            projections,
            batch_size=batch_size,
            database=database,
            live_interval=live_interval,
        )

    def connect(self, place: str | None = None) -> SqlConnection: ...

    def child(self) -> Scope: ...

    def close(self) -> None: ...

    def __enter__(self) -> Scope: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def examples(base: settings, scope: Scope, postgres: int) -> settings:
    """``base`` (hypothesis settings), with ``postgres`` examples on PostgreSQL, where each
    example makes schemas and connections (a few ms each); use it on a ``@given`` inside
    the test, which takes the ``projection_db`` fixture."""
    return settings(base, max_examples=postgres) if scope.name == "postgres" else base


class SQLiteScope(Scope):
    """Places are files in ``directory``; ``"live"`` is ``events.projections.db``, beside a
    log at ``events.db`` (the ``store`` fixture's)."""

    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._conns: list[sqlite3.Connection] = []
        self._children: list[SQLiteScope] = []

    def path(self, place: str) -> Path:
        return self._directory / f"{'events' if place == 'live' else place}.projections.db"

    def database(self, place: str = "live", **options: Any) -> ProjectionDatabase | None:
        from projections.database import SQLiteProjectionDatabase

        return None if place == "live" else SQLiteProjectionDatabase(self.path(place))

    def connect(self, place: str | None = None) -> SqlConnection:
        target = ":memory:" if place is None else str(self.path(place))
        conn = sqlite3.connect(target, isolation_level=None)
        self._conns.append(conn)
        return conn

    def child(self) -> SQLiteScope:
        child = SQLiteScope(Path(tempfile.mkdtemp(prefix="place-", dir=self._directory)))
        self._children.append(child)
        return child

    def close(self) -> None:
        for child in self._children:
            child.close()
        for conn in self._conns:
            conn.close()
        self._children.clear()
        self._conns.clear()

    def __enter__(self) -> SQLiteScope:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BackgroundLoop:
    """An event loop in a thread of its own, for asyncpg connections used synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._admin: Any = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def admin(self, sql: str) -> None:
        """Run ``sql`` on the server (one connection, kept for the loop's life)."""

        async def run() -> None:
            if self._admin is None:
                self._admin = await asyncpg.connect(pg.DSN)
            await self._admin.execute(sql)

        self.run(run())

    def close(self) -> None:
        if self._admin is not None:
            self.run(self._admin.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


class PostgresScope(Scope):
    """Places are schemas: ``"live"`` is ``live_schema`` (the ``pg_schema`` fixture's),
    the others are created on first use and dropped by :meth:`close`."""

    name = "postgres"

    def __init__(self, live_schema: str | None = None, loop: BackgroundLoop | None = None) -> None:
        self._own_loop = loop is None
        self._loop = loop if loop is not None else BackgroundLoop()
        self._schemas: dict[str, str] = {}
        self._created: list[str] = []
        if live_schema is not None:
            self._schemas["live"] = live_schema
        self._bridges: list[PgBridge] = []
        self._children: list[PostgresScope] = []

    def _new_schema(self) -> str:
        schema = pg.new_schema_name()
        self._loop.admin(f'CREATE SCHEMA "{schema}"')
        self._created.append(schema)
        return schema

    def schema(self, place: str = "live") -> str:
        if place not in self._schemas:
            self._schemas[place] = self._new_schema()
        return self._schemas[place]

    def dsn(self, place: str = "live") -> str:
        return pg.dsn_for(self.schema(place))

    def database(self, place: str = "live", **options: Any) -> PostgresProjectionDatabase:
        settings: dict[str, Any] = {
            "lock_retry_interval": LOCK_RETRY,
            "poll_interval": 1.0,
            "readers": 2,
        }
        settings.update(options)
        return PostgresProjectionDatabase(self.dsn(place), **settings)

    def connect(self, place: str | None = None) -> SqlConnection:
        schema = self._new_schema() if place is None else self.schema(place)
        conn = self._loop.run(asyncpg.connect(pg.dsn_for(schema)))
        bridge = PgBridge(conn, self._loop.loop)
        self._bridges.append(bridge)
        return bridge

    def child(self) -> PostgresScope:
        child = PostgresScope(loop=self._loop)
        self._children.append(child)
        return child

    def close(self) -> None:
        for child in self._children:
            child.close()
        for bridge in self._bridges:
            self._loop.run(bridge.connection.close())
        if self._created:
            self._loop.admin(
                "DROP SCHEMA " + ", ".join(f'"{schema}"' for schema in self._created) + " CASCADE"
            )
        self._children.clear()
        self._bridges.clear()
        self._created.clear()
        if self._own_loop:
            self._loop.close()

    def __enter__(self) -> PostgresScope:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def transaction(conn: SqlConnection) -> Any:
    """``with transaction(conn):`` BEGIN ... COMMIT (ROLLBACK on an exception), as the
    runner brackets a batch, on either dialect."""
    return _Transaction(conn)


class _Transaction:
    def __init__(self, conn: SqlConnection) -> None:
        self._conn = conn

    def __enter__(self) -> SqlConnection:
        self._conn.execute("BEGIN")
        return self._conn

    def __exit__(self, kind: object, *_: object) -> None:
        self._conn.execute("COMMIT" if kind is None else "ROLLBACK")
