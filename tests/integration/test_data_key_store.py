"""The DataKeyStore contract (`memoryd.domain.encryption`) of
`SqlControlStore`, and its sealed columns, run unchanged against SQLite (a
tmp file) and PostgreSQL (a fresh database; the test FAILS when PostgreSQL
is unreachable): one data key per environment (the first writer wins),
organization KEK references, rewrapping, crypto-shredding (explicit and by
the environment's cascade), confinement to the organization, and an
operation's messages stored sealed in its row."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from memoryd.crypto.kek import KekProviders, LocalKeyFile
from memoryd.crypto.sealer import Sealer
from memoryd.domain.encryption import LOCAL, OrgKey, WrappedKey
from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql import SqlControlStore

# an organization, project and environment of their own per call
from tests.integration.test_legal_hold_store import T0, _environment


def _ref(t: Tenant) -> tuple[str, str, str]:
    return (t.org_id, t.project_id, t.environment_id)


async def test_data_keys_org_keys_rewrap_and_shredding(store: SqlControlStore) -> None:
    a = await _environment(store)
    a2 = await _environment(store, a.org_id)
    b = await _environment(store)
    assert await store.org_key(a.org_id) == OrgKey(a.org_id, LOCAL, 1)
    assert await store.data_key(_ref(a)) is None

    first = WrappedKey(_ref(a), "k1", b"wrapped-1", LOCAL, 1)
    assert await store.add_data_key(first) == first
    # a second writer gets the first one's key back
    assert await store.add_data_key(WrappedKey(_ref(a), "k2", b"w2", LOCAL, 1)) == first
    await store.add_data_key(WrappedKey(_ref(a2), "k3", b"wrapped-3", LOCAL, 1))
    await store.add_data_key(WrappedKey(_ref(b), "k4", b"wrapped-4", LOCAL, 1))

    await store.set_org_key(OrgKey(a.org_id, "aws-kms:alias/x", 2, T0))
    got = await store.org_key(a.org_id)
    assert (got.kek_ref, got.version, got.update_time) == ("aws-kms:alias/x", 2, T0)
    assert (await store.org_key(b.org_id)).kek_ref == LOCAL

    assert {k.key_id for k in await store.org_data_keys(a.org_id)} == {"k1", "k3"}
    await store.rewrap([WrappedKey(_ref(a), "k1", b"rewrapped", "aws-kms:alias/x", 2)])
    again = await store.data_key(_ref(a))
    assert again == WrappedKey(_ref(a), "k1", b"rewrapped", "aws-kms:alias/x", 2)
    # a rewrap naming another organization's environment changes nothing
    await store.rewrap([WrappedKey((a.org_id, b.project_id, b.environment_id), "k4", b"x", "", 9)])
    assert (await store.data_key(_ref(b))) == WrappedKey(_ref(b), "k4", b"wrapped-4", LOCAL, 1)

    assert await store.drop_data_keys(a.org_id, a.project_id, a.environment_id) == 1
    assert await store.data_key(_ref(a)) is None
    assert await store.drop_data_keys(a.org_id, b.project_id, None) == 0  # not its org's
    await store.delete_environment(a2.org_id, a2.environment_id)  # the cascade
    assert await store.data_key(_ref(a2)) is None
    assert await store.data_key(_ref(b)) is not None


async def test_operation_payloads_and_messages_are_sealed_in_their_rows(
    store: SqlControlStore, tmp_path: Path
) -> None:
    from memoryd.domain.operations import Operation, OpState, StoredMessage, new_operation_id
    from memoryd.storage.sql.operations import conversation_messages, operations

    t = await _environment(store)
    sealer = Sealer(store, KekProviders(LocalKeyFile(tmp_path / "kek.key"), None))
    store.seal_with(sealer)
    op = Operation(
        id=new_operation_id(),
        kind="add_messages",
        tenant=t,
        key_id="key_1",
        scopes=frozenset({"memory:*"}),
        state=OpState.PENDING,
        payload='{"note": "card 90210"}',
        create_time=T0,
        update_time=T0,
    )
    await store.create_operation(op, [StoredMessage(0, "user", "my pin is 90210", "", T0)])
    async with store.engine.connect() as conn:
        for table in (operations, conversation_messages):
            rows = (await conn.execute(sa.select(table))).all()
            assert rows and all("90210" not in repr(tuple(r)) for r in rows), table.name
    assert [m.content for m in await store.messages(op.id)] == ["my pin is 90210"]
