"""Request bodies sent with a ``Content-Encoding``: decoded here, whole or refused.

aiohttp's own decoding (switched off in ``create_app``) takes a gzip stream cut short for
a whole one: ``clickid=X&goal=dep&sum=100`` compressed and cut after 20 bytes reached the
handler as ``clickid=X``, a different postback. Here a body is accepted only when its
compressed stream ends where the body ends:

* ``gzip`` (or ``x-gzip``) and ``deflate`` (zlib-wrapped, as RFC 9110 says, or raw
  deflate, as some clients send it) are decoded; ``identity`` is no coding;
* a stream that is not valid, not complete, or followed by other bytes is a 400
  ``bad_body``;
* more than ``limit`` bytes once decoded is a 413 ``too_large``, found without decoding
  further (a small compressed body can expand a thousandfold);
* any other coding, or more than one, is a 415 ``unsupported_encoding``.
"""

from __future__ import annotations

import zlib

from postback.errors import ApiError, bad_request

DECODED = ("gzip", "x-gzip", "deflate")


def too_large() -> ApiError:
    return ApiError(413, "too_large", "the request body is too large")


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """``raw`` decoded from ``content_encoding`` (a header's value), at most ``limit`` bytes."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return raw
    if len(codings) > 1 or codings[0] not in DECODED:
        raise ApiError(
            415,
            "unsupported_encoding",
            f"unsupported Content-Encoding {content_encoding[:64]!r}: use gzip or deflate",
        )
    coding = codings[0]
    if coding == "deflate":
        wbits = zlib.MAX_WBITS if _zlib_header(raw) else -zlib.MAX_WBITS
    else:
        wbits = 16 + zlib.MAX_WBITS  # the gzip wrapper
    decompressor = zlib.decompressobj(wbits)
    try:
        decoded = decompressor.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise bad_request("bad_body", f"the request body is not valid {coding} data") from exc
    if len(decoded) > limit:
        raise too_large()
    if not decompressor.eof or decompressor.unused_data:
        raise bad_request("bad_body", f"the request body is not one complete {coding} stream")
    return decoded


def _zlib_header(raw: bytes) -> bool:
    """Whether ``raw`` starts with a zlib header (RFC 1950: deflate method, checksum)."""
    return len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
