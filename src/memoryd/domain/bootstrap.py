"""The first organization and its owner key.

`memoryd bootstrap` (and `memoryd serve` on an empty control store) creates
an organization with one org key holding every scope (`*`). Its plaintext is
returned once for the operator to store; everything after that goes through
the API. `memoryd bootstrap --new-owner-key ORG_ID` mints another owner key
for an organization whose key was lost before it was shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from memoryd.domain.clock import Clock
from memoryd.domain.control import ApiKeyRecord, AuditEvent, ControlStore, Organization
from memoryd.domain.errors import NotFound
from memoryd.domain.ids import new_audit_id, new_org_id
from memoryd.domain.key_format import format_key, new_key_id, new_secret
from memoryd.domain.ports import SecretHasher
from memoryd.domain.tenancy import KeyKind, Scope


@dataclass(frozen=True)
class Bootstrapped:
    org: Organization
    key_id: str
    plaintext: str

    def __repr__(self) -> str:
        return f"Bootstrapped(org={self.org!r}, key_id={self.key_id!r}, plaintext=***)"


async def bootstrap_org(
    store: ControlStore, hasher: SecretHasher, clock: Clock, name: str = "default"
) -> Bootstrapped:
    now = clock.now()
    org = Organization(id=new_org_id(), name=name, create_time=now)
    await store.create_org(org)
    return await _owner_key(store, hasher, clock, org, "owner")


async def mint_owner_key(
    store: ControlStore, hasher: SecretHasher, clock: Clock, org_id: str
) -> Bootstrapped:
    """A new owner key for an existing organization, for an operator with
    access to the control store: the repair of an organization whose owner
    key was never shown (a first start that failed after creating it, or a
    bootstrap stopped between its writes). Audited as `api_key.create` by
    `bootstrap`. Other keys of the organization are left as they are."""
    org = await store.get_org(org_id)
    if org is None:
        raise NotFound(f"no organization {org_id!r} in this control store", reason="ORG_NOT_FOUND")
    minted = await _owner_key(store, hasher, clock, org, "owner (minted by memoryd bootstrap)")
    await store.append_audit(
        AuditEvent(
            id=new_audit_id(),
            time=clock.now(),
            org_id=org.id,
            actor_key_id="bootstrap",
            action="api_key.create",
            target=minted.key_id,
            outcome="OK",
        )
    )
    return minted


async def _owner_key(
    store: ControlStore, hasher: SecretHasher, clock: Clock, org: Organization, name: str
) -> Bootstrapped:
    key_id, secret = new_key_id(), new_secret()
    await store.create_key(
        ApiKeyRecord(
            id=key_id,
            org_id=org.id,
            kind=KeyKind.ORG,
            name=name,
            scopes=(Scope.ALL,),
            secret_hash=await hasher.hash(secret),
            create_time=clock.now(),
            created_by="bootstrap",
        )
    )
    return Bootstrapped(org, key_id, format_key("org", key_id, secret))
