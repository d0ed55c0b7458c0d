"""Bad input to AdminService and KeyService, on SQLite and on PostgreSQL:
INVALID_ARGUMENT with `google.rpc.BadRequest` field violations naming the
field, and nothing half-written."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio
from helpers.errors import violations
from helpers.servers import Client, RunningServer

from memoryd.v1 import admin_pb2, keys_pb2, tenancy_pb2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings for the control store: SQLite in the data dir, or a fresh
    PostgreSQL database (the test fails when PostgreSQL is unreachable)."""
    if request.param == "postgresql":
        return {"database_url": request.getfixturevalue("pg_url")}
    return {}


@pytest.fixture
async def backend(make_server: Any, database: dict[str, str]) -> RunningServer:
    return await make_server(**database)


async def invalid(call: Any, field: str) -> str:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.code(), err.details())
    found = violations(err)
    assert field in found, (field, found)
    assert found[field]  # a description saying what is expected
    assert field in (err.details() or "")
    return found[field]


BAD_NAMES = [
    "",
    "A",
    "Upper",
    "1starts-with-digit",
    "-dash-first",
    "has space",
    "under_score",
    "dot.ted",
    "ümlaut",
    "emoji-\U0001f600",
    "a" * 64,
    "x" * 5000,
    "nul\x00byte",
    "tab\there",
    "'; drop table projects; --",
]


async def test_bad_project_names(backend: RunningServer) -> None:
    o = backend.owner
    for name in BAD_NAMES:
        await invalid(
            o.admin.CreateProject(
                admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=name)),
                metadata=o.md(),
            ),
            "project.name",
        )
    await invalid(
        o.admin.CreateProject(admin_pb2.CreateProjectRequest(), metadata=o.md()), "project.name"
    )
    await invalid(
        o.admin.CreateProject(
            admin_pb2.CreateProjectRequest(
                project=admin_pb2.Project(name="ok", display_name="d" * 201)
            ),
            metadata=o.md(),
        ),
        "project.display_name",
    )
    listed = await o.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=o.md())
    assert list(listed.projects) == []
    # the longest and shortest good names are fine
    for name in ("a", "a" * 63, "a-1-b"):
        await backend.project(name)


async def test_several_bad_fields_are_reported_together(backend: RunningServer) -> None:
    o = backend.owner
    with pytest.raises(aio.AioRpcError) as info:
        await o.admin.CreateProject(
            admin_pb2.CreateProjectRequest(
                project=admin_pb2.Project(
                    name="Bad",
                    settings=admin_pb2.ProjectSettings(dedupe_threshold=-0.1),
                    quotas=admin_pb2.Quotas(max_memories_per_environment=-1),
                    rate_limits=admin_pb2.RateLimits(key_burst=-3),
                )
            ),
            metadata=o.md(),
        )
    assert set(violations(info.value)) == {
        "project.name",
        "project.settings.dedupe_threshold",
        "project.quotas.max_memories_per_environment",
        "project.rate_limits.key_burst",
    }


async def test_bad_environments(backend: RunningServer) -> None:
    o = backend.owner
    project = await backend.project()
    for name in BAD_NAMES:
        await invalid(
            o.admin.CreateEnvironment(
                admin_pb2.CreateEnvironmentRequest(
                    project_id=project.id,
                    environment=admin_pb2.Environment(
                        name=name, kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
                    ),
                ),
                metadata=o.md(),
            ),
            "environment.name",
        )
    for kind in (tenancy_pb2.ENVIRONMENT_KIND_UNSPECIFIED, 42):
        await invalid(
            o.admin.CreateEnvironment(
                admin_pb2.CreateEnvironmentRequest(
                    project_id=project.id, environment=admin_pb2.Environment(name="ok", kind=kind)
                ),
                metadata=o.md(),
            ),
            "environment.kind",
        )
    envs = await o.admin.ListEnvironments(
        admin_pb2.ListEnvironmentsRequest(project_id=project.id), metadata=o.md()
    )
    assert [e.name for e in envs.environments] == ["production"]


async def test_bad_keys(backend: RunningServer) -> None:
    o = backend.owner
    project = await backend.project()
    env_id = project.environments[0].id
    past = timestamp_pb2.Timestamp(seconds=1_000_000_000)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"name": "nul\x00"}, "name"),
        ({"name": "k", "scopes": ["memory:rwx"]}, "scopes[0]"),
        ({"name": "k", "scopes": ["keys:read", "admin"]}, "scopes[1]"),
        ({"name": "k", "scopes": [""]}, "scopes[0]"),
        ({"name": "k", "scopes": ["MEMORY:READ"]}, "scopes[0]"),
        ({"name": "k", "expire_time": past}, "expire_time"),
        ({"name": "k", "project_id": project.id}, "environment_id"),
        ({"name": "k", "environment_id": env_id}, "project_id"),
        (
            {
                "name": "k",
                "project_id": project.id,
                "environment_id": env_id,
                "scopes": ["admin:read"],
            },
            "scopes[0]",
        ),
    ]
    for fields, field in cases:
        await invalid(
            o.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(**fields), metadata=o.md()), field
        )
    # a name of exactly 100 characters, any script, is fine
    made = await o.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="ключ " + "k" * 95), metadata=o.md()
    )
    listed = await o.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(show_revoked=True), metadata=o.md()
    )
    assert sorted(k.name for k in listed.api_keys) == sorted(["owner", made.api_key.name])

    for seconds in (30 * 86400 + 1, -60):
        await invalid(
            o.keys.RotateApiKey(
                keys_pb2.RotateApiKeyRequest(
                    id=made.api_key.id, grace_period=duration_pb2.Duration(seconds=seconds)
                ),
                metadata=o.md(),
            ),
            "grace_period",
        )
    got = await o.keys.GetApiKey(keys_pb2.GetApiKeyRequest(id=made.api_key.id), metadata=o.md())
    assert not got.HasField("rotate_time")


