"""Opaque page tokens, bound to the query they continue.

A token is base64url JSON of the position plus a fingerprint of the query's
parameters; a token used with other parameters, or garbled, is refused with
INVALID_ARGUMENT on `page_token`. Tokens carry no secret: whatever a client
puts in one, the tenant conditions still apply.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from typing import Any

from memoryd.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LEN = 2048


def fingerprint(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_token(query_fp: str, position: Any) -> str:
    raw = json.dumps({"q": query_fp, "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, query_fp: str) -> Any:
    """The position in `token`, or None for an empty token."""
    if not token:
        return None
    try:
        if len(token) > MAX_TOKEN_LEN:  # ours are a few hundred characters
            raise ValueError
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, dict) or "p" not in data:
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise InvalidArgument.field(
            "page_token", "is not a token this server issued; pass next_page_token unchanged"
        ) from None
    if data.get("q") != query_fp:
        raise InvalidArgument.field(
            "page_token",
            "was issued for a different query; keep the other parameters unchanged while paging",
        )
    return data["p"]


def page_size(value: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if value == 0:
        return default
    return min(value, maximum)


def decode_keyset(token: str, query_fp: str) -> tuple[str, str] | None:
    """A (ISO time, id) keyset position from `token`, or None when empty."""
    raw = decode_token(token, query_fp)
    if raw is None:
        return None
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw):
        try:
            datetime.fromisoformat(raw[0])
        except ValueError:
            pass
        else:
            return (raw[0], raw[1])
    raise InvalidArgument.field("page_token", "is not a token this server issued")


def encode_keyset(query_fp: str, position: tuple[str, str] | None) -> str:
    return encode_token(query_fp, list(position)) if position else ""
