"""Which log the service and the CLI use: the SQLite file, or PostgreSQL when a DSN is given.

Every command opens its store through :func:`open_store`, so ``--dsn`` / ``POSTBACK_DSN``
works the same everywhere; :func:`describe` names the log in messages without leaking a
password. A log that cannot be opened is a :class:`MissingLogError` (a read-only command
pointed at nothing) or a :class:`LogUnavailableError` (PostgreSQL unreachable, its schema
missing, a malformed DSN): one line for the operator, naming the log.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from eventstore.base import EventStore
from eventstore.dsn import redact_dsn
from eventstore.errors import StoreUnavailableError
from postback.config import Config
from projections.catalog import all_projections
from projections.database import ProjectionDatabase, SQLiteProjectionDatabase
from projections.runner import ProjectionRunner


class MissingLogError(LookupError):
    """A read-only command was pointed at a log that does not exist: no SQLite file there,
    or a PostgreSQL schema that holds no event store."""


class LogUnavailableError(StoreUnavailableError):
    """The configured log cannot be opened: the SQLite path is a directory, not a database
    or cannot be opened; the PostgreSQL server does not answer or refuses the login, the
    DSN is malformed, or no schema of its ``search_path`` exists. The message names the
    log (as :func:`describe` does) and the cause, on one line."""


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` whose connections use ``schema`` (asyncpg passes ``search_path`` on as a
    server setting): several logs, or a test's, in one database."""
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


def describe(config: Config) -> str:
    """The log as an operator would name it: the file, or the DSN without its password
    (neither in the address nor as a ``password=`` parameter)."""
    if config.dsn is None:
        return config.db_path
    return redact_dsn(config.dsn)


def require_log_file(config: Config) -> None:
    """Raise :class:`MissingLogError` when the configured SQLite log file does not exist."""
    if config.dsn is not None:
        return
    if not os.path.exists(config.db_path):
        raise MissingLogError(f"no log at {config.db_path} (give --db or POSTBACK_DB)")
    if os.path.isfile(config.db_path) and not os.path.getsize(config.db_path):
        raise MissingLogError(f"no log at {config.db_path}: the file is empty")


async def require_log_schema(config: Config) -> None:
    """Raise :class:`MissingLogError` when the configured PostgreSQL schema holds no event
    store (so a read-only command does not create one), :class:`LogUnavailableError` when
    it cannot be reached at all."""
    if config.dsn is None:
        return
    from eventstore.postgres_driver import DEFAULT_CONNECT_TIMEOUT, connect, translated
    from eventstore.postgres_schema import current_schema, schema_version

    try:
        conn = await connect(config.dsn, timeout=DEFAULT_CONNECT_TIMEOUT, server_settings={})
        with translated():
            try:
                schema = await current_schema(conn)
                version = await schema_version(conn)
            finally:
                await conn.close()
    except (StoreUnavailableError, ValueError, OverflowError) as exc:
        raise _unavailable(config, exc) from exc
    if version == 0:
        raise MissingLogError(
            f"no log in {describe(config)}: schema {schema} holds no event store"
            " (give --dsn or POSTBACK_DSN; `postback migrate-to` copies an SQLite log there)"
        )


def _unavailable(config: Config, exc: BaseException) -> LogUnavailableError:
    if isinstance(exc, LogUnavailableError):
        return exc
    return LogUnavailableError(f"cannot open the log at {describe(config)}: {exc}")


async def open_store(
    config: Config,
    *,
    must_exist: bool = False,
    on_batch: Callable[[int, float], Any] | None = None,
    poll_interval: float | None = 1.0,
) -> EventStore:
    """Open the configured log at the configured durability.

    ``must_exist`` is for commands that only read: a missing SQLite file, or a PostgreSQL
    schema without an event store, is then a :class:`MissingLogError` rather than a new
    empty log. A PostgreSQL log that cannot be reached is a :class:`LogUnavailableError`.
    ``poll_interval`` is how often an SQLite store looks for appends by other processes
    (PostgreSQL is told by NOTIFY).
    """
    durability: Literal["full", "normal"] = "normal" if config.durability == "normal" else "full"
    if config.dsn is not None:
        from eventstore.postgres import PostgresEventStore

        if must_exist:
            await require_log_schema(config)
        try:
            return await PostgresEventStore.open(
                config.dsn, durability=durability, on_batch=on_batch
            )
        except (StoreUnavailableError, ValueError, OverflowError) as exc:
            raise _unavailable(config, exc) from exc
    from eventstore.sqlite import SQLiteEventStore

    if must_exist:
        require_log_file(config)
    try:
        return await SQLiteEventStore.open(
            config.db_path,
            durability=durability,
            on_batch=on_batch,
            poll_interval=poll_interval,
        )
    except StoreUnavailableError as exc:  # a directory, not a database, not readable...
        raise _unavailable(config, exc) from exc


def projection_database(config: Config) -> ProjectionDatabase | None:
    """Where the projections live: beside the SQLite file (None: the runner's default), or
    in the PostgreSQL database of the log, in the same schema."""
    if config.dsn is None:
        return None
    from projections.pg_database import PostgresProjectionDatabase

    return PostgresProjectionDatabase(config.dsn, lock_retry_interval=config.leader_retry)


def projection_runner(store: EventStore, config: Config, **options: Any) -> ProjectionRunner:
    """A runner of every projection on ``store``, in the configured projection database.

    ``options`` go to :class:`ProjectionRunner` (``batch_size``, ``path`` for SQLite,
    ``live_interval``: the configured ``projection_interval`` unless given).
    """
    options.setdefault("live_interval", config.projection_interval)
    return ProjectionRunner(
        store, all_projections(), database=projection_database(config), **options
    )


@contextlib.asynccontextmanager
async def scratch_projection_database(config: Config) -> AsyncIterator[ProjectionDatabase]:
    """An empty projection database of the configured kind, removed on exit (with all its
    rows): a temporary SQLite file, or a temporary schema in the log's PostgreSQL database
    (the role needs ``CREATE`` on it). ``postback verify`` replays into it to compare.

    The caller closes the database (or the runner using it) before the context ends.
    """
    if config.dsn is None:
        with tempfile.TemporaryDirectory(prefix="postback-verify-") as tmp:
            yield SQLiteProjectionDatabase(os.path.join(tmp, "replay.projections.db"), scratch=True)
        return
    from eventstore.postgres_driver import translated
    from projections.pg_database import PostgresProjectionDatabase, temporary_schema

    dsn = config.dsn
    with translated():
        async with temporary_schema(dsn, prefix="postback_verify_") as schema:
            yield PostgresProjectionDatabase(dsn, schema=schema)
