"""API keys: create, list, get, revoke, rotate, and who-am-i.

Rules: only org keys administer keys, and only within their organization; a
caller cannot grant a scope it does not hold, nor rotate or revoke a key
holding a scope it does not hold; a key it creates or rotates cannot outlive
it; the last active owner (`*`) key of an organization cannot be revoked;
data keys cannot hold admin scopes; the plaintext is returned once and only
a hash is stored.

Every mutation re-reads the calling key from the store and refuses it if it
is revoked or expired: a verification cached on this or another replica
must never let a revoked key mint, rotate or revoke keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from memoryd.domain import paging
from memoryd.domain.audit import Auditor
from memoryd.domain.clock import Clock
from memoryd.domain.control import ApiKeyRecord, ControlStore, KeyQuery
from memoryd.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Violations,
)
from memoryd.domain.key_format import format_key, new_key_id, new_secret
from memoryd.domain.ports import KeyInvalidator, SecretHasher
from memoryd.domain.tenancy import (
    ALL_SCOPES,
    DEFAULT_DATA_SCOPES,
    DEFAULT_ORG_SCOPES,
    ORG_ONLY_SCOPES,
    Caller,
    EnvironmentKind,
    KeyKind,
    Principal,
    Scope,
    scope_grants,
)
from memoryd.domain.text import UNPRINTABLE_RULE, has_unprintable

MAX_GRACE = timedelta(days=30)
MAX_KEY_NAME = 100


@dataclass(frozen=True)
class IssuedKey:
    record: ApiKeyRecord
    plaintext: str

    def __repr__(self) -> str:
        return f"IssuedKey(record={self.record!r}, plaintext=***)"


@dataclass(frozen=True)
class KeyList:
    keys: list[ApiKeyRecord]
    next_page_token: str


def key_state(record: ApiKeyRecord, now: datetime) -> str:
    if record.revoke_time is not None:
        return "revoked"
    if record.expire_time is not None and record.expire_time <= now:
        return "expired"
    return "active"


class KeyManager:
    def __init__(
        self,
        store: ControlStore,
        hasher: SecretHasher,
        auditor: Auditor,
        clock: Clock,
        invalidate: KeyInvalidator,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._audit = auditor
        self._clock = clock
        self._invalidate = invalidate
        self._org_names: dict[str, str] = {}
        # Serialises revocations of owner keys on this replica, so two owner
        # keys revoking each other cannot both pass the last-owner check.
        self._owner_revoke = asyncio.Lock()

    async def create(
        self,
        caller: Caller,
        *,
        project_id: str,
        environment_id: str,
        name: str,
        scopes: Sequence[str],
        expire_time: datetime | None,
    ) -> IssuedKey:
        async with self._audit.action(
            caller, "api_key.create", project_id=project_id, environment_id=environment_id
        ) as ev:
            p, acting = await self._acting(caller)  # inside: refusals are audited too
            now = self._clock.now()
            kind = KeyKind.DATA if project_id else KeyKind.ORG
            chosen = tuple(dict.fromkeys(scopes)) or (
                DEFAULT_DATA_SCOPES if kind is KeyKind.DATA else DEFAULT_ORG_SCOPES
            )
            v = Violations()
            _check_name(v, "name", name)
            if bool(project_id) != bool(environment_id):
                v.add(
                    "environment_id" if project_id else "project_id",
                    "a data key needs both project_id and environment_id; an org key neither",
                )
            _check_scopes(v, kind, chosen)
            expire_time = _bounded_expiry(v, expire_time, acting.expire_time, now)
            v.raise_if_any()
            for scope in chosen:
                if not _holds_all(p, scope):
                    raise PermissionDenied(
                        f"cannot grant the scope '{scope}': the calling key does not hold it",
                        reason="SCOPE_ESCALATION",
                    )
            env_kind = None
            if kind is KeyKind.DATA:
                env_kind = await self._environment_kind(p.org_id, project_id, environment_id)
            key_id = new_key_id()
            secret = new_secret()
            record = ApiKeyRecord(
                id=key_id,
                org_id=p.org_id,
                kind=kind,
                name=name,
                scopes=chosen,
                secret_hash=await self._hasher.hash(secret),
                create_time=now,
                created_by=p.key_id,
                project_id=project_id,
                environment_id=environment_id,
                environment_kind=env_kind,
                expire_time=expire_time,
            )
            ev.target = key_id
            await self._store.create_key(record)
            return IssuedKey(record, format_key(record.prefix_kind, key_id, secret))

    async def _environment_kind(
        self, org_id: str, project_id: str, environment_id: str
    ) -> EnvironmentKind:
        env = await self._store.get_environment(org_id, environment_id)
        if env is None or env.project_id != project_id:
            raise NotFound(
                f"environment {shown(environment_id)} of project {shown(project_id)} not found"
            )
        return env.kind

    async def list(
        self,
        caller: Caller,
        *,
        project_id: str,
        environment_id: str,
        show_revoked: bool,
        page_size: int,
        page_token: str,
    ) -> KeyList:
        p = caller.admin(Scope.KEYS_READ)
        size = paging.page_size(page_size)
        query = KeyQuery(p.org_id, project_id, environment_id, show_revoked)
        fp = paging.fingerprint("keys", p.org_id, project_id, environment_id, show_revoked)
        after = paging.decode_keyset(page_token, fp)
        page = await self._store.list_keys(query, size, after)
        token = paging.encode_keyset(fp, page.next_after)
        return KeyList(page.items, token)

    async def get(self, caller: Caller, key_id: str) -> ApiKeyRecord:
        p = caller.admin(Scope.KEYS_READ)
        return await self._get(p, key_id)

    async def revoke(self, caller: Caller, key_id: str) -> ApiKeyRecord:
        async with self._audit.action(caller, "api_key.revoke", target=key_id) as ev:
            p, _ = await self._acting(caller)  # inside: refusals are audited too
            record = await self._get(p, key_id)
            ev.project_id, ev.environment_id = record.project_id, record.environment_id
            _require_every_scope(p, record, "revoke")
            if record.revoke_time is None:
                if Scope.ALL in record.scopes:
                    async with self._owner_revoke:
                        record = await self._get(p, key_id)  # fresh, under the lock
                        await self._refuse_last_owner(record)
                        record = await self._mark_revoked(record)
                else:
                    record = await self._mark_revoked(record)
            await self._invalidate(key_id)
            return record

    async def _mark_revoked(self, record: ApiKeyRecord) -> ApiKeyRecord:
        if record.revoke_time is None:
            record = replace(record, revoke_time=self._clock.now())
            await self._store.update_key(record)
        return record

    async def _refuse_last_owner(self, record: ApiKeyRecord) -> None:
        """FailedPrecondition when `record` is its organization's last active
        owner key: revoking it would leave the organization unmanageable."""
        now = self._clock.now()
        if key_state(record, now) != "active" or Scope.ALL not in record.scopes:
            return
        query = KeyQuery(record.org_id)
        after: tuple[str, str] | None = None
        while True:
            page = await self._store.list_keys(query, 100, after)
            for other in page.items:
                if (
                    other.id != record.id
                    and other.kind is KeyKind.ORG
                    and Scope.ALL in other.scopes
                    and key_state(other, now) == "active"
                ):
                    return
            if page.next_after is None:
                break
            after = page.next_after
        raise FailedPrecondition(
            "this is the organization's last active owner ('*') key: create another "
            "owner key first, or rotate this one instead of revoking it",
            reason="LAST_OWNER_KEY",
        )

    async def rotate(self, caller: Caller, key_id: str, grace: timedelta | None) -> IssuedKey:
        async with self._audit.action(caller, "api_key.rotate", target=key_id) as ev:
            p, acting = await self._acting(caller)  # inside: refusals are audited too
            if grace is not None and (grace < timedelta(0) or grace > MAX_GRACE):
                raise InvalidArgument.field("grace_period", "must be between 0 and 30 days")
            record = await self._get(p, key_id)
            ev.project_id, ev.environment_id = record.project_id, record.environment_id
            # The new secret goes to the caller: it must hold everything the key
            # holds, and the key must not outlive it.
            _require_every_scope(p, record, "rotate")
            if acting.expire_time is not None and (
                record.expire_time is None or record.expire_time > acting.expire_time
            ):
                raise PermissionDenied(
                    "cannot rotate a key that expires after the calling key: its new "
                    "secret would outlive the caller",
                    reason="EXPIRY_ESCALATION",
                )
            now = self._clock.now()
            state = key_state(record, now)
            if state != "active":
                raise FailedPrecondition(
                    f"the key is {state}; only an active key rotates (create a new key instead)",
                    reason=f"API_KEY_{state.upper()}",
                )
            secret = new_secret()
            grace_end = now + grace if grace else None
            record = replace(
                record,
                secret_hash=await self._hasher.hash(secret),
                previous_secret_hash=record.secret_hash if grace_end else "",
                previous_secret_expire_time=grace_end,
                rotate_time=now,
            )
            await self._store.update_key(record)
            await self._invalidate(key_id)
            return IssuedKey(record, format_key(record.prefix_kind, key_id, secret))

    async def org_name(self, org_id: str) -> str:
        name = self._org_names.get(org_id)
        if name is None:
            org = await self._store.get_org(org_id)
            name = org.name if org else ""
            self._org_names[org_id] = name
        return name

    async def _acting(self, caller: Caller) -> tuple[Principal, ApiKeyRecord]:
        """The calling org key (holding keys:write) and its record as stored now.

        Refused as UNAUTHENTICATED when the key was revoked or has expired since
        its verification was cached, here or on another replica: cheap, and it
        closes the window in which a revoked key could mint a new one."""
        p = caller.admin(Scope.KEYS_WRITE)
        record = await self._store.get_key(p.key_id)
        now = self._clock.now()
        if record is None or record.revoke_time is not None:
            raise Unauthenticated(
                "this API key was revoked; use another key or create one (KeyService.CreateApiKey)",
                reason="API_KEY_REVOKED",
            )
        if key_state(record, now) == "expired":
            raise Unauthenticated(
                "this API key has expired; create a new one (KeyService.CreateApiKey)",
                reason="API_KEY_EXPIRED",
            )
        return p, record

    async def _get(self, p: Principal, key_id: str) -> ApiKeyRecord:
        record = await self._store.get_org_key(p.org_id, key_id) if key_id else None
        if record is None:
            raise NotFound(f"API key {shown(key_id)} not found")
        return record


def shown(value: str, limit: int = 64) -> str:
    """A client-sent value quoted for an error message, cut short: a status
    travels in trailers, which clients cap (8 KiB by default)."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _require_every_scope(p: Principal, target: ApiKeyRecord, verb: str) -> None:
    """PermissionDenied unless `p` holds every scope `target` holds: whoever
    rotates or revokes a key must be at least as strong as it."""
    for scope in target.scopes:
        if not _holds_all(p, scope):
            raise PermissionDenied(
                f"cannot {verb} a key holding the scope '{scope}': "
                "the calling key does not hold it",
                reason="SCOPE_ESCALATION",
            )


