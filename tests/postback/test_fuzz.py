"""Property: whatever a partner sends to the partner endpoints (postbacks and chat), the
answer is never a server error and always a JSON body.

Requests stay valid HTTP (aiohttp's own parser answers a malformed request line itself, which
is not our code): query strings are built from percent-escapes, unreserved characters and the
``&``/``=``/``+`` separators, and sent as they are (``encoded=True``). Values of ~20k characters
go in bodies, since a request line is limited to 8190 bytes.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.postback.helpers import CHAT_PATHS, POSTBACK_PATHS, Client, World

PATHS = [*POSTBACK_PATHS, *CHAT_PATHS]
NAMES = ["clickid", "user_id", "spot", "goal", "sum", "sumrd", "playerid", "txid"]
KNOWN = [
    "ABC123",  # the world's clickid, user_id and spot token
    "7788",
    "87fa11c2-ff00-44a1",
    "reg",
    "dep",
    "redep",
    "rebill",
    "level10",
    "{sum}",
    "NaN",
    "inf",
    "1e999",
    "1,5",
    "100",
    "0.1",
    "-0",
    "",
]
IDENTITIES = st.sampled_from(
    [
        (),
        ("clickid=ABC123",),
        ("user_id=7788", "spot=87fa11c2-ff00-44a1"),
        ("spot=87fa11c2-ff00-44a1",),
    ]
)
"""A start that reaches the deeper checks (the world's subscriber) often enough."""
ESCAPES = [
    "%ED%A0%80",
    "%ED%B0%80",
    "%00",
    "%F0%9F%98%80",
    "%C3",
    "%FF%FE",
    "%2B",
    "%26",
    "%3D",
    "%25",
]
FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- query strings ---------------------------------------------------------------------------

names = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
texts = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # any code point that UTF-8 can carry, NUL and emoji too
        st.sampled_from(["😀", "🏽", "\x00", "{", "}", "%", "&", "=", "+", " "]),
    ),
    max_size=60,
)
raw_bytes = st.binary(max_size=40).map(lambda data: "".join(f"%{b:02X}" for b in data))
escapes = st.lists(st.sampled_from(ESCAPES), min_size=1, max_size=6).map("".join)
long_values = st.tuples(
    st.sampled_from(["9", "x", "%F0%9F%98%80", "%ED%A0%80"]), st.integers(500, 1500)
).map(lambda pair: pair[0] * (pair[1] // len(pair[0])))
encoded_values = st.one_of(
    st.sampled_from(KNOWN).map(lambda v: quote(v, safe="")),
    texts.map(lambda v: quote(v, safe="")),
    raw_bytes,
    escapes,
    long_values,
)


@st.composite
def query_strings(draw: st.DrawFn, *, max_length: int = 6000) -> str:
    parts: list[str] = list(draw(IDENTITIES))
    if draw(st.booleans()):
        parts.append(f"goal={draw(st.sampled_from(['reg', 'dep', 'redep', 'rebill', 'level10']))}")
    for _ in range(draw(st.integers(0, 8))):
        name = quote(draw(names), safe="") if draw(st.booleans()) else draw(raw_bytes)
        shape = draw(st.sampled_from(["pair", "pair", "pair", "bare", "empty", "double="]))
        if shape == "pair":
            parts.append(f"{name}={draw(encoded_values)}")
        elif shape == "bare":
            parts.append(name)
        elif shape == "empty":
            parts.append(f"{name}=")
        else:
            parts.append(f"{name}={draw(encoded_values)}={draw(encoded_values)}")
        if draw(st.booleans()) and parts:
            parts.append(parts[-1])  # a repeated parameter
    query = draw(st.sampled_from(["&", "&&", "+&"])).join(parts)
    return query[:max_length].rstrip("%0123456789ABCDEF") if len(query) > max_length else query


# -- bodies ------------------------------------------------------------------------------

huge_texts = st.tuples(
    st.sampled_from(["9", "x", "😀", "\x00", "\ud800"]), st.integers(0, 20_000)
).map(lambda pair: pair[0] * pair[1])
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(KNOWN),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    obj = draw(st.dictionaries(names, json_values, max_size=8))
    if draw(st.booleans()):
        obj[draw(st.sampled_from(NAMES))] = draw(huge_texts)
    # The standard library writes lone surrogates as \\ud800 escapes (and NaN as NaN):
    # JSON that orjson refuses, which must be answered as any other bad body.
    if draw(st.booleans()):
        obj["sum"] = draw(st.sampled_from([float("nan"), float("inf"), 1e300, 10**30]))
    return json.dumps(obj).encode()


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    body = draw(query_strings(max_length=20_000))
    if draw(st.booleans()):
        value = quote(draw(huge_texts), safe="", errors="surrogatepass")
        body += f"&{draw(st.sampled_from(NAMES))}={value}"
    return body.encode()


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """Forms as PHP's curl sends them, with broken boundaries, headers, charsets mixed in."""
    boundary = draw(st.sampled_from(["XyZ", "----b0und", "a b", "\u00e9", ""]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([*NAMES, "", '"', "x\u00e9"]))
        headers = f'Content-Disposition: form-data; name="{name}"'
        if draw(st.booleans()):
            headers += draw(st.sampled_from(['; filename="f.txt"', "; name=other", ";;"]))
        if draw(st.booleans()):
            charset = draw(st.sampled_from(["utf-8", "latin-1", "no-such", "utf-16"]))
            headers += f"\r\nContent-Type: text/plain; charset={charset}"
        value = draw(st.one_of(st.sampled_from(KNOWN), texts)).encode("utf-8", "replace")
        parts.append(f"--{boundary}\r\n{headers}\r\n\r\n".encode("utf-8", "replace") + value)
    body = b"\r\n".join(parts) + (b"\r\n" if parts else b"")
    if draw(st.booleans()):
        body += f"--{boundary}--\r\n".encode("utf-8", "replace")
    body += draw(st.binary(max_size=40))
    return f"multipart/form-data; boundary={boundary}", body


bodies = st.one_of(
    multipart_bodies(),
    json_bodies().map(lambda body: ("application/json", body)),
    st.binary(max_size=300).map(lambda body: ("application/json", body)),  # mostly invalid JSON
    form_bodies().map(lambda body: ("application/x-www-form-urlencoded", body)),
    st.binary(max_size=300).map(lambda body: ("application/x-www-form-urlencoded", body)),
    st.tuples(
        st.sampled_from(["text/plain", "multipart/form-data", "application/json; charset=latin-1"]),
        st.binary(max_size=200),
    ),
)


async def check(client: Client, method: str, path: str, query: str, **kwargs: Any) -> None:
    url = URL.build(path=path, query_string=query, encoded=True)
    async with client.request(method, url, **kwargs) as response:
        raw = await response.read()
        assert response.status < 500, (response.status, raw[:500])
        assert response.content_type == "application/json", (response.status, raw[:500])
        body = orjson.loads(raw)
        assert isinstance(body, dict)


@FUZZ_SETTINGS
@given(path=st.sampled_from(PATHS), method=st.sampled_from(["GET", "POST"]), query=query_strings())
async def test_any_query_string_gets_a_json_answer(
    client: Client, world: World, path: str, method: str, query: str
) -> None:
    await check(client, method, path, query)


@FUZZ_SETTINGS
@given(path=st.sampled_from(PATHS), query=query_strings(max_length=2000), body=bodies)
async def test_any_post_body_gets_a_json_answer(
    client: Client, world: World, path: str, query: str, body: tuple[str, bytes]
) -> None:
    content_type, data = body
    await check(client, "POST", path, query, data=data, headers={"Content-Type": content_type})
