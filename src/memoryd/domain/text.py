"""Rules for text that clients send and people later read: names, display
names, and the client strings an audit event records.

A name is shown in consoles, logs and SIEMs, so it must not hold characters
that move, hide or forge what surrounds it: control characters (C0, C1, DEL,
NUL), format characters (bidirectional overrides, zero-width characters),
line and paragraph separators, private-use, surrogate and unassigned code
points. Spaces, including no-break spaces, are fine.
"""

from __future__ import annotations

import unicodedata

_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
UNPRINTABLE_RULE = "must not contain control, format or other non-printable characters"


def unprintable(ch: str) -> bool:
    """Whether the character `ch` is one a name must not hold."""
    return unicodedata.category(ch) in _UNPRINTABLE_CATEGORIES


def has_unprintable(text: str) -> bool:
    """Whether `text` holds a character a name must not hold."""
    return any(unprintable(ch) for ch in text)


def escaped(text: str, limit: int) -> str:
    """`text` made safe to record and show: each unprintable character and the
    backslash written as a Python-style escape (`\\x00`, `\\u202e`, `\\\\`), so
    the result is one printable line and an escape cannot be forged; then cut
    to at most `limit` characters, ending with `…` when cut."""
    out = "".join(_escape(ch) for ch in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if not unprintable(ch):
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
