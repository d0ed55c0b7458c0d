"""The sealer with the real local key file and AES-GCM, over an in-memory
data-key store: sealed values open only in their environment and field,
values written in clear stay readable, a clear value that looks sealed is
never taken for one, the key cache is bounded and costs no store read once
warm, a missing key is UNAVAILABLE, and the KEK change rewraps without
touching content."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from memoryd.crypto.kek import KekProviders, LocalKeyFile
from memoryd.crypto.sealer import SEALED, Sealer
from memoryd.domain.encryption import (
    LOCAL,
    UNAVAILABLE_REASON,
    EncryptionKeys,
    EnvRef,
    OrgKey,
    WrappedKey,
)
from memoryd.domain.errors import Unavailable

A: EnvRef = ("org_a", "proj_1", "env_1")
A2: EnvRef = ("org_a", "proj_1", "env_2")
B: EnvRef = ("org_b", "proj_9", "env_9")


class MemoryKeys:
    """`DataKeyStore` in a dict; counts reads of data keys."""

    def __init__(self) -> None:
        self.orgs: dict[str, OrgKey] = {}
        self.keys: dict[EnvRef, WrappedKey] = {}
        self.reads = 0

    async def org_key(self, org_id: str) -> OrgKey:
        return self.orgs.get(org_id, OrgKey(org_id, LOCAL, 1))

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
        gone = [e for e in gone if environment_id is None or e[2] == environment_id]
        for e in gone:
            del self.keys[e]
        return len(gone)


def sealer(tmp_path: Path, store: MemoryKeys, **kw: object) -> Sealer:
    return Sealer(store, KekProviders(LocalKeyFile(tmp_path / "kek.key"), None), **kw)  # type: ignore[arg-type]


async def test_a_sealed_value_opens_only_in_its_environment_and_field(tmp_path: Path) -> None:
    store = MemoryKeys()
    s = sealer(tmp_path, store)
    await s.ready([A, A2, B], create=True)
    sealed = s.seal(A, "content", "likes tea")
    assert sealed.startswith(SEALED) and "likes tea" not in sealed
    assert s.open(A, "content", sealed) == "likes tea"
    for env, field in ((A, "revisions"), (A2, "content"), (B, "content")):
        with pytest.raises(Unavailable) as raised:
            s.open(env, field, sealed)
        assert raised.value.reason == UNAVAILABLE_REASON
    data = s.seal_bytes(A, "payload", b"\x00raw bytes")
    assert s.open_bytes(A, "payload", data) == b"\x00raw bytes"
    with pytest.raises(Unavailable):
        s.open_bytes(B, "payload", data)


async def test_clear_values_stay_readable_and_are_never_taken_for_sealed(tmp_path: Path) -> None:
    store = MemoryKeys()
    on = sealer(tmp_path, store)
    off = sealer(tmp_path, store, enabled=False)
    assert on.open(A, "content", "written before encryption") == "written before encryption"
    tricky = SEALED + "abc:not base64 at all"
    stored = off.seal(A, "content", tricky)  # encryption off: escaped, not sealed
    assert stored != tricky and off.open(A, "content", stored) == tricky
    await on.ready([A], create=True)
    sealed = on.seal(A, "content", "x")
    await off.ready_for([(A, sealed)])  # off still opens what was sealed
    assert off.open(A, "content", sealed) == "x"


async def test_keys_are_cached_bounded_and_a_missing_key_is_unavailable(tmp_path: Path) -> None:
    store = MemoryKeys()
    s = sealer(tmp_path, store, cache_size=2)
    await s.ready([A], create=True)
    sealed = s.seal(A, "content", "kept")
    reads = store.reads
    for _ in range(100):  # warm: no store read
        await s.ready([A], create=True)
        assert s.open(A, "content", sealed) == "kept"
    assert store.reads == reads
    await s.ready([A2, B], create=True)  # A is evicted
    assert len(s._keys) == 2
    with pytest.raises(Unavailable):
        s.open(A, "content", sealed)
    await s.ready_for([(A, sealed)])  # loaded again from the store
    assert s.open(A, "content", sealed) == "kept"
    await store.drop_data_keys(*A)
    s.forget(*A)
    await s.ready_for([(A, sealed)])
    with pytest.raises(Unavailable, match="not available"):
        s.open(A, "content", sealed)  # shredded: never opens again


async def test_another_key_file_cannot_unwrap(tmp_path: Path) -> None:
    store = MemoryKeys()
    s = sealer(tmp_path / "one", store)
    await s.ready([A], create=True)
    sealed = s.seal(A, "content", "secret")
    other = sealer(tmp_path / "two", store)
    with pytest.raises(Unavailable, match="fingerprint"):
        await other.ready_for([(A, sealed)])


async def test_rotation_rewraps_and_content_still_opens(tmp_path: Path) -> None:
    from memoryd.domain.audit import Auditor
    from memoryd.domain.clock import ManualClock
    from memoryd.domain.control import AuditEvent
    from memoryd.domain.tenancy import Caller, KeyKind, Principal

    store = MemoryKeys()
    s = sealer(tmp_path, store)
    await s.ready([A, A2, B], create=True)
    sealed = s.seal(A, "content", "kept")
    before = dict(store.keys)

    class Events:
        def __init__(self) -> None:
            self.events: list[AuditEvent] = []

        async def append_audit(self, event: AuditEvent) -> None:
            self.events.append(event)

    audit = Events()
    clock = ManualClock()
    keys = EncryptionKeys(store, s.wrapper, Auditor(audit, clock), clock)  # type: ignore[arg-type]
    caller = Caller(Principal("k1", KeyKind.ORG, "org_a", frozenset({"admin:write"})))
    done = await keys.rotate(caller)
    assert [e.action for e in audit.events] == ["encryption_key.rotate"]
    assert done.rewrapped == 2 and done.status.key.version == 2
    assert store.keys[B] == before[B]  # another organization's key untouched
    assert all(store.keys[e].wrapped != before[e].wrapped for e in (A, A2))
    fresh = sealer(tmp_path, store)  # no cache: unwraps with version 2
    await fresh.ready_for([(A, sealed)])
    assert fresh.open(A, "content", sealed) == "kept"


async def test_a_sealed_export_file_reads_from_any_offset(tmp_path: Path) -> None:
    from memoryd.domain.tenancy import Tenant
    from memoryd.storage.export_files import PIECE, LocalExportFiles

    store = MemoryKeys()
    s = sealer(tmp_path, store)
    files = LocalExportFiles(tmp_path / "exports", 0, s)
    tenant = Tenant(*A)
    await files.prepare(tenant)
    clear = b"".join(b'{"content": "line %06d secretword"}\n' % i for i in range(7000))
    writer = files.writer(tenant, "exp_1")
    for i in range(0, len(clear), 1000):
        writer.write(clear[i : i + 1000])
    size, _ = writer.commit()
    assert size == len(clear) and len(clear) > 3 * PIECE
    on_disk = next((tmp_path / "exports").rglob("*.jsonl")).read_bytes()
    assert b"secretword" not in on_disk
    for offset in (0, 1, PIECE - 1, PIECE, PIECE + 7, 3 * PIECE, len(clear) - 1, len(clear)):
        got = b"".join([p async for p in files.read(tenant, "exp_1", offset)])
        assert got == clear[offset:], offset
    with pytest.raises(Unavailable):  # another environment's key does not open it
        other = Tenant(*A2)
        await s.ready([A2], create=True)
        path = next((tmp_path / "exports").rglob("*.jsonl"))
        target = files._path(other, "exp_1", ".jsonl")
        target.parent.mkdir(parents=True)
        target.write_bytes(path.read_bytes())
        _ = [p async for p in files.read(other, "exp_1", 0)]
    truncated = on_disk[: len(on_disk) - PIECE]  # whole frames cut off the end
    path.write_bytes(truncated)
    with pytest.raises(Unavailable):
        _ = [p async for p in files.read(tenant, "exp_1", 0)]
