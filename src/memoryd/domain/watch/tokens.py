"""Resume tokens of WatchMemories: a change-log position, opaque.

A token is base64url of: a version byte, a nonce, the position encrypted
with a pad derived from the nonce (HMAC-SHA256 as a PRF), and a tag
(HMAC-SHA256, truncated) over all of that and the environment the token
was issued for. The nonce is itself a PRF of (environment, position): the
token of a position is the same for every watcher of an environment (so a
server builds each event once for all of them), and tokens of different
positions share nothing. The key is the change log's own secret
(`LogHead`), made once per database.

So a token read back verifies only on the server's log that issued it and
for the same environment: another server's token, another environment's,
a forged or altered one is refused (INVALID_ARGUMENT). And a token says
nothing to its holder: positions count every tenant's events, so two plain
positions would tell how many changes other tenants made in between;
encrypted, they do not (a holder learns only whether two tokens are the
same position, which it knows anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict

from memoryd.domain.errors import InvalidArgument

VERSION = 1
MAX_TOKEN_CHARS = 200
_NONCE = 8
_SEQ = 8
_TAG = 12
_SIZE = 1 + _NONCE + _SEQ + _TAG
_FIELD = "resume_token"


class ResumeTokens:
    """Issues and reads the tokens of one change log (`secret`: its key)."""

    # tokens issued lately, kept: every watcher of an environment asks for
    # the same ones
    RECENT = 4096

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._key = hashlib.sha256(b"memoryd resume token\0" + secret.encode()).digest()
        self._recent: OrderedDict[tuple[str, int], str] = OrderedDict()

    def issue(self, environment_key: str, seq: int) -> str:
        """The token of position `seq` for the environment `environment_key`
        (`Tenant.key`)."""
        token = self._recent.get((environment_key, seq))
        if token is None:
            token = self._seal(environment_key, seq)
            self._recent[(environment_key, seq)] = token
            if len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)
        return token

    def _seal(self, environment_key: str, seq: int) -> str:
        where = environment_key.encode() + b"\0" + seq.to_bytes(_SEQ, "big")
        nonce = hmac.new(self._key, b"nonce\0" + where, hashlib.sha256).digest()[:_NONCE]
        body = bytes([VERSION]) + nonce + _xor(seq.to_bytes(_SEQ, "big"), self._pad(nonce))
        token = body + self._tag(body, environment_key)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def read(self, environment_key: str, token: str) -> int:
        """The position of `token`; InvalidArgument when it was not issued
        by this log for this environment."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument.field(_FIELD, f"is longer than {MAX_TOKEN_CHARS} characters")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        body, tag = raw[:-_TAG], raw[-_TAG:]
        if (
            len(raw) != _SIZE
            or raw[0] != VERSION
            or not hmac.compare_digest(tag, self._tag(body, environment_key))
        ):
            raise InvalidArgument.field(
                _FIELD,
                "is not a token this server issued for this environment; pass the "
                "resume_token of an event received from WatchMemories with a key of the same "
                "environment, or omit it to watch from now",
            )
        nonce, sealed = body[1 : 1 + _NONCE], body[1 + _NONCE :]
        return int.from_bytes(_xor(sealed, self._pad(nonce)), "big")

    def _pad(self, nonce: bytes) -> bytes:
        return hmac.new(self._key, b"pad\0" + nonce, hashlib.sha256).digest()[:_SEQ]

    def _tag(self, body: bytes, environment_key: str) -> bytes:
        message = b"tag\0" + body + environment_key.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))
