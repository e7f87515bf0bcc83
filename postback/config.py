"""Service configuration: the environment of API.md section 5, overridden by the command line."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


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


_ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "POSTBACK_DB": ("db_path", str),
    "POSTBACK_DSN": ("dsn", str),
    "POSTBACK_HOST": ("host", str),
    "POSTBACK_PORT": ("port", int),
    "POSTBACK_ADMIN_TOKEN": ("admin_token", str),
    "POSTBACK_FACEBOOK_GRAPH_URL": ("facebook_graph_url", str),
    "POSTBACK_FACEBOOK_API_VERSION": ("facebook_api_version", str),
    "POSTBACK_TELEGRAM_API_URL": ("telegram_api_url", str),
    "POSTBACK_DURABILITY": ("durability", str),
}
