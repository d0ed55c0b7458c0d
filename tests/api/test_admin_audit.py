"""The audit log: every mutating admin or key call leaves an event, whatever
its outcome, queryable with ListAuditEvents and mirrored to a JSONL file."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio
from helpers.errors import violations
from helpers.servers import Client, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, keys_pb2, memory_pb2, tenancy_pb2

_rid = itertools.count()


def rid(label: str) -> str:
    return f"{label}-{next(_rid)}"


def md(client: Client, request_id: str) -> tuple[tuple[str, str], ...]:
    return (*client.md(), ("x-request-id", request_id))


async def events(client: Client, **filters: Any) -> list[admin_pb2.AuditEvent]:
    out: list[admin_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await client.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_token=token, **filters), metadata=client.md()
        )
        out.extend(page.events)
        token = page.next_page_token
        if not token:
            return out


def by_request(evs: list[admin_pb2.AuditEvent], request_id: str) -> admin_pb2.AuditEvent:
    found = [e for e in evs if e.request_id == request_id]
    assert len(found) == 1, (request_id, [(e.action, e.request_id) for e in evs])
    return found[0]


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def test_every_mutating_call_is_audited_with_who_what_where(
    make_server: Any, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    server: RunningServer = await make_server(audit_log=str(audit_file))
    o = server.owner
    owner_id = (await o.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=o.md())).key_id
    expected: dict[str, tuple[str, str, str, str]] = {}  # request id → action, target, project, env

    r = rid("create-project")
    project = await o.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="audited")), metadata=md(o, r)
    )
    expected[r] = ("project.create", project.id, project.id, "")

    r = rid("update-project")
    req = admin_pb2.UpdateProjectRequest(project=admin_pb2.Project(id=project.id, display_name="A"))
    req.update_mask.paths.append("display_name")
    await o.admin.UpdateProject(req, metadata=md(o, r))
    expected[r] = ("project.update", project.id, project.id, "")

    r = rid("create-env")
    env = await o.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=md(o, r),
    )
    expected[r] = ("environment.create", env.id, project.id, env.id)

    r = rid("create-key")
    key = await o.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="k", project_id=project.id, environment_id=env.id),
        metadata=md(o, r),
    )
    expected[r] = ("api_key.create", key.api_key.id, project.id, env.id)

    r = rid("rotate-key")
    await o.keys.RotateApiKey(
        keys_pb2.RotateApiKeyRequest(
            id=key.api_key.id, grace_period=duration_pb2.Duration(seconds=5)
        ),
        metadata=md(o, r),
    )
    expected[r] = ("api_key.rotate", key.api_key.id, project.id, env.id)

    r = rid("revoke-key")
    await o.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(id=key.api_key.id), metadata=md(o, r))
    expected[r] = ("api_key.revoke", key.api_key.id, project.id, env.id)

    r = rid("create-org-key")
    org_key = await o.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="ops", scopes=["audit:read"]), metadata=md(o, r)
    )
    expected[r] = ("api_key.create", org_key.api_key.id, "", "")

    r = rid("delete-env")
    await o.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env.id), metadata=md(o, r)
    )
    expected[r] = ("environment.delete", env.id, project.id, env.id)

    r = rid("delete-project")
    await o.admin.DeleteProject(admin_pb2.DeleteProjectRequest(id=project.id), metadata=md(o, r))
    expected[r] = ("project.delete", project.id, project.id, "")

    listed = await events(o)
    times = [e.time.ToDatetime() for e in listed]
    assert times == sorted(times, reverse=True)  # newest first
    for request_id, (action, target, project_id, env_id) in expected.items():
        e = by_request(listed, request_id)
        assert (e.action, e.target, e.outcome) == (action, target, "OK"), request_id
        assert (e.project_id, e.environment_id) == (project_id, env_id), request_id
        assert e.actor_key_id == owner_id
        assert e.organization_id == server.org_id
        assert e.peer == "127.0.0.1"
        assert e.id and e.HasField("time")

    # the JSONL file holds the same events
    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    from_file = {line["id"]: line for line in lines}
    assert set(from_file) == {e.id for e in listed}
    for e in listed:
        line = from_file[e.id]
        assert (line["action"], line["target"], line["outcome"]) == (e.action, e.target, e.outcome)
        assert (line["request_id"], line["peer"]) == (e.request_id, e.peer)
        assert (line["org_id"], line["actor_key_id"]) == (e.organization_id, e.actor_key_id)
        assert (line["project_id"], line["environment_id"]) == (e.project_id, e.environment_id)
        assert datetime.fromisoformat(line["time"]) == e.time.ToDatetime(tzinfo=UTC)


async def test_failed_calls_are_audited_with_their_outcome(
    make_server: Any, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    server: RunningServer = await make_server(audit_log=str(audit_file))
    o = server.owner
    project = await server.project("target")
    reader = await o.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="reader", scopes=["admin:read", "keys:read"]),
        metadata=o.md(),
    )
    weak = server.client(reader.secret)
    data = server.client(await server.data_key(project))
    data_id = (await data.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=data.md())).key_id

    attempts: list[tuple[Client, str, Any, str, str]] = []  # who, request id, call, action, outcome
    r = rid("denied-delete")
    attempts.append(
        (
            weak,
            r,
            weak.admin.DeleteProject(
                admin_pb2.DeleteProjectRequest(id=project.id), metadata=md(weak, r)
            ),
            "project.delete",
            "PERMISSION_DENIED",
        )
    )
    r = rid("denied-key")
    attempts.append(
        (
            weak,
            r,
            weak.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="x"), metadata=md(weak, r)),
            "api_key.create",
            "PERMISSION_DENIED",
        )
    )
    r = rid("data-key-create-project")
    attempts.append(
        (
            data,
            r,
            data.admin.CreateProject(
                admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="evil")),
                metadata=md(data, r),
            ),
            "project.create",
            "PERMISSION_DENIED",
        )
    )
    r = rid("escalation")
    manager = server.client(
        (
            await o.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(name="mgr", scopes=["keys:write"]), metadata=o.md()
            )
        ).secret
    )
    attempts.append(
        (
            manager,
            r,
            manager.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(name="x", scopes=["*"]), metadata=md(manager, r)
            ),
            "api_key.create",
            "PERMISSION_DENIED",
        )
    )
    r = rid("bad-name")
    attempts.append(
        (
            o,
            r,
            o.admin.CreateProject(
                admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="Bad Name")),
                metadata=md(o, r),
            ),
            "project.create",
            "INVALID_ARGUMENT",
        )
    )
    r = rid("missing-key")
    attempts.append(
        (
            o,
            r,
            o.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(id="nosuchkey000"), metadata=md(o, r)),
            "api_key.revoke",
            "NOT_FOUND",
        )
    )
    r = rid("duplicate")
    attempts.append(
        (
            o,
            r,
            o.admin.CreateProject(
                admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="target")),
                metadata=md(o, r),
            ),
            "project.create",
            "ALREADY_EXISTS",
        )
    )
    for _, _, call, _, outcome in attempts:
        with pytest.raises(aio.AioRpcError) as info:
            await call
        assert info.value.code().name == outcome, info.value.details()

    listed = await events(o)
    ids = {
        weak.key: reader.api_key.id,
        data.key: data_id,
    }
    for who, request_id, _, action, outcome in attempts:
        e = by_request(listed, request_id)
        assert (e.action, e.outcome) == (action, outcome), request_id
        assert e.organization_id == server.org_id
        assert e.peer == "127.0.0.1"
        if who.key in ids:
            assert e.actor_key_id == ids[who.key], request_id
    missing = next(a for a in attempts if a[1].startswith("missing-key"))
    assert by_request(listed, missing[1]).target == "nosuchkey000"
    file_ids = {json.loads(line)["request_id"] for line in audit_file.read_text().splitlines()}
    assert {a[1] for a in attempts} <= file_ids


async def test_audit_filters_and_pages(make_server: Any, manual_clock: ManualClock) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    o = server.owner
    start = manual_clock.now()
    a = await server.project("a")
    manual_clock.advance(60)
    b = await server.project("b")
    manual_clock.advance(60)
    second = server.client(
        (
            await o.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(name="second", scopes=["admin:write", "admin:read"]),
                metadata=o.md(),
            )
        ).secret
    )
    second_id = (await second.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=second.md())).key_id
    manual_clock.advance(60)
    for name in ("e1", "e2", "e3"):
        await second.admin.CreateEnvironment(
            admin_pb2.CreateEnvironmentRequest(
                project_id=a.id,
                environment=admin_pb2.Environment(name=name, kind=tenancy_pb2.ENVIRONMENT_KIND_DEV),
            ),
            metadata=second.md(),
        )
    manual_clock.advance(60)
    await server.data_key(b)

    everything = await events(o)
    assert [e.action for e in everything] == [
        "api_key.create",
        "environment.create",
        "environment.create",
        "environment.create",
        "api_key.create",
        "project.create",
        "project.create",
    ]

    of_a = await events(o, project_id=a.id)
    assert [e.action for e in of_a] == ["environment.create"] * 3 + ["project.create"]
    by_actor = await events(o, actor_key_id=second_id)
    assert [e.action for e in by_actor] == ["environment.create"] * 3
    creates = await events(o, action="project.create")
    assert [e.target for e in creates] == [b.id, a.id]
    env_id = of_a[0].environment_id
    assert [e.target for e in await events(o, environment_id=env_id)] == [env_id]

    window = await events(
        o,
        start_time=ts(start + (manual_clock.now() - start) / 4),
        end_time=ts(start + (manual_clock.now() - start) * 3 / 4),
    )
    assert [e.action for e in window] == ["api_key.create", "project.create"]
    since = await events(o, start_time=ts(manual_clock.now()))
    assert [e.action for e in since] == ["api_key.create"]  # start is inclusive
    before = await events(o, end_time=ts(start + (manual_clock.now() - start) / 4))
    assert [e.target for e in before] == [a.id]

    # pages: no duplicates, no gaps, same order as one big page
    seen: list[str] = []
    token = ""
    while True:
        page = await o.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=2, page_token=token), metadata=o.md()
        )
        assert len(page.events) <= 2
        seen.extend(e.id for e in page.events)
        token = page.next_page_token
        if not token:
            break
    assert seen == [e.id for e in everything]

    # events at the same instant page correctly too
    filtered_first = await o.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="environment.create", page_size=2), metadata=o.md()
    )
    rest = await o.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(
            action="environment.create", page_size=2, page_token=filtered_first.next_page_token
        ),
        metadata=o.md(),
    )
    ids = [e.id for e in [*filtered_first.events, *rest.events]]
    assert len(ids) == len(set(ids)) == 3

    # a token belongs to its filters
    with pytest.raises(aio.AioRpcError) as info:
        await o.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(
                action="project.create", page_size=2, page_token=filtered_first.next_page_token
            ),
            metadata=o.md(),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(info.value)


async def test_a_backwards_time_range_is_invalid(server: RunningServer) -> None:
    o = server.owner
    now = datetime.now(UTC)
    with pytest.raises(aio.AioRpcError) as info:
        await o.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(start_time=ts(now), end_time=ts(now)), metadata=o.md()
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end_time" in violations(info.value)


async def test_a_generated_request_id_is_recorded_when_none_is_sent(server: RunningServer) -> None:
    o = server.owner
    call = o.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="p")), metadata=o.md()
    )
    await call
    echoed = dict(await call.trailing_metadata())["x-request-id"]
    assert echoed
    (event,) = await events(o)
    assert event.request_id == echoed


# --- memory mutations and forged events (issue 8, S6) ---------------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_memory_deletes_purges_updates_and_imports_are_audited_without_content(
    make_server: Any, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    server: RunningServer = await make_server(audit_log=str(audit_file))
    o = server.owner
    project = await server.project("mem")
    env_id = project.environments[0].id
    data = server.client(await server.data_key(project))
    data_id = (await data.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=data.md())).key_id
    carol = data.with_key(data.key, "carol")
    reader = server.client(await server.data_key(project, scopes=("memory:read",)))
    reader_id = (await reader.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=reader.md())).key_id

    def secret_memory(n: int) -> memory_pb2.Memory:
        m = memory_pb2.Memory(content=f"SECRET-CONTENT-{n}", tags=["SECRET-TAG"])
        m.metadata.update({"ssn": f"SECRET-META-{n}"})
        return m

    created = []
    for i, who in enumerate((data, data, carol)):
        resp = await who.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=secret_memory(i)), metadata=who.md()
        )
        created.append(resp.memory.id)
    expected: dict[str, tuple[str, str, str, dict[str, str]]] = {}  # rid → action, target, outcome

    r = rid("update")
    req = memory_pb2.UpdateMemoryRequest(memory=secret_memory(9))
    req.memory.id = created[0]
    req.update_mask.paths.extend(["metadata", "content"])
    await data.memory.UpdateMemory(req, metadata=md(data, r))
    expected[r] = ("memory.update", created[0], "OK", {"fields": "content,metadata"})

    r = rid("delete")
    await data.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=created[1]), metadata=md(data, r)
    )
    expected[r] = ("memory.delete", created[1], "OK", {})

    r = rid("delete-missing")
    with pytest.raises(aio.AioRpcError):
        await data.memory.DeleteMemory(
            memory_pb2.DeleteMemoryRequest(id=created[1]), metadata=md(data, r)
        )
    expected[r] = ("memory.delete", created[1], "NOT_FOUND", {"reason": "NOT_FOUND"})

    r = rid("delete-denied")
    with pytest.raises(aio.AioRpcError):
        await reader.memory.DeleteMemory(
            memory_pb2.DeleteMemoryRequest(id=created[0]), metadata=md(reader, r)
        )
    expected[r] = ("memory.delete", created[0], "PERMISSION_DENIED", {"reason": "SCOPE_MISSING"})

    r = rid("purge-dry")
    flt = memory_pb2.MemoryFilter()
    cond = flt.must.add(field="metadata.ssn")
    cond.equals.string_value = "SECRET-META-2"
    dry = await carol.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=flt, dry_run=True), metadata=md(carol, r)
    )
    assert dry.purged_count == 1
    expected[r] = (
        "memory.purge",
        "",
        "OK",
        {"count": "1", "dry_run": "true", "all": "false", "end_user_id": "carol"},
    )

    r = rid("import")

    async def stream() -> Any:
        for m in (secret_memory(5), memory_pb2.Memory(content=" "), secret_memory(6)):
            yield memory_pb2.ImportMemoriesRequest(memory=m)

    summary = await data.memory.ImportMemories(stream(), metadata=md(data, r))
    assert (summary.imported_count, summary.failed_count) == (2, 1)
    expected[r] = ("memory.import", "", "OK", {"imported": "2", "failed": "1"})

    r = rid("purge-all")
    purged = await data.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(all=True), metadata=md(data, r)
    )
    assert purged.purged_count == 4
    expected[r] = ("memory.purge", "", "OK", {"count": "4", "dry_run": "false", "all": "true"})

    listed = await events(o)
    # the data key holds memory:* (so memory:all_end_users): each of its calls
    # without x-end-user-id also leaves one `memory.all_end_users` event
    widened = {e.request_id for e in listed if e.action == "memory.all_end_users"}
    # (writes such as imports do not widen; a refused call never got that far)
    assert sorted(w.rsplit("-", 1)[0] for w in widened) == [
        "delete",
        "delete-missing",
        "purge-all",
        "update",
    ]
    mutations = [e for e in listed if e.action != "memory.all_end_users"]
    for request_id, (action, target, outcome, details) in expected.items():
        e = by_request(mutations, request_id)
        assert (e.action, e.target, e.outcome) == (action, target, outcome), request_id
        assert dict(e.details) == details, request_id
        assert (e.project_id, e.environment_id) == (project.id, env_id), request_id
        actor = reader_id if request_id.startswith("delete-denied") else data_id
        assert e.actor_key_id == actor, request_id
    # creates are the bulk of traffic and are not audited (usage metering counts them)
    assert not [e for e in listed if e.action.startswith("memory.create")]
    assert [e.action for e in await events(o, action="memory.purge")] == ["memory.purge"] * 2
    # never content, metadata or tags, in the store or in the file
    assert "SECRET" not in str(listed)
    text = audit_file.read_text()
    assert "SECRET" not in text
    from_file = {
        line["request_id"]: line
        for line in _lines(audit_file)
        if line["action"] != "memory.all_end_users"
    }
    for request_id, (_, _, _, details) in expected.items():
        assert from_file[request_id]["details"] == details


async def test_a_data_key_cannot_forge_another_actors_event(
    make_server: Any, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    server: RunningServer = await make_server(audit_log=str(audit_file))
    o = server.owner
    owner_id = (await o.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=o.md())).key_id
    project = await server.project("app")
    victim = await o.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="victim"), metadata=o.md())
    await o.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=victim.api_key.id), metadata=md(o, "owner-revoke")
    )
    data = server.client(await server.data_key(project, scopes=("memory:read",)))
    data_id = (await data.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=data.md())).key_id

    forged_line = json.dumps(
        {"actor_key_id": owner_id, "action": "api_key.revoke", "outcome": "OK"}
    )
    targets = [
        owner_id,  # what the issue saw: a revoke "of" the owner key, in the owner's request id
        f"{owner_id}\n{forged_line}",
        f"{owner_id}\r\x1b[2K{owner_id} outcome=OK",
        f"\u202e{owner_id}KO=emoctuo",
        "x\\x0a" + "y" * 5000,
    ]
    for target in targets:
        with pytest.raises(aio.AioRpcError) as info:
            await data.keys.RevokeApiKey(
                keys_pb2.RevokeApiKeyRequest(id=target), metadata=md(data, "owner-revoke")
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

    listed = await events(o, action="api_key.revoke")
    assert len(listed) == 1 + len(targets)
    # the owner key still works, and the one successful revoke is the owner's
    await o.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=o.md())
    assert [(e.actor_key_id, e.target) for e in listed if e.outcome == "OK"] == [
        (owner_id, victim.api_key.id)
    ]
    attempts = [e for e in listed if e.actor_key_id == data_id]
    assert len(attempts) == len(targets)
    for e in attempts:
        assert e.outcome == "PERMISSION_DENIED"
        assert dict(e.details) == {"reason": "ORG_KEY_REQUIRED"}
        # one printable line, bounded, where an escape cannot be forged
        assert e.target.isprintable() and len(e.target) <= 128, e.target
    recorded = {e.target for e in attempts}
    assert owner_id in recorded
    assert f"{owner_id}\\x0a{forged_line}" in recorded
    assert f"\\u202e{owner_id}KO=emoctuo" in recorded
    assert any(t.startswith("x\\\\x0a") and t.endswith("…") for t in recorded)

    # the JSON-lines file: one event per line, the same escaped strings
    lines = _lines(audit_file)
    assert len(lines) == len(audit_file.read_text().splitlines())
    revokes = [line for line in lines if line["action"] == "api_key.revoke"]
    assert len(revokes) == len(listed)
    assert [line["actor_key_id"] for line in revokes if line["outcome"] == "OK"] == [owner_id]
    assert {line["target"] for line in revokes if line["actor_key_id"] == data_id} == recorded
