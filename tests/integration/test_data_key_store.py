"""The DataKeyStore contract (`memoryd.domain.encryption`) of
`SqlControlStore`, run unchanged against SQLite (a tmp file) and PostgreSQL
(a fresh database; the test FAILS when PostgreSQL is unreachable): one data
key per environment (the first writer wins), per-organization listing and
rewrap, an organization's KEK reference, and crypto-shredding by deleting
the environment (cascade) or the scope."""

from __future__ import annotations

from memoryd.domain.encryption import LOCAL, OrgKey, WrappedKey
from memoryd.storage.sql import SqlControlStore
from tests.integration.test_legal_hold_store import T0, _environment


def _key(env: tuple[str, str, str], key_id: str, wrapped: bytes = b"w") -> WrappedKey:
    return WrappedKey(env, key_id, wrapped, LOCAL, 1)


async def test_one_data_key_per_environment_the_first_wins(store: SqlControlStore) -> None:
    t = await _environment(store)
    env = (t.org_id, t.project_id, t.environment_id)
    assert await store.data_key(env) is None
    first = await store.add_data_key(_key(env, "first", b"\x00\x01"))
    again = await store.add_data_key(_key(env, "second"))
    assert first.key_id == again.key_id == "first"
    stored = await store.data_key(env)
    assert stored is not None and stored.wrapped == b"\x00\x01"
    # another organization's id with this environment's id reads nothing
    assert await store.data_key(("org_other", t.project_id, t.environment_id)) is None


async def test_rewrap_and_the_organizations_key(store: SqlControlStore) -> None:
    t = await _environment(store)
    u = await _environment(store, t.org_id)
    other = await _environment(store)
    envs = [(x.org_id, x.project_id, x.environment_id) for x in (t, u, other)]
    for i, env in enumerate(envs):
        await store.add_data_key(_key(env, f"k{i}"))
    mine = await store.org_data_keys(t.org_id)
    assert sorted(k.key_id for k in mine) == ["k0", "k1"]
    await store.rewrap([WrappedKey(k.env, k.key_id, b"new", "aws-kms:abc", 2) for k in mine])
    assert {(k.wrapped, k.kek_ref, k.kek_version) for k in await store.org_data_keys(t.org_id)} == {
        (b"new", "aws-kms:abc", 2)
    }
    assert (await store.org_data_keys(other.org_id))[0].wrapped == b"w"

    assert await store.org_key(t.org_id) == OrgKey(t.org_id, LOCAL, 1)
    await store.set_org_key(OrgKey(t.org_id, "aws-kms:abc", 2, T0))
    await store.set_org_key(OrgKey(t.org_id, "aws-kms:abc", 3, T0))
    got = await store.org_key(t.org_id)
    assert (got.kek_ref, got.version) == ("aws-kms:abc", 3)
    assert (await store.org_key(other.org_id)).version == 1


async def test_erasing_an_environment_destroys_its_key(store: SqlControlStore) -> None:
    t = await _environment(store)
    u = await _environment(store, t.org_id)
    env_t = (t.org_id, t.project_id, t.environment_id)
    env_u = (u.org_id, u.project_id, u.environment_id)
    await store.add_data_key(_key(env_t, "t"))
    await store.add_data_key(_key(env_u, "u"))
    await store.delete_environment(t.org_id, t.environment_id)
    assert await store.data_key(env_t) is None  # the row cascades
    assert await store.drop_data_keys(u.org_id, u.project_id, None) == 1
    assert await store.data_key(env_u) is None