async def test_bad_page_tokens_and_sizes(backend: RunningServer) -> None:
    o = backend.owner
    project = await backend.project()
    garbage = ["x", "!!!!", "eyJxIjoiYSJ9", "e30", "W10", "bnVsbA", "\x00", "é" * 10, "[" * 5000]
    lists: list[tuple[str, Any, Any]] = [
        ("keys", o.keys.ListApiKeys, keys_pb2.ListApiKeysRequest),
        ("projects", o.admin.ListProjects, admin_pb2.ListProjectsRequest),
        ("environments", o.admin.ListEnvironments, admin_pb2.ListEnvironmentsRequest),
        ("audit", o.admin.ListAuditEvents, admin_pb2.ListAuditEventsRequest),
    ]
    for name, method, request in lists:
        extra = {"project_id": project.id} if name == "environments" else {}
        for token in garbage:
            await invalid(method(request(page_token=token, **extra), metadata=o.md()), "page_token")
        await invalid(method(request(page_size=-5, **extra), metadata=o.md()), "page_size")
        huge = await method(request(page_size=2_000_000_000, **extra), metadata=o.md())
        assert huge.next_page_token == ""


async def test_bad_usage_dates(backend: RunningServer) -> None:
    o = backend.owner
    for field, value in (("start_date", "yesterday"), ("end_date", "2026-13-01")):
        await invalid(
            o.admin.GetUsage(admin_pb2.GetUsageRequest(**{field: value}), metadata=o.md()), field
        )


async def test_lookups_with_odd_ids_are_not_found(backend: RunningServer) -> None:
    o = backend.owner
    for odd in ("x" * 5000, "nul\x00id", "é", "' or 1=1 --"):
        for call in (
            o.admin.GetProject(admin_pb2.GetProjectRequest(id=odd), metadata=o.md()),
            o.admin.DeleteEnvironment(admin_pb2.DeleteEnvironmentRequest(id=odd), metadata=o.md()),
            o.keys.GetApiKey(keys_pb2.GetApiKeyRequest(id=odd), metadata=o.md()),
            o.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(id=odd), metadata=o.md()),
        ):
            with pytest.raises(aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, (odd[:20], info.value.details())


async def test_a_long_request_id_never_fails_the_audit(backend: RunningServer) -> None:
    o: Client = backend.owner
    lengths = (100, 101, 128, 129, 4000)
    for n in lengths:
        call = o.admin.CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=f"p{n}")),
            metadata=(*o.md(), ("x-request-id", "r" * n)),
        )
        await call
        echoed = dict(await call.trailing_metadata())["x-request-id"]
        assert echoed == "r" * n if n <= 100 else (echoed != "r" * n and len(echoed) <= 100)
    events = await o.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=o.md())
    assert [e.outcome for e in events.events] == ["OK"] * len(lengths)
    assert events.events[-1].request_id.startswith("r" * 100)


# What an organization once granted itself (issue 8, S5), field by field, with
# the server's maximum at the default settings.
SELF_GRANTED = {
    "rate_limits.project_requests_per_second": (1e15, "5000"),
    "rate_limits.key_requests_per_second": (1e15, "5000"),
    "rate_limits.project_burst": (2**31 - 1, "10000"),
    "rate_limits.key_burst": (2**31 - 1, "10000"),
    "quotas.max_memories_per_environment": (2**62, "10000000"),
    "quotas.max_content_bytes": (2**62, "32768"),
    "quotas.max_metadata_bytes": (2**62, "16384"),
}


def _overrides(values: dict[str, float]) -> admin_pb2.Project:
    out = admin_pb2.Project()
    for path, value in values.items():
        group, name = path.split(".")
        setattr(getattr(out, group), name, value if "per_second" in name else int(value))
    return out


