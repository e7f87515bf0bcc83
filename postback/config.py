"""Service configuration: the environment of API.md section 5, overridden by the command line."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from postback.networks import Network, parse_networks

PROJECTORS = ("process", "inline")
"""Where ``serve`` may run the projections and the outbox (see ``Config.projector``)."""


class ConfigError(ValueError):
    """The environment holds a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class Config:
    db_path: str = "./postback.db"
    dsn: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str | None = None
    facebook_graph_url: str = "https://graph.facebook.com"
    facebook_api_version: str = "v21.0"
    telegram_api_url: str = "https://api.telegram.org"
    # "full" (the default) syncs every group commit; "normal" only by explicit choice.
    durability: str = "full"
    run_projections: bool = True
    # Where the projections (and the outbox) run: "inline" in this process (what
    # create_app does by default) or "process": a child `postback project` that this
    # process supervises (what `postback serve` does by default; postback/projector.py).
    projector: str = "inline"
    # Following a busy log live, the projections apply at most this often (seconds): the
    # events of the pause go in one transaction, which costs a fraction of one per group
    # commit. A reader that waits for its own writes (stats, listings) does not wait for
    # it (projections/runner.py: BUSY_BATCH, urgent wait_until, hurry). 0: apply each
    # group commit as it comes.
    projection_interval: float = 0.2
    # PostgreSQL: how often an instance whose projection runner follows tries to lead.
    leader_retry: float = 2.0
    # The outbox (docs/outbox.md): runs with the projections unless switched off.
    outbox: bool = True
    outbox_concurrency: int = 16
    outbox_max_attempts: int = 12
    outbox_backoff_base: float = 2.0
    outbox_backoff_max: float = 3600.0
    outbox_timeout: float = 10.0
    outbox_breaker_failures: int = 5
    outbox_breaker_cooldown: float = 60.0
    # Webhooks to loopback, private, link-local... addresses (refused by default: SSRF).
    webhook_allow_private: bool = False
    # Reverse proxies whose X-Forwarded-For gives the source address (postback/proxies.py).
    trusted_proxies: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        for name in ("outbox_concurrency", "outbox_max_attempts", "outbox_breaker_failures"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in (
            "projection_interval",
            "outbox_backoff_base",
            "outbox_backoff_max",
            "outbox_timeout",
            "outbox_breaker_cooldown",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds, 0 or more")
        if self.projector not in PROJECTORS:
            raise ConfigError("projector must be inline or process")
        if self.outbox_timeout == 0:
            raise ConfigError("outbox_timeout must be more than 0 seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """The environment of API.md section 5; ``overrides`` (not None) win over it."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, (field_name, convert) in _ENVIRONMENT.items():
            if env.get(variable):
                try:
                    values[field_name] = convert(env[variable])
                except ValueError as exc:
                    raise ConfigError(f"{variable}={env[variable]!r} is not valid: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise ValueError("expected on or off")


def _projector(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in PROJECTORS:
        raise ValueError("expected inline or process")
    return lowered


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("expected a whole number, 1 or more")
    return value


def parse_port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535; ValueError otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"a port is a number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"a port is a number from 0 to 65535, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return value


_ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "POSTBACK_DB": ("db_path", str),
    "POSTBACK_DSN": ("dsn", str),
    "POSTBACK_HOST": ("host", str),
    "POSTBACK_PORT": ("port", parse_port),
    "POSTBACK_ADMIN_TOKEN": ("admin_token", str),
    "POSTBACK_FACEBOOK_GRAPH_URL": ("facebook_graph_url", str),
    "POSTBACK_FACEBOOK_API_VERSION": ("facebook_api_version", str),
    "POSTBACK_TELEGRAM_API_URL": ("telegram_api_url", str),
    "POSTBACK_DURABILITY": ("durability", str),
    "POSTBACK_LEADER_RETRY": ("leader_retry", _seconds),
    "POSTBACK_PROJECTION_INTERVAL": ("projection_interval", _seconds),
    "POSTBACK_PROJECTOR": ("projector", _projector),
    "POSTBACK_OUTBOX": ("outbox", _switch),
    "POSTBACK_OUTBOX_CONCURRENCY": ("outbox_concurrency", _count),
    "POSTBACK_OUTBOX_MAX_ATTEMPTS": ("outbox_max_attempts", _count),
    "POSTBACK_OUTBOX_BACKOFF_BASE": ("outbox_backoff_base", _seconds),
    "POSTBACK_OUTBOX_BACKOFF_MAX": ("outbox_backoff_max", _seconds),
    "POSTBACK_OUTBOX_TIMEOUT": ("outbox_timeout", _seconds),
    "POSTBACK_OUTBOX_BREAKER_FAILURES": ("outbox_breaker_failures", _count),
    "POSTBACK_OUTBOX_BREAKER_COOLDOWN": ("outbox_breaker_cooldown", _seconds),
    "POSTBACK_WEBHOOK_ALLOW_PRIVATE": ("webhook_allow_private", _switch),
    "POSTBACK_TRUSTED_PROXIES": ("trusted_proxies", parse_networks),
}
