"""Encryption at rest: the ports and the organization's key-encryption key.

Content (memory text and its revisions, stored conversation messages,
document text, operation payloads and results, change events, webhook
payloads, cached responses) is sealed with a data key of its environment
(AES-GCM). Each data key is kept only wrapped by the organization's
key-encryption key (KEK), which never leaves its provider: a local key file
(per-organization keys derived from it) or a KMS. Rotating an
organization's KEK rewraps its data keys; the content is not touched.
Erasing an environment deletes its data key, which makes every copy of its
sealed content (a backup, a write-ahead log) unreadable.

What stays in clear: ids, metadata and tags (filters match them), times,
the vectors (they leak meaning) and the keyword vectors (hashed words).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from memoryd.domain.errors import FailedPrecondition, InvalidArgument, Unavailable

# The KEK of an organization that never attached one.
LOCAL = "local"
AWS_KMS = "aws-kms:"

UNAVAILABLE_REASON = "ENCRYPTION_KEY_UNAVAILABLE"

# (org_id, project_id, environment_id): what a data key belongs to.
EnvRef = tuple[str, str, str]


def key_unavailable(message: str) -> Unavailable:
    """The error of every call that needs a key it cannot get: never the
    content in clear, never INTERNAL."""
    return Unavailable(message, reason=UNAVAILABLE_REASON)


def check_ref(field: str, ref: str) -> str:
    """`ref` when it names a KEK this server knows how to reach."""
    if ref == LOCAL:
        return ref
    if ref.startswith(AWS_KMS) and len(ref) > len(AWS_KMS) and len(ref) <= 2048:
        return ref
    raise InvalidArgument.field(
        field, "is 'local' or 'aws-kms:<key id, ARN or alias>' (e.g. aws-kms:alias/memoryd)"
    )


@dataclass(frozen=True)
class OrgKey:
    """The KEK an organization's data keys are wrapped with: its reference
    (`local` or `aws-kms:<key>`) and version (rotations so far + 1)."""

    org_id: str
    kek_ref: str = LOCAL
    version: int = 1
    update_time: datetime | None = None


@dataclass(frozen=True)
class WrappedKey:
    """A data key as stored: only ever wrapped."""

    env: EnvRef
    key_id: str
    wrapped: bytes
    kek_ref: str
    kek_version: int


class KeyWrapper(Protocol):
    """A provider of key-encryption keys. Raises `Unavailable`
    (ENCRYPTION_KEY_UNAVAILABLE) when the KEK cannot be used: unreachable,
    disabled, deleted, or not the one that wrapped `wrapped`."""

    async def wrap(self, org: OrgKey, context: str, key: bytes) -> bytes: ...

    async def unwrap(self, org: OrgKey, context: str, wrapped: bytes) -> bytes: ...


class DataKeyStore(Protocol):
    """Wrapped data keys and organizations' KEK references, tenant-scoped."""

    async def org_key(self, org_id: str) -> OrgKey: ...

    async def set_org_key(self, key: OrgKey) -> None: ...

    async def data_key(self, env: EnvRef) -> WrappedKey | None: ...

    async def add_data_key(self, key: WrappedKey) -> WrappedKey:
        """Stores `key`, or answers the key another writer stored first."""
        ...

    async def org_data_keys(self, org_id: str) -> Sequence[WrappedKey]: ...

    async def rewrap(self, keys: Sequence[WrappedKey]) -> None:
        """Replaces the wrapped form (and KEK ref/version) of each key, by
        environment and key id, in one transaction."""
        ...

    async def drop_data_keys(self, org_id: str, project_id: str, environment_id: str | None) -> int:
        """Deletes the data keys of an environment (or of every environment
        of a project): crypto-shredding. Answers how many."""
        ...


def wrong_kek(ref: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the key-encryption key {ref!r} could not be used; nothing was changed",
        reason=UNAVAILABLE_REASON,
    )
