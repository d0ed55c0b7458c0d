"""The sealer over an in-memory key store and the real local key file:
sealed values open only in their environment and field, clear values (old
data, encryption off) pass, a clear value that looks sealed is escaped,
keys are made once and reused, and a wrapped key never opens under another
organization's key or key version."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from memoryd.crypto.kek import KekProviders, LocalKeyFile
from memoryd.crypto.sealer import CLEAR, SEALED, Sealer
from memoryd.domain.encryption import EnvRef, OrgKey, WrappedKey, context
from memoryd.domain.errors import Unavailable

A: EnvRef = ("org-a", "proj", "env-1")
B: EnvRef = ("org-a", "proj", "env-2")


class MemoryKeys:
    """A `DataKeyStore` in a dict (unit tests only)."""

    def __init__(self) -> None:
        self.orgs: dict[str, OrgKey] = {}
        self.keys: dict[EnvRef, WrappedKey] = {}
        self.reads = 0

    async def org_key(self, org_id: str) -> OrgKey:
        return self.orgs.get(org_id, OrgKey(org_id))

    async def set_org_key(self, key: OrgKey) -> None:
        self.orgs[key.org_id] = key

    async def data_key(self, env: EnvRef) -> WrappedKey | None:
        self.reads += 1
        return self.keys.get(env)

    async def add_data_key(self, key: WrappedKey) -> WrappedKey:
        return self.keys.setdefault(key.env, key)

    async def org_data_keys(self, org_id: str) -> Sequence[WrappedKey]:
        return [k for e, k in self.keys.items() if e[0] == org_id]

    async def rewrap(self, keys: Sequence[WrappedKey]) -> None:
        for k in keys:
            self.keys[k.env] = k

    async def drop_data_keys(self, org_id: str, project_id: str, environment_id: str | None) -> int:
        gone = [e for e in self.keys if e[:2] == (org_id, project_id)]
        for e in gone:
            del self.keys[e]
        return len(gone)


@pytest.fixture
def keys() -> MemoryKeys:
    return MemoryKeys()


@pytest.fixture
def local(tmp_path: Path) -> LocalKeyFile:
    return LocalKeyFile(tmp_path / "kek.key")


async def test_a_sealed_value_opens_only_in_its_environment_and_field(
    keys: MemoryKeys, local: LocalKeyFile
) -> None:
    sealer = Sealer(keys, KekProviders(local, None))
    await sealer.ready([A, B], create=True)
    sealed = sealer.seal(A, "content", "the okapi")
    assert sealed.startswith(SEALED) and "okapi" not in sealed
    assert sealer.open(A, "content", sealed) == "the okapi"
    with pytest.raises(Unavailable):
        sealer.open(B, "content", sealed)  # copied into another environment's row
    with pytest.raises(Unavailable):
        sealer.open(A, "payload", sealed)  # or into another field
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(Unavailable):
        sealer.open(A, "content", tampered)
    data = sealer.seal_bytes(A, "response", b"\x00\x01 okapi")
    assert b"okapi" not in data and sealer.open_bytes(A, "response", data) == b"\x00\x01 okapi"


async def test_keys_are_made_once_and_cached(keys: MemoryKeys, local: LocalKeyFile) -> None:
    sealer = Sealer(keys, KekProviders(local, None))
    await sealer.ready([A], create=True)
    made = keys.keys[A]
    reads = keys.reads
    await sealer.ready([A], create=True)
    assert keys.reads == reads and keys.keys[A] == made
    # another process (a new sealer) opens what this one sealed
    sealed = sealer.seal(A, "content", "kept")
    other = Sealer(keys, KekProviders(local, None))
    await other.ready_for([(A, sealed)])
    assert other.open(A, "content", sealed) == "kept"


async def test_clear_values_pass_and_look_alikes_are_escaped(
    keys: MemoryKeys, local: LocalKeyFile
) -> None:
    off = Sealer(keys, KekProviders(local, None), enabled=False)
    await off.ready([A], create=True)
    assert keys.keys == {}  # encryption off: no key is made
    assert off.seal(A, "content", "plain") == "plain"
    tricky = SEALED + "abc:notbase64"
    stored = off.seal(A, "content", tricky)
    assert stored == CLEAR + tricky and off.open(A, "content", stored) == tricky
    assert off.open(A, "content", "written before encryption") == "written before encryption"


async def test_a_wrapped_key_needs_its_organizations_key_and_version(local: LocalKeyFile) -> None:
    key = b"k" * 32
    org = OrgKey("org-a", "local", 1)
    wrapped = await local.wrap(org, context(A), key)
    assert await local.unwrap(org, context(A), wrapped) == key
    for wrong in (replace(org, org_id="org-b"), replace(org, version=2)):
        with pytest.raises(Unavailable):
            await local.unwrap(wrong, context(A), wrapped)
    with pytest.raises(Unavailable):
        await local.unwrap(org, context(B), wrapped)  # another environment's context


async def test_a_shredded_environment_cannot_be_opened(
    keys: MemoryKeys, local: LocalKeyFile
) -> None:
    sealer = Sealer(keys, KekProviders(local, None))
    await sealer.ready([A], create=True)
    sealed = sealer.seal(A, "content", "gone")
    await keys.drop_data_keys("org-a", "proj", "env-1")
    sealer.forget("org-a", "proj", "env-1")
    await sealer.ready_for([(A, sealed)])
    with pytest.raises(Unavailable):
        sealer.open(A, "content", sealed)
