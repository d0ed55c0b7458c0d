"""Identifiers. Random, URL-safe, with a type prefix for people."""

from __future__ import annotations

import secrets
import uuid

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_org_id() -> str:
    return "org_" + _random(16)


def new_project_id() -> str:
    return "prj_" + _random(16)


def new_environment_id() -> str:
    return "env_" + _random(16)


def new_audit_id() -> str:
    return "aud_" + _random(20)


def new_webhook_id() -> str:
    return "whk_" + _random(20)


def new_delivery_id() -> str:
    """A webhook delivery's id, sent as its `webhook-id` header (made in
    bulk by the fan-out: one random draw, not one per character)."""
    n = secrets.randbits(124)
    out = []
    for _ in range(24):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "msg_" + "".join(out)


def new_memory_id() -> str:
    return str(uuid.uuid4())


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
