"""The API key format: prefix by kind, public key id, secret, checksum.

A mistyped key must be refused by `parse_key` alone (no storage access), with
a message that helps and never repeats what was sent.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memoryd.domain.errors import Unauthenticated
from memoryd.domain.key_format import (
    BASE62,
    CHECKSUM_LEN,
    KEY_ID_LEN,
    KINDS,
    SECRET_LEN,
    format_key,
    key_id_of,
    new_key_id,
    new_secret,
    parse_key,
)

KEY_ID = "abc123def456"
SECRET = "S3cretS3cretS3cretS3cretS3cret12"


def _key(kind: str = "live") -> str:
    return format_key(kind, KEY_ID, SECRET)


@pytest.mark.parametrize("kind", KINDS)
def test_a_formatted_key_parses_back_to_its_parts(kind: str) -> None:
    raw = _key(kind)
    assert raw.startswith(f"ms_{kind}_{KEY_ID}")
    assert len(raw) == len(f"ms_{kind}_") + KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN
    parsed = parse_key(raw)
    assert (parsed.kind, parsed.key_id, parsed.secret) == (kind, KEY_ID, SECRET)
    assert parsed.prefix == f"ms_{kind}_{KEY_ID}"


def test_new_keys_are_random_and_well_formed() -> None:
    keys = {format_key("test", new_key_id(), new_secret()) for _ in range(50)}
    assert len(keys) == 50
    for raw in keys:
        assert parse_key(raw).kind == "test"


@pytest.mark.parametrize(
    "raw",
    [
        f"  {_key()}",
        f"{_key()}\n",
        f"\t{_key()}",
        f"\xa0{_key()}",
        f"{_key()}\xa0",
        f"{_key()}\u3000",
        f"\ufeff{_key()}",
        f"{_key()}\x00",
    ],
    ids=["spaces", "newline", "tab", "nbsp", "trailing-nbsp", "ideographic-space", "bom", "nul"],
)
def test_only_the_canonical_spelling_parses(raw: str) -> None:
    """No normalisation: one key, one spelling (a variant must not be a cache miss)."""
    assert _refused(raw).reason == "API_KEY_MALFORMED"


def test_a_very_long_input_is_refused_as_malformed() -> None:
    assert _refused(_key() + "A" * 100_000).reason == "API_KEY_MALFORMED"


def test_parsed_key_repr_hides_the_secret() -> None:
    parsed = parse_key(_key())
    assert SECRET not in repr(parsed)
    assert KEY_ID in repr(parsed)


def test_format_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError):
        format_key("prod", KEY_ID, SECRET)


def _refused(raw: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        parse_key(raw)
    err = info.value
    assert err.code == "UNAUTHENTICATED"
    assert "x-api-key" in err.message  # says what to do
    body = raw.strip()[len("ms_live_") :]
    if len(body) >= 8:
        assert body not in err.message
    return err


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ms",
        "ms_live",
        "sk_live_" + "a" * 50,
        "ms_prod_" + "a" * 50,
        "MS_LIVE_" + "a" * 50,
        "Bearer " + "x" * 50,
        "ms-live-" + "a" * 50,
    ],
)
def test_a_wrong_prefix_is_refused_as_malformed(raw: str) -> None:
    err = _refused(raw)
    assert err.reason == "API_KEY_MALFORMED"
    assert "ms_live_" in err.message


def test_a_truncated_key_is_refused_as_malformed() -> None:
    raw = _key()
    for cut in (1, CHECKSUM_LEN, CHECKSUM_LEN + 1, 20):
        err = _refused(raw[:-cut])
        assert err.reason == "API_KEY_MALFORMED"
        assert "cut off" in err.message


def test_a_key_with_extra_characters_is_refused() -> None:
    assert _refused(_key() + "A").reason == "API_KEY_MALFORMED"


@pytest.mark.parametrize(
    "position", [0, KEY_ID_LEN - 1, KEY_ID_LEN, KEY_ID_LEN + SECRET_LEN - 1, -1]
)
@pytest.mark.parametrize("bad_char", ["_", "-", "!", "é", " ", "/"])
def test_characters_outside_the_alphabet_are_refused(position: int, bad_char: str) -> None:
    raw = _key()
    head = len("ms_live_")
    body = list(raw[head:])
    body[position] = bad_char
    assert _refused(raw[:head] + "".join(body)).reason == "API_KEY_MALFORMED"


def test_an_uppercase_key_id_is_refused() -> None:
    raw = format_key("live", KEY_ID.upper(), SECRET)
    assert _refused(raw).reason == "API_KEY_MALFORMED"


@pytest.mark.parametrize("kind", KINDS)
def test_every_single_character_typo_fails_the_checksum(kind: str) -> None:
    raw = _key(kind)
    head = len(f"ms_{kind}_")
    for i in range(head, len(raw)):
        original = raw[i]
        # a neighbour in the alphabet: the typo a person makes
        alphabet = BASE62 if i >= head + KEY_ID_LEN else "0123456789abcdefghijklmnopqrstuvwxyz"
        typo = alphabet[(alphabet.index(original) + 1) % len(alphabet)]
        mistyped = raw[:i] + typo + raw[i + 1 :]
        err = _refused(mistyped)
        assert err.reason == "API_KEY_CHECKSUM", (i, mistyped)
        assert "checksum" in err.message


def test_a_key_of_another_kind_with_the_same_body_fails_the_checksum() -> None:
    raw = _key("test")
    swapped = "ms_live_" + raw[len("ms_test_") :]
    assert _refused(swapped).reason == "API_KEY_CHECKSUM"


def test_two_swapped_characters_fail_the_checksum() -> None:
    raw = _key()
    i = len("ms_live_") + KEY_ID_LEN + 3
    assert raw[i] != raw[i + 1]
    swapped = raw[:i] + raw[i + 1] + raw[i] + raw[i + 2 :]
    assert _refused(swapped).reason == "API_KEY_CHECKSUM"


@given(
    st.sampled_from(KINDS),
    st.text(alphabet=BASE62 + "_-.é", min_size=10, max_size=70),
)
def test_parse_never_echoes_what_was_sent(kind: str, body: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        parse_key(f"ms_{kind}_{body}")
    assert body not in info.value.message


# --- key_id_of: the format alone, for the verified-key cache's look-up ---------------------

_KEYISH = st.one_of(
    # near-keys: a real key with one character changed, added or removed
    st.tuples(st.sampled_from(KINDS), st.integers(0, 56), st.characters()).map(
        lambda t: (lambda k: k[: t[1]] + t[2] + k[t[1] + 1 :])(_key(t[0]))
    ),
    st.tuples(st.sampled_from(KINDS), st.integers(0, 57), st.characters()).map(
        lambda t: (lambda k: k[: t[1]] + t[2] + k[t[1] :])(_key(t[0]))
    ),
    st.tuples(st.sampled_from(KINDS), st.integers(0, 56)).map(
        lambda t: (lambda k: k[: t[1]] + k[t[1] + 1 :])(_key(t[0]))
    ),
    st.text(max_size=80),
)


@given(_KEYISH)
def test_key_id_of_accepts_exactly_the_format_parse_key_accepts(raw: str) -> None:
    """The one-pattern check agrees with `parse_key`'s format checks on
    every input: it differs only in leaving the checksum to a cache miss."""
    try:
        parsed = parse_key(raw)
    except Unauthenticated as err:
        if err.reason == "API_KEY_CHECKSUM":  # the format holds
            assert key_id_of(raw) == raw.split("_", 2)[2][:KEY_ID_LEN]
        else:
            with pytest.raises(Unauthenticated) as again:
                key_id_of(raw)
            assert again.value.reason == err.reason
    else:
        assert key_id_of(raw) == parsed.key_id


@pytest.mark.parametrize("kind", KINDS)
def test_key_id_of_leaves_the_checksum_alone(kind: str) -> None:
    typo = _key(kind)[:-1] + ("A" if _key(kind)[-1] != "A" else "B")
    assert key_id_of(typo) == KEY_ID
    assert _refused(typo).reason == "API_KEY_CHECKSUM"
