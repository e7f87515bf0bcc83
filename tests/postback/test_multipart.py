"""The multipart/form-data reader of partner bodies: fields, file parts, and refusals."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from postback.multipart import MAX_PART_HEAD, MAX_PARTS, MultipartError, multipart_fields

CT = "multipart/form-data; boundary=XyZ"


def form(*parts: bytes, boundary: bytes = b"XyZ", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


def field(name: str, value: str, extra: str = "") -> bytes:
    head = f'Content-Disposition: form-data; name="{name}"{extra}\r\n\r\n'
    return head.encode() + value.encode()


def test_fields_in_order_and_repeats_kept() -> None:
    body = form(
        field("clickid", "ABC"), field("goal", "dep"), field("sum", "1.5"), field("sum", "2")
    )
    assert multipart_fields(CT, body) == [
        ("clickid", "ABC"),
        ("goal", "dep"),
        ("sum", "1.5"),
        ("sum", "2"),
    ]


def test_what_browsers_and_curl_send() -> None:
    boundary = "------------------------d74496d66958873e"
    body = (
        f"--{boundary}\r\n"
        'content-disposition: form-data; name="clickid"\r\n'
        "\r\n"
        "C-1\r\n"
        f"--{boundary}\r\n"
        "Content-Disposition: form-data; name=goal\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "caf\u00e9\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    fields = multipart_fields(f'multipart/form-data; boundary="{boundary}"', body)
    assert fields == [("clickid", "C-1"), ("goal", "caf\u00e9")]


def test_preamble_epilogue_padding_and_an_empty_form() -> None:
    body = b"preamble\r\n" + form(field("a", "1")) + b"epilogue --XyZ"
    assert multipart_fields(CT, body.replace(b"--XyZ\r\n", b"--XyZ \t\r\n", 1)) == [("a", "1")]
    assert multipart_fields(CT, b"--XyZ--\r\n") == []
    assert multipart_fields("Multipart/Form-Data; BOUNDARY=XyZ", form(field("a", ""))) == [
        ("a", "")
    ]


def test_values_keep_their_lines_and_bytes() -> None:
    assert multipart_fields(CT, form(field("a", "line 1\r\nline 2\r\n"))) == [
        ("a", "line 1\r\nline 2\r\n")
    ]
    latin = b'Content-Disposition: form-data; name="a"\r\nContent-Type: text/plain; charset=latin-1'
    assert multipart_fields(CT, form(latin + b"\r\n\r\ncaf\xe9")) == [("a", "caf\u00e9")]
    escaped = b'Content-Disposition: form-data; name="a \\"b\\""\r\n\r\nv'
    assert multipart_fields(CT, form(escaped)) == [('a "b"', "v")]


def test_file_parts_and_parts_without_a_name_are_no_fields() -> None:
    body = form(
        field("sum", "999", '; filename="sum.txt"'),
        field("sum", "998", "; filename*=UTF-8''s.txt"),
        b'Content-Disposition: form-data; name="x"\r\nContent-Type: multipart/mixed\r\n\r\n',
        b"Content-Disposition: form-data\r\n\r\nnameless",
        b'Content-Disposition: attachment; name="y"\r\n\r\nnot form-data',
        b"\r\nno headers at all",
        field("sum", "7.25"),
    )
    assert multipart_fields(CT, body) == [("sum", "7.25")]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", form(field("a", "1"))),
        ('multipart/form-data; boundary=""', form(field("a", "1"))),
        ("multipart/form-data; boundary=" + "b" * 71, form(field("a", "1"), boundary=b"b" * 71)),
        (CT, b"no boundary in it"),
        (CT, b""),
        (CT, form(field("a", "1"), close=False)),  # cut off
        (CT, form(field("a", "1")).replace(b"--XyZ\r\n", b"--XyZjunk\r\n", 1)),
        (CT, form(b"Content-Disposition: form-data;\r\n name=a\r\n\r\n1")),  # continued
        (CT, form(b"no colon\r\n\r\n1")),
        (CT, form(field("a", "1", "\r\nContent-Type: text/plain; charset=no-such"))),
        (CT, form(field("a", "1", "\r\nContent-Type: text/plain; charset=hex"))),
        (CT, form(field("a", "1", "; x=" + "y" * MAX_PART_HEAD))),
        (CT, form(b"Content-Disposition: form-data; name=a")),  # headers never end
        (CT, b"--XyZ--\r\n" + form(field("a", "1"))),  # closed before its parts
    ],
    ids=[
        "no-boundary-parameter",
        "empty-boundary",
        "boundary-over-70",
        "no-boundary-in-body",
        "empty-body",
        "no-closing-boundary",
        "text-after-a-boundary",
        "continued-header",
        "header-without-colon",
        "unknown-charset",
        "no-text-encoding",
        "headers-too-long",
        "unended-headers",
        "closed-first",
    ],
)
def test_what_is_no_form_is_refused(content_type: str, body: bytes) -> None:
    with pytest.raises(MultipartError):
        multipart_fields(content_type, body)


def test_at_most_max_parts() -> None:
    parts = [field(f"f{i}", str(i)) for i in range(MAX_PARTS)]
    assert len(multipart_fields(CT, form(*parts))) == MAX_PARTS
    with pytest.raises(MultipartError, match="parts"):
        multipart_fields(CT, form(*parts, field("one", "more")))


@pytest.mark.parametrize(
    "body",
    [
        # Inputs that sent the standard library's email parser into RecursionError, or
        # into seconds of work per request: each is refused by a bound, at once.
        form(b'Content-Disposition: form-data; name="goal" ' + b"(" * 2000 + b"\r\n\r\nreg"),
        form(b"Content-Disposition: form-data; name=a" + b'";' * 16_000 + b"\r\n\r\n1"),
        b"--XyZ\r\n\r\n\r\n" * 110_000 + b"--XyZ--\r\n",
        form(*[b"Content-Type: multipart/mixed; boundary=XyZ\r\n\r\n"] * 1200),
    ],
    ids=["nested-comments", "quadratic-parameters", "a-megabyte-of-parts", "nested-multiparts"],
)
def test_hostile_forms_are_refused_by_a_bound(body: bytes) -> None:
    with pytest.raises(MultipartError):
        multipart_fields(CT, body)


names = st.text(st.characters(blacklist_characters='"\\\r\n', codec="utf-8"), min_size=1)
values = st.text(st.characters(codec="utf-8"))


@given(st.lists(st.tuples(names, values), max_size=MAX_PARTS))
def test_what_a_form_writes_comes_back(fields: list[tuple[str, str]]) -> None:
    boundary = "----b0und4ry"
    body = form(*(field(name, value) for name, value in fields), boundary=boundary.encode())
    delimiter = f"--{boundary}"  # a writer picks a boundary that no value holds
    assume(not any(f"\r\n{delimiter}" in v or v.startswith(delimiter) for _, v in fields))
    assert multipart_fields(f"multipart/form-data; boundary={boundary}", body) == fields


@given(st.text(max_size=80), st.binary(max_size=400))
def test_anything_is_fields_or_a_refusal(content_type: str, body: bytes) -> None:
    for chosen in (content_type, CT):
        try:
            fields = multipart_fields(chosen, body)
        except MultipartError:
            continue
        assert all(isinstance(name, str) and isinstance(text, str) for name, text in fields)
