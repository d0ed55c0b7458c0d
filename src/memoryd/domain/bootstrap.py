"""The first organization and its owner key.

`memoryd bootstrap` (and `memoryd serve` on an empty control store) creates
an organization with one org key holding every scope (`*`). Its plaintext is
returned once for the operator to store; everything after that goes through
the API.
"""

from __future__ import annotations

from dataclasses import dataclass

from memoryd.auth.hashing import SecretHasher
from memoryd.auth.keys import format_key, new_key_id, new_secret
from memoryd.domain.clock import Clock
from memoryd.domain.control import ApiKeyRecord, ControlStore, Organization
from memoryd.domain.ids import new_org_id
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
    key_id, secret = new_key_id(), new_secret()
    await store.create_key(
        ApiKeyRecord(
            id=key_id,
            org_id=org.id,
            kind=KeyKind.ORG,
            name="owner",
            scopes=(Scope.ALL,),
            secret_hash=await hasher.hash(secret),
            create_time=now,
            created_by="bootstrap",
        )
    )
    return Bootstrapped(org, key_id, format_key("org", key_id, secret))
