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

from memoryd.domain.audit import Auditor
from memoryd.domain.clock import Clock
from memoryd.domain.errors import FailedPrecondition, InvalidArgument, Unavailable
from memoryd.domain.tenancy import Caller, Scope

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


def data_key_context(env: EnvRef) -> str:
    """How a data key's environment is named to its KEK (and in errors)."""
    return f"environment {env[0]}/{env[1]}/{env[2]}"


@dataclass(frozen=True)
class KeyStatus:
    """GetEncryptionKey: the organization's KEK and its data keys."""

    key: OrgKey
    data_keys: int
    stale_data_keys: int
    encryption_enabled: bool


@dataclass(frozen=True)
class Rewrapped:
    """SetEncryptionKey and RotateEncryptionKey: the KEK after the change
    and how many data keys were rewrapped with it."""

    status: KeyStatus
    rewrapped: int


class EncryptionKeys:
    """GetEncryptionKey, SetEncryptionKey, RotateEncryptionKey (org keys).

    A change first proves the new KEK wraps and unwraps (nothing is changed
    when it cannot: UNAVAILABLE), then records it (data keys made from then
    on are wrapped by it), then rewraps every older data key of the
    organization in one transaction: each is unwrapped by the KEK that
    wrapped it and wrapped again by the new one. Content is never touched.
    Data keys still wrapped by an older local version stay readable (every
    version of a local KEK can be derived again); rewrapping is idempotent,
    so a change interrupted half-way is completed by running it again.
    """

    def __init__(
        self,
        store: DataKeyStore,
        wrapper: KeyWrapper,
        auditor: Auditor,
        clock: Clock,
        *,
        encryption_enabled: bool = True,
    ) -> None:
        self._store = store
        self._wrapper = wrapper
        self._audit = auditor
        self._clock = clock
        self._enabled = encryption_enabled

    async def get(self, caller: Caller) -> KeyStatus:
        p = caller.admin(Scope.ADMIN_READ)
        return await self._status(await self._store.org_key(p.org_id))

    async def set(self, caller: Caller, kek_ref: str) -> Rewrapped:
        async with self._audit.action(caller, "encryption_key.set") as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            ref = check_ref("kek_ref", kek_ref)
            ev.details["kek_ref"] = ref
            current = await self._store.org_key(p.org_id)
            return await self._change(
                OrgKey(p.org_id, ref, current.version + 1, self._clock.now()), ev.details
            )

    async def rotate(self, caller: Caller) -> Rewrapped:
        async with self._audit.action(caller, "encryption_key.rotate") as ev:
            p = caller.admin(Scope.ADMIN_WRITE)
            current = await self._store.org_key(p.org_id)
            ev.details["kek_ref"] = current.kek_ref
            return await self._change(
                OrgKey(p.org_id, current.kek_ref, current.version + 1, self._clock.now()),
                ev.details,
            )

    async def _change(self, new: OrgKey, details: dict[str, str]) -> Rewrapped:
        probe = f"organization {new.org_id} key check"
        secret = b"\0" * 32
        if await self._wrapper.unwrap(new, probe, await self._wrapper.wrap(new, probe, secret)) != (
            secret
        ):
            raise key_unavailable(f"the key-encryption key {new.kek_ref!r} does not round-trip")
        await self._store.set_org_key(new)
        rewrapped = []
        for key in await self._store.org_data_keys(new.org_id):
            if (key.kek_ref, key.kek_version) == (new.kek_ref, new.version):
                continue
            name = data_key_context(key.env)
            old = OrgKey(new.org_id, key.kek_ref, key.kek_version)
            clear = await self._wrapper.unwrap(old, name, key.wrapped)
            wrapped = await self._wrapper.wrap(new, name, clear)
            rewrapped.append(WrappedKey(key.env, key.key_id, wrapped, new.kek_ref, new.version))
        await self._store.rewrap(rewrapped)
        details["version"] = str(new.version)
        details["rewrapped_data_keys"] = str(len(rewrapped))
        return Rewrapped(await self._status(new), len(rewrapped))

    async def _status(self, key: OrgKey) -> KeyStatus:
        keys = await self._store.org_data_keys(key.org_id)
        stale = sum((k.kek_ref, k.kek_version) != (key.kek_ref, key.version) for k in keys)
        return KeyStatus(key, len(keys), stale, self._enabled)
