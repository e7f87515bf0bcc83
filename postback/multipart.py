"""The text fields of a ``multipart/form-data`` body (RFC 7578), read in one bounded pass.

What PHP's curl posts for an array of fields, for one. Partner requests are parsed on the
event loop, from anyone, so the reader is linear in the body's size and refuses what no
postback needs: more than :data:`MAX_PARTS` parts, a part's headers over
:data:`MAX_PART_HEAD` bytes, header continuation lines, nested multiparts (a nested part
is a file part here: skipped). The standard library's email parser is none of that: a
part header of nested comments raised ``RecursionError``, and 32 KB of ``;`` took seconds.
"""

from __future__ import annotations

import re
from typing import Final

MAX_PARTS: Final = 64
"""Parts of one form; a postback has a handful of parameters."""
MAX_PART_HEAD: Final = 1024
"""Bytes of one part's header block."""

_BOUNDARY: Final = re.compile(
    r';\s*boundary\s*=\s*(?:"([^"\r\n]{1,70})"|([^\s;"]{1,70})(?![^\s;]))', re.IGNORECASE
)
_PARAMETER: Final = re.compile(r';\s*([A-Za-z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]*))')
_ESCAPED: Final = re.compile(r"\\(.)")
_CHARSET: Final = re.compile(r';\s*charset\s*=\s*"?([A-Za-z0-9._:-]{1,40})"?', re.IGNORECASE)


class MultipartError(ValueError):
    """The body is not a ``multipart/form-data`` form this reader takes; says why."""


def multipart_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The ``(name, text)`` of each field of the form, in order; file parts skipped.

    ``content_type`` is the request's whole ``Content-Type`` header (its ``boundary``).
    A preamble before the first boundary and an epilogue after the last are ignored, as
    RFC 2046 says; a body without the closing boundary (cut off) is refused. Raises
    :class:`MultipartError`."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise MultipartError("the Content-Type names no boundary")
    boundary = (found.group(1) or found.group(2)).encode("utf-8", "replace")
    # Every delimiter is preceded by CRLF, but the first may open the body.
    segments = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if len(segments) < 2:
        raise MultipartError("the body holds no boundary")
    *parts, closing = segments[1:]  # segments[0]: the preamble
    if not closing.startswith(b"--"):
        raise MultipartError("the body ends before its closing boundary")
    if len(parts) > MAX_PARTS:
        raise MultipartError(f"a form of more than {MAX_PARTS} parts")
    fields: list[tuple[str, str]] = []
    for part in parts:
        field = _field(part)
        if field is not None:
            fields.append(field)
    return fields


def _field(part: bytes) -> tuple[str, str] | None:
    """A part after its delimiter: transport padding, CRLF, headers, CRLF CRLF, content."""
    if part.startswith(b"--"):
        raise MultipartError("a closing boundary before the last part")
    line_end = part.find(b"\r\n")
    if line_end < 0 or part[:line_end].strip(b" \t"):
        raise MultipartError("a boundary line with more after it")
    part = part[line_end + 2 :]
    if part.startswith(b"\r\n"):  # no headers at all
        head, content = b"", part[2:]
    else:
        head_end = part.find(b"\r\n\r\n", 0, MAX_PART_HEAD + 4)
        if head_end < 0:
            raise MultipartError(f"a part whose headers are over {MAX_PART_HEAD} bytes or unended")
        head, content = part[:head_end], part[head_end + 4 :]
    disposition, content_type = _headers(head.decode("utf-8", "replace"))
    if disposition is None:
        return None
    kind, _, parameters = disposition.partition(";")
    names = _parameters(";" + parameters)
    name = names.get("name")
    if kind.strip().lower() != "form-data" or name is None:
        return None
    if "filename" in names or "filename*" in names or content_type.startswith("multipart/"):
        return None  # a file: no parameter
    charset = _CHARSET.search(content_type)
    encoding = charset.group(1) if charset else "utf-8"
    try:
        return name, content.decode(encoding, "replace")
    except LookupError:  # no such codec, or one that is no text encoding ("hex")
        raise MultipartError(f"a part in an unknown charset: {encoding}") from None


def _headers(head: str) -> tuple[str | None, str]:
    """``Content-Disposition`` (None if absent) and ``Content-Type`` (lowercase, "" if
    absent) of a part's header block."""
    disposition, content_type = None, ""
    for line in head.split("\r\n") if head else ():
        if line[:1] in (" ", "\t"):
            raise MultipartError("a part header continued on another line")
        name, colon, value = line.partition(":")
        if not colon:
            raise MultipartError("a part header without a colon")
        name = name.strip().lower()
        if name == "content-disposition":
            disposition = value.strip()
        elif name == "content-type":
            content_type = value.strip().lower()
    return disposition, content_type


def _parameters(text: str) -> dict[str, str]:
    """``name`` and ``filename`` parameters (quoted or not) of a disposition; first wins."""
    found: dict[str, str] = {}
    for match in _PARAMETER.finditer(text):
        key = match.group(1).lower()
        quoted, bare = match.group(2), match.group(3)
        found.setdefault(key, _ESCAPED.sub(r"\1", quoted) if quoted is not None else bare)
    return found
