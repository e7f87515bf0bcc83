"""The HTTP part every channel shares: one POST, its answer read (bounded) and classified."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final

import aiohttp
from multidict import CIMultiDictProxy

from postback.channels import FAILED, RETRY, SUCCEEDED, Outcome

SNIPPET: Final = 512
"""Characters of an answer's body kept in the log."""
_READ_LIMIT: Final = 65_536
"""Bytes of an answer read at most (a receiver may answer with anything)."""
USER_AGENT: Final = "postback-outbox/1"

Classify = Callable[[int, "CIMultiDictProxy[str]", str, datetime], Outcome]


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdecimal():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - now).total_seconds())


def classify(status: int, headers: CIMultiDictProxy[str], text: str, now: datetime) -> Outcome:
    """2xx succeeded; 408, 429 and 5xx are retried (honouring ``Retry-After``); the rest
    (3xx, other 4xx) failed."""
    snippet = text[:SNIPPET] or None
    if 200 <= status < 300:
        return Outcome(SUCCEEDED, status, None, snippet)
    if status in (408, 429) or status >= 500:
        wait = retry_after(headers.get("Retry-After"), now)
        return Outcome(RETRY, status, f"HTTP {status}", snippet, wait)
    return Outcome(FAILED, status, f"HTTP {status}", snippet)


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


async def _read(response: aiohttp.ClientResponse) -> str:
    chunks: list[bytes] = []
    size = 0
    while size < _READ_LIMIT:
        chunk = await response.content.read(_READ_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


async def post(
    http: aiohttp.ClientSession,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    now: datetime,
    secret: str,
    params: Mapping[str, str] | None = None,
    judge: Classify = classify,
) -> Outcome:
    """POST ``body`` to ``url`` (no redirects followed) and classify the answer with
    ``judge``. Timeouts and connection errors are retried; ``secret`` is masked in any
    error text (a token may be part of the URL)."""
    try:
        async with http.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
            params=params,
            allow_redirects=False,
        ) as response:
            text = await _read(response)
            return judge(response.status, response.headers, text, now)
    except TimeoutError:
        return Outcome(RETRY, None, "timeout")
    except (aiohttp.InvalidURL, ValueError) as exc:  # a URL no retry can send to
        return Outcome(FAILED, None, redact(f"{type(exc).__name__}: {exc}", secret)[:SNIPPET])
    except (aiohttp.ClientError, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Outcome(RETRY, None, redact(detail, secret)[:SNIPPET])
