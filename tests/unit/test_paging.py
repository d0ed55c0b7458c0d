"""Page tokens: opaque, URL-safe, bound to the query they continue; anything
else is INVALID_ARGUMENT on `page_token`, never a crash."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memoryd.domain import paging
from memoryd.domain.errors import InvalidArgument

FP = paging.fingerprint("keys", "org_1", "", "", False)
POSITION = ("2026-01-01T00:00:00.123456+00:00", "key_abc")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _refused(token: str, fp: str = FP) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        paging.decode_keyset(token, fp)
    assert [v.field for v in info.value.violations] == ["page_token"]
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value


def test_a_keyset_position_round_trips() -> None:
    token = paging.encode_keyset(FP, POSITION)
    assert token and set(token) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert paging.decode_keyset(token, FP) == POSITION


def test_no_position_is_no_token_and_back() -> None:
    assert paging.encode_keyset(FP, None) == ""
    assert paging.decode_keyset("", FP) is None
    assert paging.decode_token("", FP) is None


def test_an_offset_position_round_trips() -> None:
    assert paging.decode_token(paging.encode_token(FP, 150), FP) == 150


def test_fingerprints_differ_by_every_parameter() -> None:
    prints = {
        paging.fingerprint("keys", "org_1", "", "", False),
        paging.fingerprint("keys", "org_2", "", "", False),
        paging.fingerprint("keys", "org_1", "prj", "", False),
        paging.fingerprint("keys", "org_1", "", "env", False),
        paging.fingerprint("keys", "org_1", "", "", True),
        paging.fingerprint("projects", "org_1"),
    }
    assert len(prints) == 6
    assert paging.fingerprint("a", {"x": 1, "y": 2}) == paging.fingerprint("a", {"y": 2, "x": 1})


def test_a_token_of_another_query_is_refused() -> None:
    token = paging.encode_keyset(FP, POSITION)
    err = _refused(token, paging.fingerprint("keys", "org_1", "prj_x", "", False))
    assert "different query" in err.message


@pytest.mark.parametrize(
    "token",
    [
        "x",
        "!!!!",
        "====",
        "\x00",
        "é",
        _b64(b"not json"),
        _b64(b"[]"),
        _b64(b"null"),
        _b64(b'{"q": "%s"}' % FP.encode()),
        _b64(b"\xff\xfe\xfd"),
        _b64(json.dumps({"q": FP, "p": 5}).encode()),
        _b64(json.dumps({"q": FP, "p": ["yesterday", "key"]}).encode()),
        _b64(json.dumps({"q": FP, "p": [POSITION[0]]}).encode()),
        _b64(json.dumps({"q": FP, "p": [POSITION[0], 7]}).encode()),
        _b64(b"[" * 100_000),  # deep nesting must not crash the decoder
        "A" * 100_000,
    ],
)
def test_garbled_tokens_are_refused(token: str) -> None:
    err = _refused(token)
    assert "page_token" in err.message


def test_a_truncated_token_is_refused() -> None:
    token = paging.encode_keyset(FP, POSITION)
    for cut in (1, 5, len(token) // 2):
        _refused(token[:-cut])


@given(st.text(max_size=300))
def test_no_token_crashes_the_decoder(token: str) -> None:
    try:
        paging.decode_keyset(token, FP)
    except InvalidArgument as err:
        assert err.violations[0].field == "page_token"


@pytest.mark.parametrize(
    ("asked", "got"),
    [(0, paging.DEFAULT_PAGE_SIZE), (1, 1), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)],
)
def test_page_size(asked: int, got: int) -> None:
    assert paging.page_size(asked) == got


def test_a_negative_page_size_is_refused() -> None:
    with pytest.raises(InvalidArgument) as info:
        paging.page_size(-1)
    assert info.value.violations[0].field == "page_size"
