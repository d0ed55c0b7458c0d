"""Standard Webhooks signatures (https://www.standardwebhooks.com).

A secret is `whsec_` + base64 of random bytes; the signing key is those
bytes. A delivery is signed over `{webhook-id}.{webhook-timestamp}.{body}`
with HMAC-SHA256; `webhook-signature` carries `v1,<base64 signature>`, one
per key that signs, separated by spaces (a rotation's grace period signs
with both the new and the old secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from memoryd.domain.webhooks.model import SigningKeys

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the specification asks for 24 to 64


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not a webhook secret") from None


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of one delivery with one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(keys: SigningKeys, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: the current secret's signature, then
    the previous one's while it still signs."""
    sigs = [signature(keys.current, msg_id, timestamp, body)]
    if keys.previous:
        sigs.append(signature(keys.previous, msg_id, timestamp, body))
    return " ".join(sigs)


def delivery_headers(
    keys: SigningKeys, msg_id: str, timestamp: int, body: bytes
) -> list[tuple[str, str]]:
    """The headers of one attempt (the content type included)."""
    return [
        ("content-type", "application/json"),
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signature_header(keys, msg_id, timestamp, body)),
    ]
