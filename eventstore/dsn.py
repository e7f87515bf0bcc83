"""PostgreSQL DSNs as they may be shown to people: never with a password in them."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SCHEMES = ("postgresql", "postgres")


def redact_dsn(dsn: str) -> str:
    """``dsn`` fit for messages and logs: the password masked, whether it is in the address
    (``user:pw@host``) or a ``password=`` parameter; a DSN that is not a ``postgresql://``
    URL (libpq's ``key=value`` form, a typo) may hold one anywhere, so it is not repeated."""
    try:
        parts = urlsplit(dsn)
        if parts.scheme not in _SCHEMES:
            return "the PostgreSQL DSN given (not a postgresql:// URL)"
        if parts.password is not None:
            # Everything after the last "@" is the host part, ports and all (several
            # hosts, or a port that is not a number, are left as written).
            hosts = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{hosts}")
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "the PostgreSQL DSN given (not a valid URL)"
    if any(name.lower() == "password" for name, _ in query):
        shown = [(name, "***" if name.lower() == "password" else v) for name, v in query]
        parts = parts._replace(query=urlencode(shown, safe="*"))
    return urlunsplit(parts)
