"""Service configuration: the environment of API.md section 5, overridden by the command line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


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
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("POSTBACK_DB"):
            values["db_path"] = env["POSTBACK_DB"]
        if env.get("POSTBACK_DSN"):
            values["dsn"] = env["POSTBACK_DSN"]
        if env.get("POSTBACK_HOST"):
            values["host"] = env["POSTBACK_HOST"]
        if env.get("POSTBACK_PORT"):
            values["port"] = int(env["POSTBACK_PORT"])
        if env.get("POSTBACK_ADMIN_TOKEN"):
            values["admin_token"] = env["POSTBACK_ADMIN_TOKEN"]
        if env.get("POSTBACK_FACEBOOK_GRAPH_URL"):
            values["facebook_graph_url"] = env["POSTBACK_FACEBOOK_GRAPH_URL"]
        if env.get("POSTBACK_FACEBOOK_API_VERSION"):
            values["facebook_api_version"] = env["POSTBACK_FACEBOOK_API_VERSION"]
        if env.get("POSTBACK_TELEGRAM_API_URL"):
            values["telegram_api_url"] = env["POSTBACK_TELEGRAM_API_URL"]
        if env.get("POSTBACK_DURABILITY"):
            values["durability"] = env["POSTBACK_DURABILITY"]
        config = cls(**values)
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})
