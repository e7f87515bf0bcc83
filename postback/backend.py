"""Which log the service and the CLI use: the SQLite file, or PostgreSQL when a DSN is given.

Every command opens its store through :func:`open_store`, so ``--dsn`` / ``POSTBACK_DSN``
works the same everywhere; :func:`describe` names the log in messages without leaking a
password.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from eventstore.base import EventStore
from postback.config import Config
from projections.catalog import all_projections
from projections.database import ProjectionDatabase
from projections.runner import ProjectionRunner


class MissingLogError(LookupError):
    """A read-only command was pointed at an SQLite file that does not exist."""


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` whose connections use ``schema`` (asyncpg passes ``search_path`` on as a
    server setting): several logs, or a test's, in one database."""
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


def describe(config: Config) -> str:
    """The log as an operator would name it: the file, or the DSN without its password."""
    if config.dsn is None:
        return config.db_path
    parts = urlsplit(config.dsn)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return urlunsplit(parts)


def require_log_file(config: Config) -> None:
    """Raise :class:`MissingLogError` when the configured SQLite log file does not exist."""
    if config.dsn is None and not os.path.exists(config.db_path):
        raise MissingLogError(f"no log at {config.db_path} (give --db or POSTBACK_DB)")


async def open_store(
    config: Config,
    *,
    must_exist: bool = False,
    on_batch: Callable[[int, float], Any] | None = None,
    poll_interval: float | None = 1.0,
) -> EventStore:
    """Open the configured log at the configured durability.

    ``must_exist`` is for commands that only read: a missing SQLite file is then a
    :class:`MissingLogError` rather than a new empty log. ``poll_interval`` is how often an
    SQLite store looks for appends by other processes (PostgreSQL is told by NOTIFY).
    """
    durability: Literal["full", "normal"] = "normal" if config.durability == "normal" else "full"
    if config.dsn is not None:
        from eventstore.postgres import PostgresEventStore

        return await PostgresEventStore.open(config.dsn, durability=durability, on_batch=on_batch)
    from eventstore.sqlite import SQLiteEventStore

    if must_exist:
        require_log_file(config)
    return await SQLiteEventStore.open(
        config.db_path,
        durability=durability,
        on_batch=on_batch,
        poll_interval=poll_interval,
    )


def projection_database(config: Config) -> ProjectionDatabase | None:
    """Where the projections live: beside the SQLite file (None: the runner's default), or
    in the PostgreSQL database of the log, in the same schema."""
    if config.dsn is None:
        return None
    from projections.pg_database import PostgresProjectionDatabase

    return PostgresProjectionDatabase(config.dsn, lock_retry_interval=config.leader_retry)


def projection_runner(store: EventStore, config: Config, **options: Any) -> ProjectionRunner:
    """A runner of every projection on ``store``, in the configured projection database.

    ``options`` go to :class:`ProjectionRunner` (``batch_size``, ``path`` for SQLite).
    """
    return ProjectionRunner(
        store, all_projections(), database=projection_database(config), **options
    )
