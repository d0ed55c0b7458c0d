"""Parts of an API key's plaintext (see memoryd.domain.key_format for the format)."""

from __future__ import annotations


def secret_of(raw: str) -> str:
    """The 32 secret characters before the 6 of the checksum."""
    return raw[-38:-6]
