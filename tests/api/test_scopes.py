"""Every scope by every KeyService and AdminService method, as API.md's table says:
allowed, or PERMISSION_DENIED naming the missing scope. Data keys may call
WhoAmI and nothing else here.

One server for the module (the matrix is ~250 calls); each allowed mutating
call gets a fresh target made by the owner key.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from helpers.errors import reason_of
from helpers.servers import Client, fast_hasher

from memoryd.app import App, build_app
from memoryd.config import Settings
from memoryd.domain.tenancy import ALL_SCOPES, MEMORY_SCOPES
from memoryd.v1 import admin_pb2, keys_pb2, tenancy_pb2

_names = itertools.count()


def _unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class Matrix:
    app: App
    owner: Client
    project: admin_pb2.Project
    clients: dict[str, Client] = field(default_factory=dict)

    async def org_key(self, scope: str) -> Client:
        """A client whose org key holds exactly `scope`."""
        if scope not in self.clients:
            resp = await self.owner.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(name=f"only {scope}", scopes=[scope]),
                metadata=self.owner.md(),
            )
            assert resp.api_key.kind == keys_pb2.KEY_KIND_ORG
            self.clients[scope] = self.owner.with_key(resp.secret)
        return self.clients[scope]

    async def data_key(self, scopes: tuple[str, ...]) -> Client:
        name = "data " + ",".join(scopes)
        if name not in self.clients:
            resp = await self.owner.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(
                    name=name,
                    project_id=self.project.id,
                    environment_id=self.project.environments[0].id,
                    scopes=list(scopes),
                ),
                metadata=self.owner.md(),
            )
            assert resp.api_key.kind == keys_pb2.KEY_KIND_DATA
            self.clients[name] = self.owner.with_key(resp.secret)
        return self.clients[name]

    async def new_project(self) -> admin_pb2.Project:
        return await self.owner.admin.CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=_unique("p"))),
            metadata=self.owner.md(),
        )

    async def new_prompt(self) -> tuple[str, str]:
        """(project id, environment id) of a fresh environment of the matrix
        project with an `extraction` prompt (version 1), made by the owner."""
        env = await self.owner.admin.CreateEnvironment(
            admin_pb2.CreateEnvironmentRequest(
                project_id=self.project.id,
                environment=admin_pb2.Environment(
                    name=_unique("prompted"), kind=tenancy_pb2.ENVIRONMENT_KIND_DEV
                ),
            ),
            metadata=self.owner.md(),
        )
        await self.owner.admin.CreatePrompt(
            admin_pb2.CreatePromptRequest(
                project_id=self.project.id,
                environment_id=env.id,
                prompt=admin_pb2.Prompt(name="extraction", text="find facts"),
            ),
            metadata=self.owner.md(),
        )
        return self.project.id, env.id

    async def new_key_id(self) -> str:
        # holds only keys:write, so any caller allowed to manage keys may rotate it
        resp = await self.owner.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(name="target", scopes=["keys:write"]),
            metadata=self.owner.md(),
        )
        return resp.api_key.id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Matrix]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path_factory.mktemp("scopes")),
        embedding_provider="hashing",
        embedding_dimension=64,
        grace_period_s=0.5,
        shutdown_delay_s=0.0,
        log_level="WARNING",
        # the matrix must never meet a rate limit, whoever wires one in
        key_requests_per_second=1e6,
        key_burst=1_000_000,
        project_requests_per_second=1e6,
        project_burst=1_000_000,
    )
    app = await build_app(settings, hasher=fast_hasher())
    await app.start()
    assert app.bootstrapped is not None
    channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
    owner = Client(channel, app.bootstrapped.plaintext)
    project = await owner.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="matrix")),
        metadata=owner.md(),
    )
    yield Matrix(app, owner, project)
    await channel.close()
    await app.stop(0)


# A call of one method, with a valid request whose targets the owner made.
Call = Callable[[Matrix, Client], Awaitable[Any]]


async def _create_key(m: Matrix, c: Client) -> Any:
    return await c.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="made", scopes=["keys:write"]), metadata=c.md()
    )


async def _list_keys(m: Matrix, c: Client) -> Any:
    return await c.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(), metadata=c.md())


async def _get_key(m: Matrix, c: Client) -> Any:
    return await c.keys.GetApiKey(
        keys_pb2.GetApiKeyRequest(id=await m.new_key_id()), metadata=c.md()
    )


async def _revoke_key(m: Matrix, c: Client) -> Any:
    return await c.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=await m.new_key_id()), metadata=c.md()
    )


async def _rotate_key(m: Matrix, c: Client) -> Any:
    return await c.keys.RotateApiKey(
        keys_pb2.RotateApiKeyRequest(id=await m.new_key_id()), metadata=c.md()
    )


async def _who_am_i(m: Matrix, c: Client) -> Any:
    return await c.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=c.md())


async def _create_project(m: Matrix, c: Client) -> Any:
    return await c.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=_unique("made"))),
        metadata=c.md(),
    )


async def _get_project(m: Matrix, c: Client) -> Any:
    return await c.admin.GetProject(admin_pb2.GetProjectRequest(id=m.project.id), metadata=c.md())


async def _list_projects(m: Matrix, c: Client) -> Any:
    return await c.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=c.md())


async def _update_project(m: Matrix, c: Client) -> Any:
    req = admin_pb2.UpdateProjectRequest(
        project=admin_pb2.Project(id=m.project.id, display_name=_unique("Shown"))
    )
    req.update_mask.paths.append("display_name")
    return await c.admin.UpdateProject(req, metadata=c.md())


async def _delete_project(m: Matrix, c: Client) -> Any:
    target = await m.new_project()
    return await c.admin.DeleteProject(
        admin_pb2.DeleteProjectRequest(id=target.id), metadata=c.md()
    )


async def _undelete_project(m: Matrix, c: Client) -> Any:
    target = await m.new_project()
    await m.owner.admin.DeleteProject(
        admin_pb2.DeleteProjectRequest(id=target.id), metadata=m.owner.md()
    )
    return await c.admin.UndeleteProject(
        admin_pb2.UndeleteProjectRequest(id=target.id), metadata=c.md()
    )


async def _undelete_environment(m: Matrix, c: Client) -> Any:
    env = await m.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=m.project.id,
            environment=admin_pb2.Environment(
                name=_unique("back"), kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=m.owner.md(),
    )
    await m.owner.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env.id), metadata=m.owner.md()
    )
    return await c.admin.UndeleteEnvironment(
        admin_pb2.UndeleteEnvironmentRequest(id=env.id), metadata=c.md()
    )


async def _create_environment(m: Matrix, c: Client) -> Any:
    return await c.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=m.project.id,
            environment=admin_pb2.Environment(
                name=_unique("env"), kind=tenancy_pb2.ENVIRONMENT_KIND_DEV
            ),
        ),
        metadata=c.md(),
    )


async def _list_environments(m: Matrix, c: Client) -> Any:
    return await c.admin.ListEnvironments(
        admin_pb2.ListEnvironmentsRequest(project_id=m.project.id), metadata=c.md()
    )


async def _delete_environment(m: Matrix, c: Client) -> Any:
    env = await m.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=m.project.id,
            environment=admin_pb2.Environment(
                name=_unique("doomed"), kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=m.owner.md(),
    )
    return await c.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env.id), metadata=c.md()
    )


async def _get_usage(m: Matrix, c: Client) -> Any:
    return await c.admin.GetUsage(admin_pb2.GetUsageRequest(), metadata=c.md())


async def _list_audit(m: Matrix, c: Client) -> Any:
    return await c.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=c.md())


async def _create_prompt(m: Matrix, c: Client) -> Any:
    project_id, env_id = await m.new_prompt()
    return await c.admin.CreatePrompt(
        admin_pb2.CreatePromptRequest(
            project_id=project_id,
            environment_id=env_id,
            prompt=admin_pb2.Prompt(name="decision", text="decide"),
        ),
        metadata=c.md(),
    )


async def _get_prompt(m: Matrix, c: Client) -> Any:
    project_id, env_id = await m.new_prompt()
    return await c.admin.GetPrompt(
        admin_pb2.GetPromptRequest(project_id=project_id, environment_id=env_id, name="extraction"),
        metadata=c.md(),
    )


async def _list_prompts(m: Matrix, c: Client) -> Any:
    project_id, env_id = await m.new_prompt()
    return await c.admin.ListPrompts(
        admin_pb2.ListPromptsRequest(project_id=project_id, environment_id=env_id),
        metadata=c.md(),
    )


async def _update_prompt(m: Matrix, c: Client) -> Any:
    project_id, env_id = await m.new_prompt()
    return await c.admin.UpdatePrompt(
        admin_pb2.UpdatePromptRequest(
            project_id=project_id,
            environment_id=env_id,
            prompt=admin_pb2.Prompt(name="extraction", text="find more facts"),
        ),
        metadata=c.md(),
    )


async def _delete_prompt(m: Matrix, c: Client) -> Any:
    project_id, env_id = await m.new_prompt()
    return await c.admin.DeletePrompt(
        admin_pb2.DeletePromptRequest(
            project_id=project_id, environment_id=env_id, name="extraction"
        ),
        metadata=c.md(),
    )


def _hold_request(project_id: str, env_id: str) -> admin_pb2.SetLegalHoldRequest:
    return admin_pb2.SetLegalHoldRequest(
        legal_hold=admin_pb2.LegalHold(
            project_id=project_id, environment_id=env_id, end_user_id="ana", reason="matter"
        )
    )


async def _set_hold(m: Matrix, c: Client) -> Any:
    project_id, env_id = await m.new_prompt()
    return await c.admin.SetLegalHold(_hold_request(project_id, env_id), metadata=c.md())


async def _release_hold(m: Matrix, c: Client) -> Any:
    project_id, env_id = await m.new_prompt()
    held = await m.owner.admin.SetLegalHold(
        _hold_request(project_id, env_id), metadata=m.owner.md()
    )
    return await c.admin.ReleaseLegalHold(
        admin_pb2.ReleaseLegalHoldRequest(id=held.id), metadata=c.md()
    )


async def _list_holds(m: Matrix, c: Client) -> Any:
    return await c.admin.ListLegalHolds(admin_pb2.ListLegalHoldsRequest(), metadata=c.md())


async def _get_kek(m: Matrix, c: Client) -> Any:
    return await c.admin.GetEncryptionKey(admin_pb2.GetEncryptionKeyRequest(), metadata=c.md())


async def _set_kek(m: Matrix, c: Client) -> Any:
    return await c.admin.SetEncryptionKey(
        admin_pb2.SetEncryptionKeyRequest(kek_ref="local"), metadata=c.md()
    )


async def _rotate_kek(m: Matrix, c: Client) -> Any:
    return await c.admin.RotateEncryptionKey(
        admin_pb2.RotateEncryptionKeyRequest(), metadata=c.md()
    )


# method → (the scope API.md requires, or None for any key; a valid call)
METHODS: dict[str, tuple[str | None, Call]] = {
    "KeyService.CreateApiKey": ("keys:write", _create_key),
    "KeyService.ListApiKeys": ("keys:read", _list_keys),
    "KeyService.GetApiKey": ("keys:read", _get_key),
    "KeyService.RevokeApiKey": ("keys:write", _revoke_key),
    "KeyService.RotateApiKey": ("keys:write", _rotate_key),
    "KeyService.WhoAmI": (None, _who_am_i),
    "AdminService.CreateProject": ("admin:write", _create_project),
    "AdminService.GetProject": ("admin:read", _get_project),
    "AdminService.ListProjects": ("admin:read", _list_projects),
    "AdminService.UpdateProject": ("admin:write", _update_project),
    "AdminService.DeleteProject": ("admin:write", _delete_project),
    "AdminService.CreateEnvironment": ("admin:write", _create_environment),
    "AdminService.ListEnvironments": ("admin:read", _list_environments),
    "AdminService.DeleteEnvironment": ("admin:write", _delete_environment),
    "AdminService.UndeleteEnvironment": ("admin:write", _undelete_environment),
    "AdminService.UndeleteProject": ("admin:write", _undelete_project),
    "AdminService.GetUsage": ("usage:read", _get_usage),
    "AdminService.ListAuditEvents": ("audit:read", _list_audit),
    "AdminService.CreatePrompt": ("admin:write", _create_prompt),
    "AdminService.GetPrompt": ("admin:read", _get_prompt),
    "AdminService.ListPrompts": ("admin:read", _list_prompts),
    "AdminService.UpdatePrompt": ("admin:write", _update_prompt),
    "AdminService.DeletePrompt": ("admin:write", _delete_prompt),
    "AdminService.SetLegalHold": ("admin:write", _set_hold),
    "AdminService.ReleaseLegalHold": ("admin:write", _release_hold),
    "AdminService.ListLegalHolds": ("admin:read", _list_holds),
    "AdminService.GetEncryptionKey": ("admin:read", _get_kek),
    "AdminService.SetEncryptionKey": ("admin:write", _set_kek),
    "AdminService.RotateEncryptionKey": ("admin:write", _rotate_kek),
}


def test_the_matrix_covers_every_method_of_both_services() -> None:
    for pb, service in ((keys_pb2, "KeyService"), (admin_pb2, "AdminService")):
        names = {m.name for m in pb.DESCRIPTOR.services_by_name[service].methods}
        assert {k.split(".")[1] for k in METHODS if k.startswith(service)} == names


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("scope", sorted(ALL_SCOPES))
@pytest.mark.parametrize("method", list(METHODS))
async def test_org_key_with_one_scope(matrix: Matrix, method: str, scope: str) -> None:
    needed, call = METHODS[method]
    client = await matrix.org_key(scope)
    allowed = needed is None or scope in (needed, "*")
    if allowed:
        await call(matrix, client)
        return
    with pytest.raises(aio.AioRpcError) as info:
        await call(matrix, client)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    assert reason_of(info.value) == "SCOPE_MISSING"
    assert f"'{needed}'" in (info.value.details() or "")


DATA_SCOPE_SETS = [
    ("memory:*",),
    tuple(sorted(MEMORY_SCOPES)),
    ("memory:read",),
    ("memory:read", "org:cross_project_read"),
]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("scopes", DATA_SCOPE_SETS, ids=lambda s: "+".join(s))
@pytest.mark.parametrize("method", list(METHODS))
async def test_data_key(matrix: Matrix, method: str, scopes: tuple[str, ...]) -> None:
    _, call = METHODS[method]
    client = await matrix.data_key(scopes)
    if method == "KeyService.WhoAmI":
        me = await call(matrix, client)
        assert me.kind == keys_pb2.KEY_KIND_DATA
        assert me.project_id == matrix.project.id
        assert sorted(me.scopes) == sorted(scopes)
        return
    with pytest.raises(aio.AioRpcError) as info:
        await call(matrix, client)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    assert reason_of(info.value) == "ORG_KEY_REQUIRED"
    assert "org key" in (info.value.details() or "")  # what to use instead


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("scopes", [("keys:read", "admin:read"), ("admin:write", "audit:read")])
async def test_scopes_combine(matrix: Matrix, scopes: tuple[str, ...]) -> None:
    resp = await matrix.owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="combo", scopes=list(scopes)), metadata=matrix.owner.md()
    )
    client = matrix.owner.with_key(resp.secret)
    for method, (needed, call) in METHODS.items():
        if needed is None or needed in scopes:
            await call(matrix, client)
        else:
            with pytest.raises(aio.AioRpcError) as info:
                await call(matrix, client)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            assert reason_of(info.value) == "SCOPE_MISSING", method
