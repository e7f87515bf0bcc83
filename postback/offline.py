"""CLI commands that change the log without a running server."""

from __future__ import annotations

from eventstore.sqlite import SQLiteEventStore
from postback import commands
from postback.config import Config
from postback.directory import Directory


async def create_account_offline(config: Config, name: str) -> tuple[int, str]:
    async with await SQLiteEventStore.open(config.db_path) as store:
        directory = Directory(store)
        await directory.load()
        account, api_key = await commands.create_account(directory, name)
        return account.id, api_key
