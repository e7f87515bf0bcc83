"""postback: an event-sourced postback service (see API.md section 4 for the commands).

Every command works on the SQLite file (``--db`` / ``POSTBACK_DB``, the default) or on
PostgreSQL (``--dsn`` / ``POSTBACK_DSN``); ``migrate-to`` copies the one into the other.
"""

# What only some commands use is imported when they run: the web service (aiohttp) by
# ``serve``, the outbox (aiohttp too) by ``project``, the demo and the offline account
# creation by theirs. The others, a rebuild's child processes among them, start without.

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import sys
from collections.abc import Sequence

from eventstore.errors import EventStoreError
from postback import cli_analyst, migrate
from postback.backend import LogUnavailableError, MissingLogError, describe
from postback.cli_progress import silence_stdout
from postback.config import PROJECTORS, Config, ConfigError, parse_port
from postback.model import MAX_TEXT
from postback.runtime import tune_process
from postback.signals import stop_on_signals


def _database_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--db", help="SQLite file (default ./postback.db, or POSTBACK_DB)")
    group.add_argument(
        "--dsn",
        help="PostgreSQL DSN, postgresql://USER@HOST/DB?search_path=SCHEMA (or POSTBACK_DSN)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postback", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    _database_options(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1, or POSTBACK_HOST)")
    serve.add_argument("--port", type=port, help="listen port (default 8080, or POSTBACK_PORT)")
    serve.add_argument(
        "--demo", action="store_true", help="seed demo data first and print curl lines"
    )
    serve.add_argument(
        "--projector",
        choices=PROJECTORS,
        help="where the projections and the outbox run: in a child `postback project` that"
        " serve starts and supervises (process, the default, or POSTBACK_PROJECTOR), or in"
        " the serving process itself (inline)",
    )
    serve.add_argument(
        "--no-projections",
        action="store_true",
        help="run no projections at all (neither here nor in a child); run `postback"
        " project` yourself beside it (reads of projections then show what it applied)",
    )

    demo = commands.add_parser("demo", help="seed a demo account, spot, goals and subscribers")
    _database_options(demo)
    demo.add_argument("--host", help="the address the curl lines should use")
    demo.add_argument("--port", type=port, help="the port the curl lines should use")

    account = commands.add_parser("account", help="manage accounts")
    account_commands = account.add_subparsers(dest="account_command", required=True)
    create = account_commands.add_parser("create", help="create an account, print its API key")
    create.add_argument("name", type=_account_name)
    _database_options(create)

    cli_analyst.add_commands(commands, _database_options)
    migrate.add_command(commands, cli_analyst.positive_int)
    return parser


class ListenError(Exception):
    """``serve`` cannot listen where it was told to."""


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def serve(config: Config) -> None:
    """Serve until SIGINT or SIGTERM, then close the store cleanly.

    Once listening it prints ``postback: serving DB on http://HOST:PORT`` with the port
    actually bound, so ``--port 0`` (any free port) works for tests and scripts.
    """
    from aiohttp import web

    from postback.app import create_app
    from postback.server import make_runner

    runner = make_runner(create_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:  # the port is taken, the host unknown or not this machine's
            raise ListenError(
                f"cannot listen on {config.host} port {config.port}: {exc.strerror or exc}"
            ) from exc
        host, port = runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        print(
            f"postback: serving {describe(config)} on http://{host}:{port}",
            file=sys.stderr,
            flush=True,
        )
        await stop_on_signals().wait()
    finally:
        await runner.cleanup()


def _projector(args: argparse.Namespace) -> str | None:
    """``serve`` runs the projections in a child process unless told otherwise (by
    ``--projector`` or ``POSTBACK_PROJECTOR``); other commands keep the configured one."""
    chosen: str | None = getattr(args, "projector", None)
    if chosen is None and args.command == "serve" and not os.environ.get("POSTBACK_PROJECTOR"):
        return "process"
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command of ``argv``; its exit status: 0 done, 1 refused or failed (a
    verification, an error of the log), 2 a usage error or a log that cannot be opened
    (no SQLite file for a command that only reads, PostgreSQL unreachable)."""
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env(
            db_path=args.db,
            dsn=args.dsn,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            run_projections=False if getattr(args, "no_projections", False) else None,
            projector=_projector(args),
        )
    except ConfigError as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 2
    if args.db is not None and args.command != migrate.COMMAND:
        # An explicit --db wins over POSTBACK_DSN in the environment.
        config = dataclasses.replace(config, dsn=None)
    try:
        return _dispatch(args, config)
    except (MissingLogError, LogUnavailableError, ListenError) as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 2
    except EventStoreError as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 1


def entry() -> int:
    """The ``postback`` command: :func:`main` in a process tuned for it
    (:mod:`postback.runtime`)."""
    tune_process()
    return main()


def _account_name(text: str) -> str:
    """An account's name as ``POST /api/v1/accounts`` takes it: not empty, at most
    :data:`~postback.model.MAX_TEXT` characters, text that UTF-8 can hold."""
    if not text:
        raise argparse.ArgumentTypeError("an account needs a name")
    if len(text) > MAX_TEXT:
        raise argparse.ArgumentTypeError(f"a name is at most {MAX_TEXT} characters")
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes of the command line that are not UTF-8
        raise argparse.ArgumentTypeError("the name is not valid UTF-8") from None
    return text


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == migrate.COMMAND:
        return migrate.run(args, config)
    if args.command in cli_analyst.COMMANDS:
        return cli_analyst.run(args, config)
    if args.command == "account":
        from postback.offline import create_account_offline

        account_id, api_key = asyncio.run(create_account_offline(config, args.name))
        try:
            if sys.stdout is None:  # closed (>&-): print would drop it silently
                raise OSError(errno.EBADF, "standard output is closed")
            print(f"account {account_id} created\napi key: {api_key}", flush=True)
        except OSError:  # standard output is gone (`| head -0`, a full disk): the key is
            # shown once, so it goes where the operator still sees something
            silence_stdout()
            print(
                f"postback: account {account_id} created, but its API key could not be"
                f" written to standard output; api key: {api_key}",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.command == "demo" or (args.command == "serve" and args.demo):
        from postback.demo import run_demo

        asyncio.run(run_demo(config))
        if args.command == "demo":
            return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
