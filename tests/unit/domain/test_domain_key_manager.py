"""KeyManager's rules, on fakes of its ports: what a key may grant, how
long a key may live, who may revoke or rotate which key, and that a key
revoked or expired since its verification manages nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from helpers.fakes import Domain

from memoryd.domain.control import ApiKeyRecord
from memoryd.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from memoryd.domain.key_format import parse_key
from memoryd.domain.keys import IssuedKey, KeyManager
from memoryd.domain.tenancy import ORG_ONLY_SCOPES, Caller, Scope

KEY_ADMIN = (Scope.KEYS_READ, Scope.KEYS_WRITE)


def fields(err: InvalidArgument) -> set[str]:
    return {v.field for v in err.violations}


async def create(
    keys: KeyManager,
    caller: Caller,
    scopes: tuple[str, ...] = (),
    *,
    project_id: str = "",
    environment_id: str = "",
    expire_time: datetime | None = None,
) -> IssuedKey:
    return await keys.create(
        caller,
        project_id=project_id,
        environment_id=environment_id,
        name="k",
        scopes=scopes,
        expire_time=expire_time,
    )


async def owner() -> tuple[Domain, KeyManager, ApiKeyRecord, Caller]:
    d = Domain()
    record, caller = await d.org_key()
    return d, d.key_manager(), record, caller


# --- create -------------------------------------------------------------------------------------


async def test_a_key_cannot_grant_a_scope_its_creator_lacks() -> None:
    d = Domain()
    _, caller = await d.org_key(KEY_ADMIN)
    with pytest.raises(PermissionDenied) as info:
        await create(d.key_manager(), caller, (Scope.KEYS_READ, Scope.ADMIN_WRITE))
    assert info.value.reason == "SCOPE_ESCALATION"
    assert len(d.control.keys) == 1
    [event] = d.sink.events
    assert (event.action, event.outcome, event.details) == (
        "api_key.create",
        "PERMISSION_DENIED",
        {"reason": "SCOPE_ESCALATION"},
    )


async def test_memory_star_is_granted_only_by_a_holder_of_memory_star() -> None:
    d = Domain()
    every_memory_scope = (
        *KEY_ADMIN,
        Scope.MEMORY_READ,
        Scope.MEMORY_ADD,
        Scope.MEMORY_UPDATE,
        Scope.MEMORY_DELETE,
        Scope.MEMORY_ALL_END_USERS,
    )
    _, caller = await d.org_key(every_memory_scope)
    prj = await d.project()
    with pytest.raises(PermissionDenied) as info:
        await create(
            d.key_manager(),
            caller,
            (Scope.MEMORY_ALL,),
            project_id=prj.id,
            environment_id=prj.environments[0].id,
        )
    assert info.value.reason == "SCOPE_ESCALATION"


@pytest.mark.parametrize("scope", sorted(ORG_ONLY_SCOPES | {Scope.ALL}))
async def test_a_data_key_cannot_hold_admin_scopes(scope: str) -> None:
    d, keys, _, caller = await owner()
    prj = await d.project()
    with pytest.raises(InvalidArgument) as info:
        await create(
            keys,
            caller,
            (Scope.MEMORY_READ, scope),
            project_id=prj.id,
            environment_id=prj.environments[0].id,
        )
    assert fields(info.value) == {"scopes[1]"}


async def test_unknown_scopes_are_refused() -> None:
    _, keys, _, caller = await owner()
    with pytest.raises(InvalidArgument) as info:
        await create(keys, caller, (Scope.ADMIN_READ, "admin:everything"))
    assert fields(info.value) == {"scopes[1]"}


async def test_a_data_key_names_both_its_project_and_its_environment() -> None:
    _, keys, _, caller = await owner()
    with pytest.raises(InvalidArgument) as info:
        await create(keys, caller, project_id="prj_app")
    assert fields(info.value) == {"environment_id"}


async def test_a_data_key_of_an_environment_of_another_project_is_not_found() -> None:
    d, keys, _, caller = await owner()
    a, b = await d.project("a"), await d.project("b")
    with pytest.raises(NotFound):
        await create(keys, caller, project_id=a.id, environment_id=b.environments[0].id)


async def test_a_data_key_gets_read_and_add_by_default() -> None:
    d, keys, _, caller = await owner()
    prj = await d.project()
    issued = await create(keys, caller, project_id=prj.id, environment_id=prj.environments[0].id)
    assert issued.record.scopes == (Scope.MEMORY_READ, Scope.MEMORY_ADD)
    assert issued.plaintext.startswith("ms_live_")


async def test_only_a_hash_of_the_secret_is_stored_and_the_plaintext_is_never_shown() -> None:
    d, keys, _, caller = await owner()
    issued = await create(keys, caller, (Scope.ADMIN_READ,))
    parsed = parse_key(issued.plaintext)
    stored = d.control.keys[parsed.key_id]
    assert await d.hasher.verify(parsed.secret, stored.secret_hash)
    assert parsed.secret not in repr(issued) + repr(stored) + repr(d.sink.events)


async def test_a_key_inherits_the_expiry_of_the_key_that_creates_it() -> None:
    d = Domain()
    until = d.clock.now() + timedelta(days=7)
    _, caller = await d.org_key(expire_time=until)
    issued = await create(d.key_manager(), caller, (Scope.ADMIN_READ,))
    assert issued.record.expire_time == until


async def test_a_key_cannot_outlive_the_key_that_creates_it() -> None:
    d = Domain()
    until = d.clock.now() + timedelta(days=7)
    _, caller = await d.org_key(expire_time=until)
    with pytest.raises(InvalidArgument) as info:
        await create(
            d.key_manager(), caller, (Scope.ADMIN_READ,), expire_time=until + timedelta(seconds=1)
        )
    assert fields(info.value) == {"expire_time"}


async def test_a_new_keys_expire_time_must_be_in_the_future() -> None:
    d, keys, _, caller = await owner()
    with pytest.raises(InvalidArgument) as info:
        await create(keys, caller, (Scope.ADMIN_READ,), expire_time=d.clock.now())
    assert fields(info.value) == {"expire_time"}


# --- who manages keys ---------------------------------------------------------------------------


async def test_data_keys_cannot_manage_keys() -> None:
    d = Domain()
    prj = await d.project()
    with pytest.raises(PermissionDenied) as info:
        await create(d.key_manager(), d.data_caller(prj, (Scope.MEMORY_ALL,)))
    assert info.value.reason == "ORG_KEY_REQUIRED"


async def test_a_key_revoked_since_its_verification_cannot_manage_keys() -> None:
    d, keys, record, caller = await owner()
    # revoked on another replica: this one still holds the verified caller
    d.control.keys[record.id] = replace(record, revoke_time=d.clock.now())
    with pytest.raises(Unauthenticated) as info:
        await create(keys, caller, (Scope.ADMIN_READ,))
    assert info.value.reason == "API_KEY_REVOKED"
    assert d.sink.events[-1].details == {"reason": "API_KEY_REVOKED"}


async def test_a_key_expired_since_its_verification_cannot_manage_keys() -> None:
    d = Domain()
    _, caller = await d.org_key(expire_time=d.clock.now() + timedelta(hours=1))
    d.clock.advance(3600)
    with pytest.raises(Unauthenticated) as info:
        await d.key_manager().revoke(caller, "anything")
    assert info.value.reason == "API_KEY_EXPIRED"


async def test_keys_of_another_organization_are_not_found() -> None:
    d, keys, _, caller = await owner()
    theirs, _ = await d.org_key(org_id="org_2")
    with pytest.raises(NotFound):
        await keys.revoke(caller, theirs.id)
    with pytest.raises(NotFound):
        await keys.get(caller, theirs.id)
    assert d.control.keys[theirs.id].revoke_time is None


# --- revoke -------------------------------------------------------------------------------------


async def test_revoking_needs_every_scope_of_the_target() -> None:
    d = Domain()
    target, _ = await d.org_key((Scope.ADMIN_WRITE,))
    _, caller = await d.org_key(KEY_ADMIN)
    with pytest.raises(PermissionDenied) as info:
        await d.key_manager().revoke(caller, target.id)
    assert info.value.reason == "SCOPE_ESCALATION"
    assert d.control.keys[target.id].revoke_time is None


async def test_revoking_marks_the_key_and_evicts_it_everywhere() -> None:
    d, keys, _, caller = await owner()
    target, _ = await d.org_key((Scope.ADMIN_READ,))
    revoked = await keys.revoke(caller, target.id)
    assert revoked.revoke_time == d.clock.now()
    assert d.invalidated.key_ids == [target.id]
    d.clock.advance(60)
    again = await keys.revoke(caller, target.id)  # idempotent: the first time stays
    assert again.revoke_time == revoked.revoke_time


async def test_the_last_active_owner_key_cannot_be_revoked() -> None:
    d, keys, record, caller = await owner()
    with pytest.raises(FailedPrecondition) as info:
        await keys.revoke(caller, record.id)
    assert info.value.reason == "LAST_OWNER_KEY"
    assert d.control.keys[record.id].revoke_time is None


async def test_an_owner_key_may_be_revoked_while_another_active_owner_remains() -> None:
    d, keys, record, caller = await owner()
    await d.org_key()
    assert (await keys.revoke(caller, record.id)).revoke_time is not None


async def test_an_expired_owner_key_does_not_count_as_another_owner() -> None:
    d, keys, record, caller = await owner()
    await d.org_key(expire_time=d.clock.now() + timedelta(hours=1))
    d.clock.advance(3600)
    with pytest.raises(FailedPrecondition) as info:
        await keys.revoke(caller, record.id)
    assert info.value.reason == "LAST_OWNER_KEY"


# --- rotate -------------------------------------------------------------------------------------


async def test_rotation_keeps_the_old_secret_valid_for_the_grace_period() -> None:
    d, keys, _, caller = await owner()
    target, _ = await d.org_key((Scope.ADMIN_READ,))
    rotated = await keys.rotate(caller, target.id, timedelta(hours=2))
    record = rotated.record
    assert record.previous_secret_hash == target.secret_hash
    assert record.previous_secret_expire_time == d.clock.now() + timedelta(hours=2)
    assert record.rotate_time == d.clock.now()
    assert await d.hasher.verify(parse_key(rotated.plaintext).secret, record.secret_hash)
    assert d.invalidated.key_ids == [target.id]


async def test_rotation_without_grace_drops_the_old_secret_at_once() -> None:
    d, keys, _, caller = await owner()
    target, _ = await d.org_key((Scope.ADMIN_READ,))
    record = (await keys.rotate(caller, target.id, None)).record
    assert (record.previous_secret_hash, record.previous_secret_expire_time) == ("", None)
    assert record.secret_hash != target.secret_hash


@pytest.mark.parametrize("grace", [timedelta(seconds=-1), timedelta(days=30, seconds=1)])
async def test_the_grace_period_is_0_to_30_days(grace: timedelta) -> None:
    d, keys, _, caller = await owner()
    target, _ = await d.org_key((Scope.ADMIN_READ,))
    with pytest.raises(InvalidArgument) as info:
        await keys.rotate(caller, target.id, grace)
    assert fields(info.value) == {"grace_period"}


async def test_a_revoked_key_does_not_rotate() -> None:
    d, keys, _, caller = await owner()
    target, _ = await d.org_key((Scope.ADMIN_READ,))
    await keys.revoke(caller, target.id)
    with pytest.raises(FailedPrecondition) as info:
        await keys.rotate(caller, target.id, None)
    assert info.value.reason == "API_KEY_REVOKED"


async def test_an_expired_key_does_not_rotate() -> None:
    d, keys, _, caller = await owner()
    target, _ = await d.org_key((Scope.ADMIN_READ,), expire_time=d.clock.now() + timedelta(days=1))
    d.clock.advance(86400)
    with pytest.raises(FailedPrecondition) as info:
        await keys.rotate(caller, target.id, None)
    assert info.value.reason == "API_KEY_EXPIRED"


async def test_a_key_cannot_rotate_a_key_that_would_outlive_it() -> None:
    d = Domain()
    target, _ = await d.org_key((Scope.ADMIN_READ,))  # never expires
    _, caller = await d.org_key(expire_time=d.clock.now() + timedelta(days=1))
    with pytest.raises(PermissionDenied) as info:
        await d.key_manager().rotate(caller, target.id, None)
    assert info.value.reason == "EXPIRY_ESCALATION"


async def test_rotating_needs_every_scope_of_the_target() -> None:
    d = Domain()
    target, _ = await d.org_key((Scope.AUDIT_READ,))
    _, caller = await d.org_key(KEY_ADMIN)
    with pytest.raises(PermissionDenied) as info:
        await d.key_manager().rotate(caller, target.id, None)
    assert info.value.reason == "SCOPE_ESCALATION"
