"""The HTTP part every channel shares: one POST, its answer read (bounded) and classified."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote, quote_plus

import aiohttp
from multidict import CIMultiDictProxy

from postback.channels import FAILED, RETRY, SUCCEEDED, Outcome
from postback.channels.addresses import RefusedAddressError

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


def _forms(secret: str) -> set[str]:
    """``secret`` as a receiver, a proxy or an error may echo it: as is, percent-encoded
    (as in a query string or a path; hex in either case) and JSON-escaped."""
    encoded = {quote(secret, safe=""), quote(secret, safe=":"), quote_plus(secret)}
    lowered = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), form) for form in encoded}
    escaped = secret.replace("\\", "\\\\").replace('"', '\\"')
    return {secret, escaped, escaped.replace("/", "\\/"), *encoded, *lowered}


def redact(text: str, secret: str) -> str:
    """``text`` with every form of ``secret`` (the target's token or webhook secret) masked:
    no answer, error or log line may carry it."""
    if not secret:
        return text
    for form in sorted(_forms(secret), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


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
    ``judge``. Timeouts and connection errors are retried; ``secret`` is masked in the
    answer's text (an error may echo the token, a proxy the URL) and in any error text."""
    try:
        async with http.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
            params=params,
            allow_redirects=False,
        ) as response:
            text = redact(await _read(response), secret)  # before it is cut to a snippet
            return judge(response.status, response.headers, text, now)
    except TimeoutError:
        return Outcome(RETRY, None, "timeout")
    except (aiohttp.InvalidURL, ValueError) as exc:  # a URL no retry can send to
        return Outcome(FAILED, None, redact(f"{type(exc).__name__}: {exc}", secret)[:SNIPPET])
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, RefusedAddressError):  # no retry can change that
            return Outcome(FAILED, None, f"refused: {exc.os_error}"[:SNIPPET])
        detail = f"{type(exc).__name__}: {exc}"
        return Outcome(RETRY, None, redact(detail, secret)[:SNIPPET])
    except (aiohttp.ClientError, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Outcome(RETRY, None, redact(detail, secret)[:SNIPPET])
