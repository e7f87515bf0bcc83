"""Small HTTP helpers: JSON answers, request text made safe to store, parameter parsing."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from eventstore.base import id_bits
from postback.codings import decode_body, too_large
from postback.errors import bad_request
from postback.multipart import MultipartError, multipart_fields
from postback.proxies import source_of

MAX_RECORDED = 8192  # characters of a raw query or body kept in the postback log
MAX_FIELD = 1024  # characters of one parameter kept in the log's summary fields
MAX_BODY = 1024**2  # bytes of a request body, as sent and once decoded


def json_response(
    body: Any, status: int = 200, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


_second: list[Any] = [None, ""]  # the last second formatted, and its text


def utc_now_iso() -> str:
    """``datetime.now(UTC).isoformat()``, the same text, at a third of its cost (the date
    and time of day are formatted once per second)."""
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    if seconds != _second[0]:
        _second[:] = [seconds, datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{micros:06d}+00:00" if micros else f"{_second[1]}+00:00"


def new_request_id() -> str:
    """A random UUID (version 4) as text, like ``str(uuid.uuid4())`` at a third of its cost:
    from :func:`eventstore.base.id_bits`, as event ids are."""
    value = id_bits(128) & ~(0xF000 << 64 | 0xC000 << 48)
    text = f"{value | 0x4000 << 64 | 0x8000 << 48:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def clean(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates (from broken percent-escapes) become '?'."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text


def _scalar(name: str, value: Any) -> str | None:
    """A JSON body's value as the text a query would carry: a string as it is, a number
    as its digits, ``true`` and ``false`` as those words (so ``"sum": true`` is no amount:
    400 ``bad_amount``, in the checks' order, as ``?sum=true`` is); null as absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return clean(str(value))
    raise bad_request("bad_body", f"parameter {name!r} must be a string or a number")


async def read_body(request: web.Request) -> bytes:
    """A partner request's body: a POST's, decoded from its ``Content-Encoding``; none
    for other methods. Raises ApiError (413, 415, 400) for a body that cannot be read."""
    if request.method != "POST":
        return b""
    return await request_body(request)


async def request_body(request: web.Request) -> bytes:
    """The body of ``request`` (any method), decoded from its ``Content-Encoding``."""
    if not request.body_exists:
        return b""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise too_large() from exc
    except RequestPayloadError as exc:  # a broken chunked encoding, say
        raise bad_request("bad_body", "the request body cannot be read") from exc
    # Repeated headers are one list (RFC 9110): "identity" then "gzip" is gzip.
    codings = request.headers.getall(hdrs.CONTENT_ENCODING, ())
    return decode_body(raw, ", ".join(codings), MAX_BODY) if codings else raw


def partner_params(request: web.Request, body: bytes) -> dict[str, str]:
    """The parameters of a partner request: the body's (form or JSON), then the query's.

    A repeated parameter counts once, by its first value.
    """
    params: dict[str, str] = {}
    if body:
        if request.content_type == "application/json":
            for key, value in json_object(body, "bad_body").items():
                scalar = _scalar(key, value)
                if scalar is not None:
                    params.setdefault(clean(key), scalar)
        elif request.content_type == "multipart/form-data":
            content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
            try:
                fields = multipart_fields(content_type, body)
            except MultipartError as exc:
                raise bad_request("bad_body", f"not a multipart/form-data form: {exc}") from exc
            for key, value in fields:
                params.setdefault(clean(key), clean(value))
        else:
            text = body.decode("utf-8", "replace")
            for key, value in parse_qsl(text, keep_blank_values=True):
                params.setdefault(clean(key), clean(value))
    for key, value in request.query.items():
        params.setdefault(clean(key), clean(value))
    return params


def request_record(request: web.Request, endpoint: str, body: bytes) -> dict[str, Any]:
    """What the postback log keeps of a request (the answer is added later)."""
    text, exact = _body_text(body)
    record: dict[str, Any] = {
        "request_id": new_request_id(),
        "endpoint": endpoint,
        "method": request.method,
        "path": clean(request.path)[:MAX_FIELD],
        "query": clean(request.rel_url.raw_query_string)[:MAX_RECORDED],
        "body": text,
        "ip": source_of(request),
        "received_at": utc_now_iso(),
    }
    if exact is not None:
        record["body_base64"] = exact
    if record["ip"] != request.remote:  # through a trusted proxy: keep who sent it too
        record["peer"] = request.remote
    return record


def _body_text(body: bytes) -> tuple[str, str | None]:
    """``body`` as text for the log (at most :data:`MAX_RECORDED` characters), and None;
    or, for a body that is not UTF-8 (a latin-1 form, say), the text with U+FFFD where
    its bytes were not, and its first :data:`MAX_RECORDED` bytes in base64: what a partner
    sent can then be shown byte for byte in a dispute. (A query needs no such copy: the
    HTTP parser refuses a request line that is not ASCII, and percent-escapes are kept.)"""
    try:
        return body.decode()[:MAX_RECORDED], None
    except UnicodeDecodeError:
        exact = base64.b64encode(body[:MAX_RECORDED]).decode()
        return body.decode("utf-8", "replace")[:MAX_RECORDED], exact


def summarize(record: dict[str, Any], params: dict[str, str]) -> None:
    """Add the identifying parameters to a log record (truncated)."""
    for name in ("clickid", "user_id", "spot", "goal", "txid"):
        value = params.get(name)
        record[name] = value[:MAX_FIELD] if value else None


async def json_body(request: web.Request) -> dict[str, Any]:
    """An operator request's JSON object body, or a 400 saying what is wrong with it."""
    raw = await request_body(request)
    return json_object(raw, "bad_json") if raw else {}


def json_object(raw: bytes, code: str) -> dict[str, Any]:
    """``raw`` as a JSON object, or a 400 with ``code`` saying what is wrong with it."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(code, "the request body is not valid JSON") from exc
    if not isinstance(parsed, dict):
        raise bad_request(code, "the request body must be a JSON object")
    return parsed
