"""KeyService on a real server: create, use, rotate, revoke, expire, list,
with the secret shown once and never again."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from helpers.errors import reason_of, refused, violations
from helpers.polling import wait_for
from helpers.servers import Client, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, keys_pb2, tenancy_pb2

SECRET_START = 12  # the secret follows the 12-character key id


def secret_part(raw: str) -> str:
    body = raw.split("_", 2)[2]
    return body[SECRET_START : SECRET_START + 32]


async def whoami(client: Client) -> keys_pb2.WhoAmIResponse:
    return await client.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=client.md())


async def create_key(
    client: Client, *, project: admin_pb2.Project | None = None, env_id: str = "", **fields: Any
) -> keys_pb2.CreateApiKeyResponse:
    fields.setdefault("name", "k")
    if project is not None:
        fields["project_id"] = project.id
        fields["environment_id"] = env_id or project.environments[0].id
    return await client.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(**fields), metadata=client.md()
    )


def ts(when: Any) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def rotate(client: Client, key_id: str, grace_s: int | None = None) -> Any:
    req = keys_pb2.RotateApiKeyRequest(id=key_id)
    if grace_s is not None:
        req.grace_period.CopyFrom(duration_pb2.Duration(seconds=grace_s))
    return await client.keys.RotateApiKey(req, metadata=client.md())


# --- create ------------------------------------------------------------------------------


async def test_a_created_data_key_works_and_describes_itself(server: RunningServer) -> None:
    owner = server.owner
    owner_id = (await whoami(owner)).key_id
    project = await server.project("shop")
    resp = await create_key(owner, project=project, name="checkout", scopes=["memory:read"])
    key = resp.api_key
    assert resp.secret.startswith("ms_live_" + key.id)
    assert key.prefix == "ms_live_" + key.id and resp.secret.startswith(key.prefix)
    assert key.kind == keys_pb2.KEY_KIND_DATA
    assert key.state == keys_pb2.KEY_STATE_ACTIVE
    assert key.environment_kind == tenancy_pb2.ENVIRONMENT_KIND_LIVE
    assert key.created_by == owner_id
    assert key.HasField("create_time") and not key.HasField("expire_time")
    assert list(key.scopes) == ["memory:read"]

    me = await whoami(server.client(resp.secret))
    assert me.key_id == key.id
    assert me.kind == keys_pb2.KEY_KIND_DATA
    assert (me.organization_id, me.project_id) == (server.org_id, project.id)
    assert me.environment_id == project.environments[0].id
    assert me.environment_kind == tenancy_pb2.ENVIRONMENT_KIND_LIVE
    assert list(me.scopes) == ["memory:read"]
    assert me.organization_name == "default"


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        (tenancy_pb2.ENVIRONMENT_KIND_LIVE, "ms_live_"),
        (tenancy_pb2.ENVIRONMENT_KIND_TEST, "ms_test_"),
        (tenancy_pb2.ENVIRONMENT_KIND_DEV, "ms_dev_"),
    ],
)
async def test_the_prefix_follows_the_environment_kind(
    server: RunningServer, kind: int, prefix: str
) -> None:
    project = await server.project()
    env = await server.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id, environment=admin_pb2.Environment(name="e", kind=kind)
        ),
        metadata=server.owner.md(),
    )
    resp = await create_key(server.owner, project=project, env_id=env.id)
    assert resp.secret.startswith(prefix)
    assert resp.api_key.environment_kind == kind
    assert (await whoami(server.client(resp.secret))).environment_id == env.id


async def test_defaults_are_least_privilege(server: RunningServer) -> None:
    project = await server.project()
    data = await create_key(server.owner, project=project)
    assert sorted(data.api_key.scopes) == ["memory:add", "memory:read"]
    assert sorted((await whoami(server.client(data.secret))).scopes) == [
        "memory:add",
        "memory:read",
    ]
    org = await create_key(server.owner)
    assert org.secret.startswith("ms_org_")
    assert org.api_key.kind == keys_pb2.KEY_KIND_ORG
    assert sorted(org.api_key.scopes) == ["admin:read", "keys:read"]
    assert (org.api_key.project_id, org.api_key.environment_id) == ("", "")


async def test_duplicate_scopes_are_stored_once(server: RunningServer) -> None:
    resp = await create_key(server.owner, scopes=["audit:read", "audit:read", "keys:read"])
    assert list(resp.api_key.scopes) == ["audit:read", "keys:read"]


# --- escalation ---------------------------------------------------------------------------


async def test_a_key_cannot_grant_a_scope_it_lacks(server: RunningServer) -> None:
    project = await server.project()
    manager = server.client(
        (await create_key(server.owner, scopes=["keys:write", "keys:read", "memory:read"])).secret
    )
    for scopes in (["*"], ["admin:write"], ["keys:write", "audit:read"]):
        err = await refused(grpc.StatusCode.PERMISSION_DENIED, create_key(manager, scopes=scopes))
        assert "cannot grant" in (err.details() or "")
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED, create_key(manager, project=project, scopes=["memory:*"])
    )
    assert "'memory:*'" in (err.details() or "")
    # what it holds, it may pass on
    ok = await create_key(manager, project=project, scopes=["memory:read"])
    assert list(ok.api_key.scopes) == ["memory:read"]
    listed = await server.owner.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(), metadata=server.owner.md()
    )
    assert all("*" not in k.scopes or k.name == "owner" for k in listed.api_keys)


async def test_a_key_cannot_take_over_a_stronger_key_by_rotating_it(server: RunningServer) -> None:
    owner_id = (await whoami(server.owner)).key_id
    manager = server.client((await create_key(server.owner, scopes=["keys:write"])).secret)
    err = await refused(grpc.StatusCode.PERMISSION_DENIED, rotate(manager, owner_id))
    assert "'*'" in (err.details() or "")
    await whoami(server.owner)  # the owner key was not rotated
    # a key it could have made itself, it may rotate
    peer = await create_key(manager, scopes=["keys:write"])
    assert (await rotate(manager, peer.api_key.id)).secret


@pytest.mark.parametrize(
    "scope",
    ["keys:read", "keys:write", "admin:read", "admin:write", "audit:read", "usage:read", "*"],
)
async def test_data_keys_cannot_hold_admin_scopes(server: RunningServer, scope: str) -> None:
    project = await server.project()
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        create_key(server.owner, project=project, scopes=["memory:read", scope]),
    )
    assert "scopes[1]" in violations(err)
    listed = await server.owner.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(project_id=project.id), metadata=server.owner.md()
    )
    assert list(listed.api_keys) == []


# --- rotate ---------------------------------------------------------------------------------


async def test_rotation_with_grace(make_server: Any, manual_clock: ManualClock) -> None:
    server: RunningServer = await make_server(clock=manual_clock, key_cache_ttl_s=30)
    project = await server.project()
    old = await create_key(server.owner, project=project)
    old_client = server.client(old.secret)
    await whoami(old_client)  # cached

    rotated = await rotate(server.owner, old.api_key.id, grace_s=300)
    new_client = server.client(rotated.secret)
    assert rotated.secret != old.secret
    assert rotated.secret.startswith(old.api_key.prefix)
    assert rotated.api_key.HasField("rotate_time")
    assert rotated.api_key.previous_secret_expire_time.ToDatetime().timestamp() == pytest.approx(
        (manual_clock.now() + timedelta(seconds=300)).timestamp()
    )
    assert (await whoami(new_client)).key_id == old.api_key.id
    assert (await whoami(old_client)).key_id == old.api_key.id

    manual_clock.advance(200)  # past the cache TTL, inside the grace
    assert (await whoami(old_client)).key_id == old.api_key.id
    manual_clock.advance(101)  # past the grace
    err = await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(old_client))
    assert old.secret not in (err.details() or "")
    assert (await whoami(new_client)).key_id == old.api_key.id


async def test_the_grace_ends_even_while_the_old_secret_is_cached(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock, key_cache_ttl_s=600)
    project = await server.project()
    old = await create_key(server.owner, project=project)
    await rotate(server.owner, old.api_key.id, grace_s=10)
    await whoami(server.client(old.secret))
    manual_clock.advance(11)
    await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server.client(old.secret)))


async def test_rotation_without_grace_refuses_the_old_secret_at_once(
    server: RunningServer,
) -> None:
    project = await server.project()
    old = await create_key(server.owner, project=project)
    await whoami(server.client(old.secret))  # cached
    rotated = await rotate(server.owner, old.api_key.id)
    assert not rotated.api_key.HasField("previous_secret_expire_time")
    await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server.client(old.secret)))
    assert (await whoami(server.client(rotated.secret))).key_id == old.api_key.id
    # an explicit zero grace is the same
    again = await rotate(server.owner, old.api_key.id, grace_s=0)
    await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server.client(rotated.secret)))
    await whoami(server.client(again.secret))


async def test_a_key_can_rotate_itself(server: RunningServer) -> None:
    me = await whoami(server.owner)
    rotated = await rotate(server.owner, me.key_id, grace_s=60)
    assert (await whoami(server.client(rotated.secret))).key_id == me.key_id
    await whoami(server.owner)  # still within its grace


@pytest.mark.parametrize("grace_s", [30 * 86400 + 1, -1, 10**9])
async def test_a_bad_grace_period_is_refused(server: RunningServer, grace_s: int) -> None:
    target = await create_key(server.owner, scopes=["keys:read"])
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, rotate(server.owner, target.api_key.id, grace_s)
    )
    assert "grace_period" in violations(err)
    await whoami(server.client(target.secret))  # not rotated


async def test_a_revoked_key_cannot_be_rotated_back_to_life(server: RunningServer) -> None:
    target = await create_key(server.owner, scopes=["keys:read"])
    await server.owner.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=target.api_key.id), metadata=server.owner.md()
    )
    await refused(grpc.StatusCode.FAILED_PRECONDITION, rotate(server.owner, target.api_key.id))
    got = await server.owner.keys.GetApiKey(
        keys_pb2.GetApiKeyRequest(id=target.api_key.id), metadata=server.owner.md()
    )
    assert got.state == keys_pb2.KEY_STATE_REVOKED


# --- revoke ---------------------------------------------------------------------------------


async def test_revoke_stops_the_key_on_the_next_call(server: RunningServer) -> None:
    project = await server.project()
    made = await create_key(server.owner, project=project)
    user = server.client(made.secret)
    await whoami(user)  # cached
    revoked = await server.owner.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=made.api_key.id), metadata=server.owner.md()
    )
    assert revoked.state == keys_pb2.KEY_STATE_REVOKED and revoked.HasField("revoke_time")
    err = await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(user))
    assert "revoked" in (err.details() or "")
    assert made.secret not in (err.details() or "")

    again = await server.owner.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=made.api_key.id), metadata=server.owner.md()
    )
    assert again.revoke_time == revoked.revoke_time  # idempotent

    listed = await server.owner.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(project_id=project.id), metadata=server.owner.md()
    )
    assert [k.id for k in listed.api_keys] == []
    listed = await server.owner.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(project_id=project.id, show_revoked=True),
        metadata=server.owner.md(),
    )
    assert [(k.id, k.state) for k in listed.api_keys] == [
        (made.api_key.id, keys_pb2.KEY_STATE_REVOKED)
    ]


async def revoke(client: Client, key_id: str) -> keys_pb2.ApiKey:
    return await client.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=key_id), metadata=client.md()
    )


async def test_a_key_cannot_revoke_a_key_holding_a_scope_it_lacks(server: RunningServer) -> None:
    owner_id = (await whoami(server.owner)).key_id
    second_owner = await create_key(server.owner, scopes=["*"])  # not the last owner key
    manager = server.client((await create_key(server.owner, scopes=["keys:write"])).secret)
    for target in (owner_id, second_owner.api_key.id):
        err = await refused(grpc.StatusCode.PERMISSION_DENIED, revoke(manager, target))
        assert reason_of(err) == "SCOPE_ESCALATION"
        assert "'*'" in (err.details() or "")
    await whoami(server.owner)  # not revoked
    await whoami(server.client(second_owner.secret))
    auditor = await create_key(server.owner, scopes=["audit:read"])
    err = await refused(grpc.StatusCode.PERMISSION_DENIED, revoke(manager, auditor.api_key.id))
    assert "'audit:read'" in (err.details() or "")
    # a key it could have made itself, it may revoke
    peer = await create_key(manager, scopes=["keys:write"])
    assert (await revoke(manager, peer.api_key.id)).state == keys_pb2.KEY_STATE_REVOKED


async def test_the_last_active_owner_key_cannot_be_revoked(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    owner_id = (await whoami(server.owner)).key_id
    err = await refused(grpc.StatusCode.FAILED_PRECONDITION, revoke(server.owner, owner_id))
    assert reason_of(err) == "LAST_OWNER_KEY"
    assert "create another owner key first" in (err.details() or "")
    # an expired owner key does not count as another owner
    expiring = await create_key(
        server.owner, scopes=["*"], expire_time=ts(manual_clock.now() + timedelta(seconds=60))
    )
    manual_clock.advance(61)
    err = await refused(grpc.StatusCode.FAILED_PRECONDITION, revoke(server.owner, owner_id))
    assert reason_of(err) == "LAST_OWNER_KEY"
    await whoami(server.owner)
    # with another active owner key, either may go
    second = server.client((await create_key(server.owner, scopes=["*"])).secret)
    await revoke(second, owner_id)
    await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server.owner))
    second_id = (await whoami(second)).key_id
    err = await refused(grpc.StatusCode.FAILED_PRECONDITION, revoke(second, second_id))
    assert reason_of(err) == "LAST_OWNER_KEY"
    assert (await revoke(second, expiring.api_key.id)).state == keys_pb2.KEY_STATE_REVOKED


async def test_a_key_revoked_behind_the_cache_cannot_manage_keys(server: RunningServer) -> None:
    """A revocation whose eviction never reached this replica (a lost bus
    message): the cached verification still lets the key in, but it cannot
    mint, rotate or revoke keys."""
    manager_resp = await create_key(server.owner, scopes=["keys:write", "keys:read"])
    manager = server.client(manager_resp.secret)
    target = await create_key(server.owner, scopes=["keys:read"])
    await whoami(manager)  # verified and cached
    store = server.app.store
    record = await store.get_key(manager_resp.api_key.id)
    assert record is not None
    await store.update_key(replace(record, revoke_time=record.create_time))  # no eviction
    for call in (
        create_key(manager, scopes=["keys:read"]),
        rotate(manager, target.api_key.id),
        revoke(manager, target.api_key.id),
    ):
        err = await refused(grpc.StatusCode.UNAUTHENTICATED, call)
        assert reason_of(err) == "API_KEY_REVOKED"
    listed = await server.owner.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(), metadata=server.owner.md()
    )
    assert {k.name for k in listed.api_keys} == {"owner", "k"}  # nothing minted
    await whoami(server.client(target.secret))  # neither rotated nor revoked


async def test_a_key_can_revoke_itself(server: RunningServer) -> None:
    made = await create_key(server.owner, scopes=["keys:write"])
    me = server.client(made.secret)
    await me.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(id=made.api_key.id), metadata=me.md())
    await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(me))


async def test_unknown_key_ids_are_not_found(server: RunningServer) -> None:
    o = server.owner
    for key_id in ("nosuchkey123", "", "x" * 300):
        await refused(
            grpc.StatusCode.NOT_FOUND,
            o.keys.GetApiKey(keys_pb2.GetApiKeyRequest(id=key_id), metadata=o.md()),
        )
        await refused(
            grpc.StatusCode.NOT_FOUND,
            o.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(id=key_id), metadata=o.md()),
        )
        await refused(grpc.StatusCode.NOT_FOUND, rotate(o, key_id))


# --- expiry ----------------------------------------------------------------------------------


async def test_a_key_stops_at_its_expire_time(make_server: Any, manual_clock: ManualClock) -> None:
    server: RunningServer = await make_server(clock=manual_clock, key_cache_ttl_s=30)
    project = await server.project()
    made = await create_key(
        server.owner, project=project, expire_time=ts(manual_clock.now() + timedelta(seconds=45))
    )
    client = server.client(made.secret)
    await whoami(client)
    manual_clock.advance(40)
    await whoami(client)
    manual_clock.advance(10)
    err = await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(client))
    assert "expired" in (err.details() or "")
    got = await server.owner.keys.GetApiKey(
        keys_pb2.GetApiKeyRequest(id=made.api_key.id), metadata=server.owner.md()
    )
    assert got.state == keys_pb2.KEY_STATE_EXPIRED
    await refused(grpc.StatusCode.FAILED_PRECONDITION, rotate(server.owner, made.api_key.id))


async def test_expire_time_must_be_in_the_future(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    for when in (manual_clock.now(), manual_clock.now() - timedelta(days=1)):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT, create_key(server.owner, expire_time=ts(when))
        )
        assert "expire_time" in violations(err)


async def test_a_created_key_cannot_outlive_its_creator(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    ends = manual_clock.now() + timedelta(minutes=5)
    short = server.client(
        (
            await create_key(server.owner, scopes=["keys:write", "keys:read"], expire_time=ts(ends))
        ).secret
    )
    # no expiry asked: the creator's
    made = await create_key(short, scopes=["keys:read"])
    assert made.api_key.expire_time.ToDatetime().timestamp() == pytest.approx(ends.timestamp())
    # later than the creator's: refused
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        create_key(short, scopes=["keys:read"], expire_time=ts(ends + timedelta(seconds=1))),
    )
    assert "expire_time" in violations(err)
    # earlier: as asked
    sooner = ends - timedelta(minutes=1)
    made = await create_key(short, scopes=["keys:read"], expire_time=ts(sooner))
    assert made.api_key.expire_time.ToDatetime().timestamp() == pytest.approx(sooner.timestamp())
    # a key without expiry may still make keys without expiry
    forever = await create_key(server.owner, scopes=["keys:read"])
    assert not forever.api_key.HasField("expire_time")


async def test_a_key_cannot_rotate_a_key_that_outlives_it(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    ends = manual_clock.now() + timedelta(minutes=5)
    short_resp = await create_key(server.owner, scopes=["keys:write"], expire_time=ts(ends))
    short = server.client(short_resp.secret)
    forever = await create_key(server.owner, scopes=["keys:write"])
    err = await refused(grpc.StatusCode.PERMISSION_DENIED, rotate(short, forever.api_key.id))
    assert reason_of(err) == "EXPIRY_ESCALATION"
    await whoami(server.client(forever.secret))  # not rotated
    # itself, or a key ending no later than it, it may rotate
    assert (await rotate(short, short_resp.api_key.id, grace_s=60)).secret
    mine = await create_key(short, scopes=["keys:write"])
    assert (await rotate(short, mine.api_key.id)).secret


# --- reading ----------------------------------------------------------------------------------


async def test_list_pages_through_every_key_newest_first(server: RunningServer) -> None:
    o = server.owner
    project = await server.project()
    made = [(await create_key(o, project=project, name=f"k{i}")).api_key.id for i in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await o.keys.ListApiKeys(
            keys_pb2.ListApiKeysRequest(project_id=project.id, page_size=3, page_token=token),
            metadata=o.md(),
        )
        assert len(page.api_keys) <= 3
        seen.extend(k.id for k in page.api_keys)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(made))
    everything = await o.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(), metadata=o.md())
    assert set(made) < {k.id for k in everything.api_keys}  # plus the owner key


async def test_list_filters_by_environment(server: RunningServer) -> None:
    o = server.owner
    project = await server.project()
    staging = await o.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=o.md(),
    )
    live = await create_key(o, project=project)
    test = await create_key(o, project=project, env_id=staging.id)
    by_env = await o.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(environment_id=staging.id), metadata=o.md()
    )
    assert [k.id for k in by_env.api_keys] == [test.api_key.id]
    by_project = await o.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(project_id=project.id), metadata=o.md()
    )
    assert {k.id for k in by_project.api_keys} == {live.api_key.id, test.api_key.id}


async def test_a_page_token_is_bound_to_its_filters(server: RunningServer) -> None:
    o = server.owner
    project = await server.project()
    for _ in range(3):
        await create_key(o, project=project)
    first = await o.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(project_id=project.id, page_size=1), metadata=o.md()
    )
    assert first.next_page_token
    for req in (
        keys_pb2.ListApiKeysRequest(page_token=first.next_page_token),
        keys_pb2.ListApiKeysRequest(
            project_id=project.id, show_revoked=True, page_token=first.next_page_token
        ),
        keys_pb2.ListApiKeysRequest(project_id=project.id, page_token="garbage!"),
        keys_pb2.ListApiKeysRequest(project_id=project.id, page_token=first.next_page_token[:-4]),
    ):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT, o.keys.ListApiKeys(req, metadata=o.md())
        )
        assert "page_token" in violations(err)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        o.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(page_size=-1), metadata=o.md()),
    )
    assert "page_size" in violations(err)


async def test_last_used_time_is_recorded(server: RunningServer) -> None:
    project = await server.project()
    made = await create_key(server.owner, project=project)
    assert not made.api_key.HasField("last_used_time")
    await whoami(server.client(made.secret))

    async def used() -> bool:
        got = await server.owner.keys.GetApiKey(
            keys_pb2.GetApiKeyRequest(id=made.api_key.id), metadata=server.owner.md()
        )
        return got.HasField("last_used_time")

    await wait_for(used)


# --- the secret is shown once ------------------------------------------------------------------


async def test_the_secret_never_appears_again(
    make_server: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    audit_file = tmp_path / "audit.jsonl"
    server: RunningServer = await make_server(audit_log=str(audit_file), log_level="DEBUG")
    o = server.owner
    project = await server.project()
    made = await create_key(o, project=project, name="watched", scopes=["memory:read"])
    rotated = await rotate(o, made.api_key.id, grace_s=60)
    secrets = [made.secret, rotated.secret, server.owner_key]
    for s in secrets:
        await whoami(server.client(s))
    # failures too: a wrong secret, a typo
    wrong = made.secret[:-8] + "AAAAAAAA"
    for bad in (wrong, made.secret[:-1]):
        await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server.client(bad)))

    outputs: list[Any] = [
        await o.keys.GetApiKey(keys_pb2.GetApiKeyRequest(id=made.api_key.id), metadata=o.md()),
        await o.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(show_revoked=True), metadata=o.md()),
        await o.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=o.md()),
        await whoami(server.client(made.secret)),
        await o.keys.RevokeApiKey(
            keys_pb2.RevokeApiKeyRequest(id=made.api_key.id), metadata=o.md()
        ),
    ]
    text = "\n".join(str(m) + repr(m.SerializeToString()) for m in outputs)
    # every log record, with its structured extras, not only the formatted line
    assert any(r.name.startswith("memoryd") for r in caplog.records)
    text += "\n" + "\n".join(f"{r.getMessage()} {vars(r)!r}" for r in caplog.records)
    assert audit_file.exists()
    audit_lines = audit_file.read_text().splitlines()
    assert any(json.loads(line)["action"] == "api_key.rotate" for line in audit_lines)
    text += "\n" + "\n".join(audit_lines)
    for s in [*secrets, wrong]:
        assert s not in text
        assert secret_part(s) not in text
    # the response with the secret is the only place it showed
    assert made.api_key.prefix in text
