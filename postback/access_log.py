"""Structured access logs: one JSON object per request on the ``postback.access`` logger."""

from __future__ import annotations

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from postback.proxies import source_of


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            orjson.dumps(
                {
                    "remote": source_of(request),
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "bytes": response.body_length,
                    "ms": round(time * 1000, 3),
                    "user_agent": request.headers.get("User-Agent"),
                }
            ).decode()
        )
