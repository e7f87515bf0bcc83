"""Where a webhook may point: odd URLs are a 400 (never a 500), and no local or private
address unless ``POSTBACK_WEBHOOK_ALLOW_PRIVATE=on`` (SSRF), at registration and at send
time (:mod:`postback.channels.addresses`).

The test services allow private addresses (their receiver is on loopback); the tests of
the refusals turn that off.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from hypothesis import given, settings
from hypothesis import strategies as st

from postback.channels.addresses import webhook_url
from postback.deliveries_api import _secret
from postback.errors import ApiError
from tests.postback.helpers import postback
from tests.postback.outbox_support import (
    MakeService,
    Receiver,
    Service,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
    service_fixture,  # noqa: F401
)

SECRET = "whsec-0123456789abcdef"
BAD_URLS = [
    "http://xn--/",
    "http://xn--zz/",
    "http://host:0/",
    "http://[zz::1]/",
    "http://[::1/",
    "http://.../",
    "https://a..b/",
    "http://%41/",
    "http://1.2.3.4.5/",
    "http://" + "a" * 300 + ".com/",
    "http://user:pass@example.com/",
    "http://user@example.com/",
    "http://@example.com/",
    "http://example.com:80@evil.example/",
    "http://a\u200bb.com/",
]
PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::]/hook",
    "http://0.0.0.0/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://224.0.0.1/hook",
    "http://[64:ff9b::7f00:1]/hook",
]


async def _register(svc: Service, key: str, url: str, secret: str = SECRET) -> tuple[int, Any]:
    status, body = await svc.api.call(
        "POST", "/api/v1/webhooks", key, json={"url": url, "secret": secret}
    )
    return int(status), body


async def test_odd_urls_are_400_json(service: Service) -> None:
    key = await service.api.create_account()
    for url in BAD_URLS:
        status, body = await _register(service, key, url)
        assert (status, body["code"]) == (400, "bad_url"), url


@settings(max_examples=500, deadline=None)
@given(url=st.text(max_size=80), secret=st.text(max_size=40))
def test_any_text_is_accepted_or_refused_with_a_400(url: str, secret: str) -> None:
    for candidate in (url, f"http://{url}", f"https://{url}/x"):
        for allow_private in (True, False):
            # a refusal is a ValueError (the API answers it with a 400); nothing else
            with contextlib.suppress(ValueError):
                webhook_url(candidate, allow_private=allow_private)
    status = 200
    try:
        _secret({"secret": secret})
    except ApiError as exc:
        status = exc.status
    assert status in (200, 400)


async def test_any_text_through_the_api_is_never_a_5xx(service: Service) -> None:
    samples: list[tuple[str, str]] = []

    @settings(max_examples=150, deadline=None, database=None)
    @given(
        url=st.one_of(st.text(max_size=60), st.text(max_size=60).map("http://{}/".format)),
        secret=st.text(max_size=20),
    )
    def collect(url: str, secret: str) -> None:
        samples.append((url, secret))

    collect()
    key = await service.api.create_account()
    for url, secret in samples:
        status, body = await _register(service, key, url, secret)
        assert status < 500, (url, secret, body)


async def test_private_addresses_are_refused_unless_allowed(
    make_service: MakeService,
) -> None:
    svc = await make_service(webhook_allow_private=False)
    key = await svc.api.create_account()
    for url in PRIVATE_URLS:
        status, body = await _register(svc, key, url)
        assert (status, body["code"]) == (400, "bad_url"), url
        assert "POSTBACK_WEBHOOK_ALLOW_PRIVATE" in body["error"] or "neither" in body["error"]
    status, body = await _register(svc, key, "https://hooks.example.com/in")
    assert status == 201, body
    for url in [*PRIVATE_URLS[:1], "http://[::1]:8080/hook", "http://localhost/hook"]:
        assert webhook_url(url, allow_private=True) == url  # =on: what the tests use


async def test_a_private_address_is_refused_at_send_time(
    make_service: MakeService, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(receiver.url.rsplit(":", 1)[1])

    async def rebound(
        self: ThreadedResolver, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[ResolveResult]:  # a public name re-pointed at loopback (DNS rebinding)
        assert host == "hooks.example.com"
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    monkeypatch.setattr(ThreadedResolver, "resolve", rebound)
    # registered while allowed (or before this check existed), sent with it off
    before = await make_service(outbox=False)
    world = await before.world()
    await before.webhook(world.key, receiver.hook_url("ip"), SECRET)  # 127.0.0.1: a literal
    await before.webhook(world.key, f"http://localhost:{port}/hook/name", SECRET)
    await before.webhook(world.key, f"http://hooks.example.com:{port}/hook/dns", SECRET)
    await postback(before.client, clickid=world.clickid, goal="reg")
    await before.client.close()

    svc = await make_service(webhook_allow_private=False)
    await svc.settle()
    assert receiver.of("webhook") == []
    listed = (await svc.deliveries(world.key))["deliveries"]
    assert [(d["status"], len(d["attempts"])) for d in listed] == [("failed", 1)] * 3
    for delivery in listed:
        assert delivery["reason"].startswith("refused: ")
        assert "POSTBACK_WEBHOOK_ALLOW_PRIVATE=on" in delivery["reason"]
    assert "'hooks.example.com' resolves to 127.0.0.1" in listed[2]["reason"]
