"""Where a webhook may point: a URL checked strictly, and no private address (SSRF).

Any account may register a webhook, and sees the start of its answers in the API; left
unchecked, that is a way to reach (and read) the service's own network: ``127.0.0.1``, a
cloud's metadata address, the database. So, unless ``POSTBACK_WEBHOOK_ALLOW_PRIVATE=on``:

* at registration (:func:`webhook_url`), a host that is ``localhost`` (or ``*.localhost``)
  or an IP literal that is not globally reachable (loopback, private, link-local, shared,
  unspecified, multicast, reserved; IPv4 inside IPv6 included) is refused;
* at send time, the webhook session's resolver (:class:`PublicResolver`, the event loop's
  ``getaddrinfo``) refuses a name that resolves to such an address, at connection time,
  so a name re-pointed after its registration (DNS rebinding) is refused as well; an IP
  literal (which aiohttp connects to without resolving) is checked by :func:`refusal`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE: Final = "POSTBACK_WEBHOOK_ALLOW_PRIVATE"
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


class RefusedAddressError(OSError):
    """A webhook's host is (or resolves to) an address it may not be sent to."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [v4 for v4 in found if v4 is not None]


def is_public(ip: IPAddress) -> bool:
    """Globally reachable unicast (for IPv6, with no private IPv4 inside it)."""
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    return not isinstance(ip, ipaddress.IPv6Address) or all(
        is_public(v4) for v4 in _embedded_v4(ip)
    )


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_local_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def _check_name(host: str) -> None:
    """``host`` (ASCII, as in the URL: IDNA already applied) is a plausible DNS name."""
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        raise ValueError("the host is not a valid name")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"the host is not a valid name (label {label[:63]!r})")
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError as exc:
                raise ValueError(f"the host is not a valid IDNA name ({label!r})") from exc
    if labels[-1].isdecimal():  # 127.1, 2130706433, 1.2.3.4.5: numbers, not names
        raise ValueError("the host is neither a name nor an IP address")


def webhook_url(text: str, *, allow_private: bool) -> str:
    """``text`` if it is an absolute ``http(s)://`` URL a webhook may point to; otherwise
    a :class:`ValueError` saying why, in words an operator can act on."""
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("it must not hold spaces or control characters")
    try:
        url = URL(text)
        host, port = url.raw_host, url.explicit_port
        user, password = url.raw_user, url.raw_password
    except (TypeError, ValueError, UnicodeError) as exc:  # UnicodeError is a ValueError
        raise ValueError(f"it is not a valid URL ({exc})") from exc
    if url.scheme not in ("http", "https") or not url.is_absolute() or not host:
        raise ValueError("it must be an absolute http:// or https:// URL with a host")
    authority = text.partition("://")[2].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if user is not None or password is not None or "@" in authority:
        raise ValueError("it must not hold a user name or password (user:pass@)")
    if port == 0:
        raise ValueError("its port must be 1 to 65535")
    bracketed = authority.startswith("[")
    ip = _ip_literal(host)
    if bracketed and not isinstance(ip, ipaddress.IPv6Address):
        raise ValueError("its host is not a valid IPv6 address")
    if ip is None:
        _check_name(host)
    if not allow_private and (reason := refusal(host)) is not None:
        raise ValueError(reason)
    return text


def refusal(host: str) -> str | None:
    """Why a webhook may not go to ``host`` by its form alone (an IP literal that is not
    public, ``localhost``), or None. Names are checked when resolved."""
    ip = _ip_literal(host.strip("[]"))
    if (ip is not None and not is_public(ip)) or is_local_name(host):
        return (
            f"{host!r} is a local or private address; webhooks may not point there"
            f" unless {ALLOW_PRIVATE}=on"
        )
    return None


class PublicResolver(AbstractResolver):
    """Resolves with the event loop's ``getaddrinfo``; a name with any address that is not
    public raises :class:`RefusedAddressError` (the request fails for good)."""

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if (reason := refusal(host)) is not None:
            raise RefusedAddressError(reason)
        found = await self._resolver.resolve(host, port, family)
        for result in found:
            ip = _ip_literal(result["host"].split("%", 1)[0])
            if ip is None or not is_public(ip):
                raise RefusedAddressError(
                    f"{host!r} resolves to {result['host']}, a local or private address;"
                    f" webhooks may not go there unless {ALLOW_PRIVATE}=on"
                )
        return found

    async def close(self) -> None:
        await self._resolver.close()