def _holds_all(p: Principal, scope: str) -> bool:
    if scope == Scope.ALL:
        return Scope.ALL in p.scopes
    if scope == Scope.MEMORY_ALL:
        return Scope.ALL in p.scopes or Scope.MEMORY_ALL in p.scopes
    return scope_grants(p.scopes, scope)


def _check_scopes(v: Violations, kind: KeyKind, scopes: Sequence[str]) -> None:
    """Known scopes only, and none a data key cannot hold."""
    for i, scope in enumerate(scopes):
        if scope not in ALL_SCOPES:
            v.add(
                f"scopes[{i}]",
                f"unknown scope {shown(scope)}; known: {', '.join(sorted(ALL_SCOPES))}",
            )
        elif kind is KeyKind.DATA and (scope in ORG_ONLY_SCOPES or scope == Scope.ALL):
            v.add(f"scopes[{i}]", f"a data key cannot hold {scope!r}; use an org key")


def _bounded_expiry(
    v: Violations, asked: datetime | None, creator: datetime | None, now: datetime
) -> datetime | None:
    """The new key's expiry: in the future, and never later than its
    creator's (a key cannot outlive the key that made it; no expiry asked
    means the creator's)."""
    if asked is not None and asked <= now:
        v.add("expire_time", "must be in the future")
        return asked
    if creator is None:
        return asked
    if asked is None:
        return creator
    if asked > creator:
        v.add(
            "expire_time",
            f"must not be later than the calling key's expire_time ({creator.isoformat()})",
        )
    return asked


def _check_name(v: Violations, field: str, name: str) -> None:
    if not name.strip():
        v.add(field, "is required")
    elif len(name) > MAX_KEY_NAME:
        v.add(field, f"must be at most {MAX_KEY_NAME} characters")
    elif has_unprintable(name):
        v.add(field, UNPRINTABLE_RULE)
