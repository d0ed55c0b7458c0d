"""The name rule and the audit escaping (memoryd.domain.text)."""

from __future__ import annotations

import pytest

from memoryd.domain.text import escaped, has_unprintable


@pytest.mark.parametrize(
    "ch",
    ["\x00", "\t", "\n", "\x1b", "\x7f", "\x85", "\x9f", "\u200b", "\u202e", "\u2028", "\ue000"],
)
def test_control_format_and_private_characters_are_unprintable(ch: str) -> None:
    assert has_unprintable(f"a{ch}b")


@pytest.mark.parametrize("text", ["", "plain", "Équipe", "チーム 🚀", "a\u00a0b", "q'\"\\"])
def test_text_of_any_script_and_spaces_are_printable(text: str) -> None:
    assert not has_unprintable(text)


def test_escaped_text_is_one_printable_line_that_cannot_forge_an_escape() -> None:
    assert escaped("a\nb\x00\u202e\U000e0001", 100) == "a\\x0ab\\x00\\u202e\\U000e0001"
    # a literal backslash sequence stays distinguishable from an escaped character
    assert escaped("a\\x0ab", 100) == "a\\\\x0ab"
    assert escaped("a\\x0ab", 100) != escaped("a\nb", 100)
    assert escaped("Équipe 🚀", 100) == "Équipe 🚀"


def test_escaped_text_is_bounded() -> None:
    out = escaped("\n" * 100, 10)
    assert len(out) == 10 and out.endswith("…")
    assert escaped("x" * 10, 10) == "x" * 10
