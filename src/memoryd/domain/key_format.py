"""The API key format.

    ms_<kind>_<key id: 12 [a-z0-9]><secret: 32 base62><checksum: 6 base62>

`kind` is `live`, `test` or `dev` (a data key, by environment kind) or `org`.
The key id is public (it names the key in lists and audit events); the secret
is only ever stored as a slow hash (the `SecretHasher` port). The checksum
(CRC32 of everything before it) lets a mistyped key be refused without
touching storage, and lets secret scanners recognise a real key.
"""

from __future__ import annotations

import re
import secrets
import string
import zlib
from dataclasses import dataclass

from memoryd.domain.errors import Unauthenticated

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_ID_ALPHABET = string.digits + string.ascii_lowercase
KEY_ID_LEN = 12
SECRET_LEN = 32
CHECKSUM_LEN = 6
KINDS = ("live", "test", "dev", "org")
_BODY_LEN = KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN
# The longest well-formed key (`ms_live_` / `ms_test_` / `ms_org_`...): a longer
# input is refused before it is split or scanned.
MAX_KEY_LEN = len("ms_live_") + _BODY_LEN
_BASE62_SET = frozenset(BASE62)
_KEY_ID_SET = frozenset(KEY_ID_ALPHABET)
# The same format as `parse_key` checks, as one pattern (ASCII ranges only).
_CANONICAL = re.compile(
    f"ms_(?:{'|'.join(KINDS)})_([0-9a-z]{{{KEY_ID_LEN}}})[0-9A-Za-z]{{{SECRET_LEN + CHECKSUM_LEN}}}"
)


@dataclass(frozen=True)
class ParsedKey:
    """A well-formed key. `secret` is the plaintext secret part: never log it."""

    kind: str
    key_id: str
    secret: str

    @property
    def prefix(self) -> str:
        return display_prefix(self.kind, self.key_id)

    def __repr__(self) -> str:  # keeps the secret out of tracebacks and logs
        return f"ParsedKey(kind={self.kind!r}, key_id={self.key_id!r}, secret=***)"


def display_prefix(kind: str, key_id: str) -> str:
    return f"ms_{kind}_{key_id}"


def new_key_id() -> str:
    return "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LEN))


def new_secret() -> str:
    return "".join(secrets.choice(BASE62) for _ in range(SECRET_LEN))


def _checksum(head: str) -> str:
    n = zlib.crc32(head.encode("ascii"))
    out = []
    for _ in range(CHECKSUM_LEN):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out))


def format_key(kind: str, key_id: str, secret: str) -> str:
    """The plaintext key handed to the client once."""
    if kind not in KINDS:
        raise ValueError(f"unknown key kind {kind!r}")
    head = f"ms_{kind}_{key_id}{secret}"
    return head + _checksum(head)


_HELP = "pass a key made by KeyService.CreateApiKey in the x-api-key header"


def key_id_of(raw: str) -> str:
    """The key id of a key in the one canonical format (`parse_key`'s
    format checks, in one pattern match), its checksum not computed: for a
    look-up in the verified-key cache, where a hit is this very key,
    verified before, checksum included (the authenticator checks it on a
    miss). Refuses any other spelling as `parse_key` does."""
    match = _CANONICAL.fullmatch(raw)
    if match is not None:
        return match.group(1)
    return parse_key(raw).key_id  # raises: the format is wrong, and it says how


def parse_key(raw: str) -> ParsedKey:
    """Checks the format and checksum, without any storage access.

    Strict: only the canonical form is accepted. Surrounding whitespace (space,
    tab, NBSP...), any character outside the key alphabet and any other
    length are refused, never normalised: one key has exactly one spelling,
    so a variant can neither bypass the verified-key cache nor cost a hash.
    Raises Unauthenticated with a message that never contains the input.
    """
    if len(raw) > MAX_KEY_LEN:
        raise Unauthenticated(
            f"malformed API key: wrong length or characters; {_HELP}",
            reason="API_KEY_MALFORMED",
        )
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != "ms" or parts[1] not in KINDS:
        raise Unauthenticated(
            "malformed API key: it must start with ms_live_, ms_test_, ms_dev_ or ms_org_; "
            + _HELP,
            reason="API_KEY_MALFORMED",
        )
    body = parts[2]
    key_id, secret = body[:KEY_ID_LEN], body[KEY_ID_LEN : KEY_ID_LEN + SECRET_LEN]
    if (
        len(body) != _BODY_LEN
        or not _KEY_ID_SET.issuperset(key_id)
        or not _BASE62_SET.issuperset(body[KEY_ID_LEN:])
    ):
        raise Unauthenticated(
            f"malformed API key: wrong length or characters (was it cut off?); {_HELP}",
            reason="API_KEY_MALFORMED",
        )
    if not secrets.compare_digest(_checksum(raw[:-CHECKSUM_LEN]), body[-CHECKSUM_LEN:]):
        raise Unauthenticated(
            f"malformed API key: checksum mismatch (mistyped or truncated?); {_HELP}",
            reason="API_KEY_CHECKSUM",
        )
    return ParsedKey(kind=parts[1], key_id=key_id, secret=secret)
