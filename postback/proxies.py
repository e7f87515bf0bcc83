"""The source address of a request that came through reverse proxies.

Behind nginx, a load balancer or a CDN, every request's TCP peer is the proxy. With
``POSTBACK_TRUSTED_PROXIES`` (addresses and networks, comma-separated) the service takes
the source address from ``X-Forwarded-For`` instead, but only as far as it can trust it:
starting from the peer, it walks the header's hops from the right (each proxy appends the
address it received the request from) and stops at the first address that is not a
trusted proxy. That one is the client. A client can write anything into the header it
sends; what a trusted proxy appended after it cannot be forged, so the hops left of the
first untrusted one are never believed. A hop that is not an address ends the walk at the
last trusted one. With no trusted proxies configured (the default) the source address is
the TCP peer, whatever the headers say.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from postback.networks import Network, parse_networks

__all__ = ["SOURCE", "Network", "client_address", "parse_networks", "source_of", "trusted_source"]

SOURCE: Final = web.RequestKey("postback_source", str)
"""Where :func:`trusted_source` keeps the resolved source address of a request."""


def _address(hop: str) -> IPv4Address | IPv6Address | None:
    """One hop of ``X-Forwarded-For`` as an address: ``1.2.3.4``, ``1.2.3.4:5678``,
    ``2001:db8::1`` or ``[2001:db8::1]:5678``; None if it is none of these."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        address = ip_address(hop)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # one spelling per client: 192.0.2.1, not ::ffff:c000:201
    return address


def _trusted(address: IPv4Address | IPv6Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


def client_address(
    peer: str | None, forwarded_for: Iterable[str], networks: tuple[Network, ...]
) -> str | None:
    """The source address of a request from ``peer`` carrying these ``X-Forwarded-For``
    header values (in order), trusting the proxies in ``networks``: see the module
    docstring."""
    if peer is None or not networks:
        return peer
    current = _address(peer)
    if current is None or not _trusted(current, networks):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    source = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        source = str(address)
        if not _trusted(address, networks):
            break
    return source


def source_of(request: web.BaseRequest) -> str | None:
    """The source address of ``request``: as :func:`trusted_source` resolved it, or the
    TCP peer (no trusted proxies, or a request the application never saw)."""
    source: str | None = request.get(SOURCE, request.remote)
    return source


def trusted_source(networks: tuple[Network, ...]) -> Middleware:
    """A middleware resolving each request's source address once, for the handlers and
    the access log (:func:`source_of`)."""

    @web.middleware
    async def resolve_source(request: web.Request, handler: Handler) -> web.StreamResponse:
        forwarded = request.headers.getall("X-Forwarded-For", ())
        source = client_address(request.remote, forwarded, networks)
        if source is not None:
            request[SOURCE] = source
        return await handler(request)

    return resolve_source
