"""CLI commands that change the log without a running server (on either backend)."""

from __future__ import annotations

from postback import commands
from postback.backend import open_store
from postback.config import Config
from postback.directory import Directory


async def create_account_offline(config: Config, name: str) -> tuple[int, str]:
    """Create an account in the configured log (created if it does not exist yet);
    return its id and its API key (shown once)."""
    async with await open_store(config) as store:
        directory = Directory(store)
        await directory.load()
        account, api_key = await commands.create_account(directory, name)
        return account.id, api_key
