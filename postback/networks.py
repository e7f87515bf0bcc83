"""IP networks as the configuration gives them (``POSTBACK_TRUSTED_PROXIES``).

Apart from :mod:`postback.proxies`, which resolves a request's source with them, so that
reading the configuration needs no web framework (the command-line tools that never
serve import it too).
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

Network = IPv4Network | IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8 ::1"`` as networks (an address is a network of one);
    ValueError naming the entry that is neither."""
    networks = []
    for entry in text.replace(",", " ").split():
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)
