"""The outbox's channels and HTTP sessions, as the configuration says."""

from __future__ import annotations

import aiohttp

from postback.channels import Channel
from postback.channels.addresses import PublicResolver
from postback.channels.facebook import FacebookChannel
from postback.channels.telegram import TelegramChannel
from postback.channels.webhook import WebhookChannel
from postback.config import Config
from projections import delivery_payloads as p


def channels_for(config: Config) -> dict[str, Channel]:
    return {
        p.FACEBOOK: FacebookChannel(config.facebook_graph_url, config.facebook_api_version),
        p.TELEGRAM: TelegramChannel(config.telegram_api_url),
        p.WEBHOOK: WebhookChannel(allow_private=config.webhook_allow_private),
    }


def session(config: Config, *, webhook: bool = False) -> aiohttp.ClientSession:
    """A session for the outbox's requests; the webhooks' one, unless
    ``webhook_allow_private``, resolves names to public addresses only."""
    guarded = webhook and not config.webhook_allow_private
    connector = aiohttp.TCPConnector(
        limit=config.outbox_concurrency, resolver=PublicResolver() if guarded else None
    )
    timeout = aiohttp.ClientTimeout(total=config.outbox_timeout)
    return aiohttp.ClientSession(timeout=timeout, connector=connector)
