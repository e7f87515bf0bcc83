"""The source address behind trusted reverse proxies (postback/proxies.py,
``POSTBACK_TRUSTED_PROXIES``): the rule, its parsing, and the postback log through the app."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, ip_address, ip_network

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from postback.access_log import JsonAccessLogger
from postback.config import Config, ConfigError
from postback.keys import STORE
from postback.proxies import SOURCE, client_address, parse_networks
from tests.postback.conftest import MakeClient
from tests.postback.helpers import Api, make_world

PROXIES = parse_networks("10.0.0.0/8, 127.0.0.1 ::1")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # No X-Forwarded-For, or an empty one: the peer.
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [""], "10.0.0.1"),
        # One proxy in front of the client.
        ("10.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        # Two proxies; what the client wrote itself (left of it) is ignored.
        ("10.0.0.1", ["1.1.1.1, 203.0.113.7, 10.0.0.2"], "203.0.113.7"),
        # Several header lines count as one list, in order.
        ("10.0.0.1", ["1.1.1.1, 203.0.113.7", "10.0.0.2"], "203.0.113.7"),
        # A peer that is no trusted proxy: the header is not believed at all.
        ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),
        # Every hop a trusted proxy: the leftmost.
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
        # Something that is no address ends the walk at the last trusted hop.
        ("10.0.0.1", ["203.0.113.7, unknown"], "10.0.0.1"),
        ("10.0.0.1", ["garbage, 10.0.0.2"], "10.0.0.2"),
        ("10.0.0.1", ["203.0.113.7,, 10.0.0.2"], "10.0.0.2"),
        # Ports and brackets, as some balancers write them.
        ("10.0.0.1", ["203.0.113.7:51234"], "203.0.113.7"),
        ("10.0.0.1", ["[2001:db8::7]:51234"], "2001:db8::7"),
        ("::1", ["2001:db8::7"], "2001:db8::7"),
        # A trusted IPv4 peer on a dual-stack socket; IPv4-mapped hops as IPv4.
        ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("10.0.0.1", ["[::ffff:203.0.113.7]:80"], "203.0.113.7"),
        ("10.0.0.1", ["::ffff:203.0.113.7, ::ffff:10.0.0.2"], "203.0.113.7"),
        # No peer (a UNIX socket): nothing to go on.
        (None, ["203.0.113.7"], None),
    ],
)
def test_the_rightmost_untrusted_hop_is_the_client(
    peer: str | None, forwarded: list[str], expected: str | None
) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_without_trusted_proxies_the_peer_is_the_source() -> None:
    assert client_address("10.0.0.1", ["203.0.113.7"], ()) == "10.0.0.1"


addresses = st.ip_addresses(v=4).map(str)


@given(
    written_by_the_client=st.text(max_size=60),
    client=addresses.filter(lambda a: IPv4Address(a) not in ip_network("10.0.0.0/8")),
    proxies=st.lists(st.integers(0, 2**24 - 1).map(lambda n: str(IPv4Address((10 << 24) + n)))),
)
def test_nothing_a_client_writes_changes_the_answer(
    written_by_the_client: str, client: str, proxies: list[str]
) -> None:
    """Whatever the client puts in its own X-Forwarded-For, the trusted proxies' hops after
    it decide: the client's address as the first proxy saw it."""
    chain = ", ".join([client, *proxies])
    forged = [written_by_the_client + ", " + chain]
    assert client_address("10.0.0.1", forged, PROXIES) == client
    assert client_address("10.0.0.1", [chain], PROXIES) == client


@given(st.lists(st.text(max_size=80), max_size=3))
def test_any_header_gives_an_address(forwarded: list[str]) -> None:
    """Whatever the header holds: no exception, and an address (the peer's or a hop's)."""
    answer = client_address("10.0.0.1", forwarded, PROXIES)
    assert answer is not None
    ip_address(answer)


def test_parse_networks() -> None:
    assert parse_networks(" 127.0.0.1,10.0.0.0/8  ::1 ,") == (
        ip_network("127.0.0.1/32"),
        ip_network("10.0.0.0/8"),
        ip_network("::1/128"),
    )
    assert parse_networks("10.1.2.3/8") == (ip_network("10.0.0.0/8"),)
    with pytest.raises(ValueError, match="'nginx' is not an IP address or network"):
        parse_networks("127.0.0.1, nginx")


def test_the_environment_names_it() -> None:
    config = Config.from_env({"POSTBACK_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    assert config.trusted_proxies == (ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8"))
    assert Config.from_env({}).trusted_proxies == ()
    with pytest.raises(ConfigError, match="POSTBACK_TRUSTED_PROXIES='localhost' is not valid"):
        Config.from_env({"POSTBACK_TRUSTED_PROXIES": "localhost"})


@pytest.mark.parametrize("trusted", [True, False])
async def test_the_postback_log_keeps_the_client_and_the_proxy(
    make_client: MakeClient, trusted: bool
) -> None:
    proxies = parse_networks("127.0.0.1 ::1") if trusted else ()
    client = await make_client(trusted_proxies=proxies)
    world = await make_world(Api(client))
    headers = {"X-Forwarded-For": "192.0.2.1, 203.0.113.7"}
    for path in ("/postback/", "/spot/postback/chat/"):
        params = {"clickid": world.clickid, "goal": "reg", "user_id": world.user_id}
        params["spot"] = world.spot
        response = await client.get(path, params=params, headers=headers)
        assert response.status == 200

    rows = await Api(client).postbacks(world.key)
    assert [row["ip"] for row in rows] == ["203.0.113.7" if trusted else "127.0.0.1"] * 2
    events = await client.app[STORE].read_all(0, 1000)
    requests = [event.metadata["postback"] for event in events if "postback" in event.metadata]
    assert len(requests) == 2
    for request in requests:
        if trusted:
            assert (request["ip"], request["peer"]) == ("203.0.113.7", "127.0.0.1")
        else:
            assert request["ip"] == "127.0.0.1"
            assert "peer" not in request


@pytest.mark.parametrize("resolved", [None, "203.0.113.7"])
def test_the_access_log_names_the_resolved_source(
    resolved: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    request = make_mocked_request(
        "GET", "/postback/", headers={"X-Forwarded-For": "203.0.113.7"}, transport=_Peer()
    )
    if resolved is not None:
        request[SOURCE] = resolved
    logger = logging.getLogger("test.access")
    with caplog.at_level(logging.INFO, logger="test.access"):
        JsonAccessLogger(logger, "").log(request, web.Response(), 0.001)
    expected = resolved or "127.0.0.1"
    assert orjson.loads(caplog.records[0].getMessage())["remote"] == expected


class _Peer:
    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default
