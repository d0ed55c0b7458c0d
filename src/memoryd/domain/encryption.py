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

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from memoryd.domain.audit import Auditor
from memoryd.domain.clock import Clock
from memoryd.domain.errors import InvalidArgument, Unavailable
from memoryd.domain.tenancy import Caller, Scope

# The KEK of an organization that never attached one.
LOCAL = "local"
AWS_KMS = "aws-kms:"

UNAVAILABLE_REASON = "ENCRYPTION_KEY_UNAVAILABLE"

# (org_id, project_id, environment_id): what a data key belongs to.
EnvRef = tuple[str, str, str]


def context(env: EnvRef) -> str:
    """How a data key's environment is named to its KEK (the KMS encryption
    context, the local key's associated data) and in errors."""
    return f"environment {env[0]}/{env[1]}/{env[2]}"


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


@dataclass(frozen=True)
class KeyStatus:
    """What GetEncryptionKey shows: the organization's KEK and its reach."""

    key: OrgKey
    data_keys: int
    encryption: bool


class EncryptionKeys:
    """AdminService's encryption calls: an organization's KEK reference,
    attached and rotated by rewrapping its data keys (never the content)."""

    def __init__(
        self,
        store: DataKeyStore,
        wrapper: KeyWrapper,
        auditor: Auditor,
        clock: Clock,
        *,
        encryption: bool,
    ) -> None:
        self._store = store
        self._wrapper = wrapper
        self._audit = auditor
        self._clock = clock
        self._encryption = encryption

    async def get(self, caller: Caller) -> KeyStatus:
        p = caller.admin(Scope.ADMIN_READ)
        key = await self._store.org_key(p.org_id)
        count = len(await self._store.org_data_keys(p.org_id))
        return KeyStatus(key, count, self._encryption)

    async def set(self, caller: Caller, kek_ref: str) -> KeyStatus:
        async with self._audit.action(caller, "encryption_key.set", target=kek_ref) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            ref = check_ref("kek_ref", kek_ref.strip())
            old = await self._store.org_key(p.org_id)
            new = OrgKey(p.org_id, ref, old.version + 1, self._clock.now())
            status = await self._rewrap(new)
            ev.details["data_keys"] = str(status.data_keys)
            return status

    async def rotate(self, caller: Caller) -> KeyStatus:
        async with self._audit.action(caller, "encryption_key.rotate") as ev:
            p = caller.admin(Scope.ADMIN_WRITE)
            old = await self._store.org_key(p.org_id)
            ev.target = old.kek_ref
            new = replace(old, version=old.version + 1, update_time=self._clock.now())
            status = await self._rewrap(new)
            ev.details["data_keys"] = str(status.data_keys)
            return status

    async def _rewrap(self, new: OrgKey) -> KeyStatus:
        """Tries `new` (a random key there and back), rewraps every data key
        of its organization with it in one transaction, then records it. A
        crash between the two leaves each data key naming the KEK that
        wrapped it, so every one still opens."""
        probe = os.urandom(32)
        back = await self._wrapper.unwrap(
            new, "a key check", await self._wrapper.wrap(new, "a key check", probe)
        )
        if back != probe:
            raise key_unavailable(f"the key-encryption key {new.kek_ref!r} did not give back a key")
        keys = await self._store.org_data_keys(new.org_id)
        rewrapped = []
        for k in keys:
            clear = await self._wrapper.unwrap(
                OrgKey(new.org_id, k.kek_ref, k.kek_version), context(k.env), k.wrapped
            )
            wrapped = await self._wrapper.wrap(new, context(k.env), clear)
            rewrapped.append(
                replace(k, wrapped=wrapped, kek_ref=new.kek_ref, kek_version=new.version)
            )
        await self._store.rewrap(rewrapped)
        await self._store.set_org_key(new)
        return KeyStatus(new, len(rewrapped), self._encryption)