async def test_an_org_cannot_grant_itself_limits_past_the_servers_maximums(
    backend: RunningServer,
) -> None:
    o = backend.owner
    project = await backend.project("limited")
    attack = _overrides({path: value for path, (value, _) in SELF_GRANTED.items()})
    attack.id = project.id
    req = admin_pb2.UpdateProjectRequest(project=attack)
    req.update_mask.paths.extend(SELF_GRANTED)
    with pytest.raises(aio.AioRpcError) as info:
        await o.admin.UpdateProject(req, metadata=o.md())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(info.value)
    assert set(found) == {f"project.{path}" for path in SELF_GRANTED}
    for path, (_, maximum) in SELF_GRANTED.items():
        assert f"at most {maximum}" in found[f"project.{path}"], (path, found)
    unchanged = await o.admin.GetProject(
        admin_pb2.GetProjectRequest(id=project.id), metadata=o.md()
    )
    assert unchanged.rate_limits == admin_pb2.RateLimits()
    assert unchanged.quotas == admin_pb2.Quotas()

    # a new project cannot start with them either
    draft = _overrides({path: value for path, (value, _) in SELF_GRANTED.items()})
    draft.name = "greedy"
    with pytest.raises(aio.AioRpcError) as info:
        await o.admin.CreateProject(admin_pb2.CreateProjectRequest(project=draft), metadata=o.md())
    assert set(violations(info.value)) == {f"project.{path}" for path in SELF_GRANTED}

    # the maximums themselves are allowed, one above each is not
    at_most = {path: float(maximum) for path, (_, maximum) in SELF_GRANTED.items()}
    req = admin_pb2.UpdateProjectRequest(project=_overrides(at_most))
    req.project.id = project.id
    req.update_mask.paths.extend(SELF_GRANTED)
    await o.admin.UpdateProject(req, metadata=o.md())
    for path, value in at_most.items():
        req = admin_pb2.UpdateProjectRequest(project=_overrides({path: value + 1}))
        req.project.id = project.id
        req.update_mask.paths.append(path)
        await invalid(o.admin.UpdateProject(req, metadata=o.md()), f"project.{path}")


async def test_the_maximums_an_org_may_grant_itself_are_server_settings(
    make_server: Any,
) -> None:
    server: RunningServer = await make_server(
        max_requests_per_second_override=50.0,
        max_burst_override=300,
        max_memories_per_environment_override=2_000_000,
        max_content_bytes=1000,
        max_metadata_bytes=500,
    )
    o = server.owner
    project = await server.project("tuned")
    for path, good, maximum in (
        ("rate_limits.key_requests_per_second", 50.0, "500"),  # never below a default
        ("rate_limits.project_requests_per_second", 500.0, "500"),
        ("rate_limits.key_burst", 1000, "1000"),
        ("quotas.max_memories_per_environment", 2_000_000, "2000000"),
        ("quotas.max_content_bytes", 1000, "1000"),
        ("quotas.max_metadata_bytes", 500, "500"),
    ):
        req = admin_pb2.UpdateProjectRequest(project=_overrides({path: good}))
        req.project.id = project.id
        req.update_mask.paths.append(path)
        await o.admin.UpdateProject(req, metadata=o.md())
        req = admin_pb2.UpdateProjectRequest(project=_overrides({path: float(maximum) + 1}))
        req.project.id = project.id
        req.update_mask.paths.append(path)
        description = await invalid(o.admin.UpdateProject(req, metadata=o.md()), f"project.{path}")
        assert f"at most {maximum}" in description


# Characters a name must not hold (issue 8, item 10): C0 with NUL, DEL, C1,
# bidirectional overrides and zero-width characters, separators, private use.
UNPRINTABLE = [
    "\x00",
    "\x01",
    "\x1b[31m",
    "\n",
    "\x7f",
    "\x85",
    "\x9b",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\u2028",
    "\ue000",
]


async def test_names_with_control_or_unprintable_characters_are_refused(
    backend: RunningServer,
) -> None:
    o = backend.owner
    project = await backend.project("named")
    for bad in UNPRINTABLE:
        display_name = f"Team{bad}Name"
        await invalid(
            o.admin.CreateProject(
                admin_pb2.CreateProjectRequest(
                    project=admin_pb2.Project(name="other", display_name=display_name)
                ),
                metadata=o.md(),
            ),
            "project.display_name",
        )
        req = admin_pb2.UpdateProjectRequest(
            project=admin_pb2.Project(id=project.id, display_name=display_name)
        )
        req.update_mask.paths.append("display_name")
        await invalid(o.admin.UpdateProject(req, metadata=o.md()), "project.display_name")
        await invalid(
            o.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(name=f"k{bad}"), metadata=o.md()),
            "name",
        )
    listed = await o.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=o.md())
    assert [(p.name, p.display_name) for p in listed.projects] == [("named", "")]
    keys = await o.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(), metadata=o.md())
    assert all(k.name.isprintable() for k in keys.api_keys)

    # printable text of any script, and no-break spaces, are stored exactly
    for good in ("Équipe Ünïcode", "チーム 🚀", "a\u00a0b", "quote ' \" \\ back"):
        req = admin_pb2.UpdateProjectRequest(
            project=admin_pb2.Project(id=project.id, display_name=good)
        )
        req.update_mask.paths.append("display_name")
        await o.admin.UpdateProject(req, metadata=o.md())
        got = await o.admin.GetProject(admin_pb2.GetProjectRequest(id=project.id), metadata=o.md())
        assert got.display_name == good
