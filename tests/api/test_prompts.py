"""Per-environment, versioned prompts through AdminService (Create, Get, List,
Update, DeletePrompt) on a real server, with SQLite and with PostgreSQL:
versions, validation, scopes, isolation between organizations, projects and
environments, the audit trail (never the text), and `PromptManager.prompt_set`
(what an AddMessages operation reads)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from helpers.errors import reason_of, refused, violations
from helpers.servers import Client, RunningServer

from memoryd.domain.audit import Auditor
from memoryd.domain.clock import ManualClock
from memoryd.domain.conversations.extraction import PromptSet
from memoryd.domain.prompts import PromptManager
from memoryd.v1 import admin_pb2, keys_pb2, tenancy_pb2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings for the control store: SQLite in the data dir, or a fresh
    PostgreSQL database (the test fails when PostgreSQL is unreachable)."""
    if request.param == "postgresql":
        return {"database_url": request.getfixturevalue("pg_url")}
    return {}


@pytest.fixture
async def backend(make_server: Any, database: dict[str, str], tmp_path: Path) -> RunningServer:
    return await make_server(
        clock=ManualClock(), audit_log=str(tmp_path / "audit.jsonl"), **database
    )


class Env:
    """One environment of a project, and prompt calls on it as `client`."""

    def __init__(self, client: Client, project_id: str, environment_id: str) -> None:
        self.client = client
        self.project_id = project_id
        self.environment_id = environment_id

    def as_(self, client: Client) -> Env:
        return Env(client, self.project_id, self.environment_id)

    def create(self, name: str, text: str) -> Any:
        return self.client.admin.CreatePrompt(
            admin_pb2.CreatePromptRequest(
                project_id=self.project_id,
                environment_id=self.environment_id,
                prompt=admin_pb2.Prompt(name=name, text=text),
            ),
            metadata=self.client.md(),
        )

    def get(self, name: str, version: int = 0) -> Any:
        return self.client.admin.GetPrompt(
            admin_pb2.GetPromptRequest(
                project_id=self.project_id,
                environment_id=self.environment_id,
                name=name,
                version=version,
            ),
            metadata=self.client.md(),
        )

    def list(self) -> Any:
        return self.client.admin.ListPrompts(
            admin_pb2.ListPromptsRequest(
                project_id=self.project_id, environment_id=self.environment_id
            ),
            metadata=self.client.md(),
        )

    def update(self, name: str, text: str) -> Any:
        return self.client.admin.UpdatePrompt(
            admin_pb2.UpdatePromptRequest(
                project_id=self.project_id,
                environment_id=self.environment_id,
                prompt=admin_pb2.Prompt(name=name, text=text),
            ),
            metadata=self.client.md(),
        )

    def delete(self, name: str) -> Any:
        return self.client.admin.DeletePrompt(
            admin_pb2.DeletePromptRequest(
                project_id=self.project_id, environment_id=self.environment_id, name=name
            ),
            metadata=self.client.md(),
        )

    def every_call(self, name: str = "extraction") -> list[tuple[str, Callable[[], Any]]]:
        """A well-formed call of each method, to be made one by one."""
        return [
            ("CreatePrompt", lambda: self.create(name, "text")),
            ("GetPrompt", lambda: self.get(name)),
            ("GetPrompt(version)", lambda: self.get(name, 1)),
            ("ListPrompts", self.list),
            ("UpdatePrompt", lambda: self.update(name, "text")),
            ("DeletePrompt", lambda: self.delete(name)),
        ]


async def _staging(project: admin_pb2.Project, client: Client) -> Env:
    env = await client.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=client.md(),
    )
    return Env(client, project.id, env.id)


def _production(client: Client, project: admin_pb2.Project) -> Env:
    return Env(client, project.id, project.environments[0].id)


def _prompt_set(server: RunningServer) -> PromptManager:
    """A PromptManager over the server's own store, as the AddMessages job
    gets it (`prompt_set` reads only the store)."""
    store = server.app.store
    return PromptManager(store, store, Auditor(store, server.clock), server.clock)


async def test_versions_through_the_five_methods(backend: RunningServer) -> None:
    clock: ManualClock = backend.clock
    project = await backend.project()
    env = _production(backend.owner, project)
    t1 = clock.now()

    made = await env.create("extraction", "Find the facts.\n\tOne per line ✓")
    assert (made.name, made.version, made.text) == (
        "extraction",
        1,
        "Find the facts.\n\tOne per line ✓",
    )
    assert (made.project_id, made.environment_id) == (project.id, env.environment_id)
    assert made.create_time.ToDatetime().replace(tzinfo=t1.tzinfo) == t1

    clock.advance(60)
    second = await env.update("extraction", "v2")
    clock.advance(60)
    third = await env.update("extraction", "é" * 32_768)  # characters, not bytes
    assert (second.version, third.version) == (2, 3)
    assert third.create_time.ToSeconds() - made.create_time.ToSeconds() == 120

    assert await env.get("extraction") == third
    assert await env.get("extraction", 1) == made
    assert await env.get("extraction", 2) == second
    err = await refused(grpc.StatusCode.NOT_FOUND, env.get("extraction", 4))
    assert "version 4" in (err.details() or "")
    await refused(grpc.StatusCode.NOT_FOUND, env.get("extraction", 2**62))
    await refused(grpc.StatusCode.NOT_FOUND, env.get("decision"))

    err = await refused(grpc.StatusCode.ALREADY_EXISTS, env.create("extraction", "again"))
    assert "UpdatePrompt" in (err.details() or "")
    err = await refused(grpc.StatusCode.NOT_FOUND, env.update("decision", "none yet"))
    assert "CreatePrompt" in (err.details() or "")

    decision = await env.create("decision", "Decide.")
    listed = await env.list()
    assert list(listed.prompts) == [decision, third]  # current versions, by name

    await env.delete("extraction")
    for version in (0, 1, 2, 3):
        await refused(grpc.StatusCode.NOT_FOUND, env.get("extraction", version))
    await refused(grpc.StatusCode.NOT_FOUND, env.update("extraction", "gone"))
    await refused(grpc.StatusCode.NOT_FOUND, env.delete("extraction"))
    assert list((await env.list()).prompts) == [decision]
    again = await env.create("extraction", "fresh")
    assert (again.version, again.text) == (1, "fresh")


BAD_NAMES = ["", "Extraction", "summary", "extraction ", "decision\x00", "x" * 5000]


async def _invalid(call: Any, *fields: str) -> dict[str, str]:
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, call)
    found = violations(err)
    for field in fields:
        assert field in found, (field, found)
        assert field in (err.details() or "")
    return found


async def test_bad_requests_name_their_fields_and_write_nothing(backend: RunningServer) -> None:
    project = await backend.project()
    env = _production(backend.owner, project)
    await env.create("decision", "kept")

    for name in BAD_NAMES:
        for call, field in (
            (env.create(name, "text"), "prompt.name"),
            (env.update(name, "text"), "prompt.name"),
            (env.get(name), "name"),
            (env.delete(name), "name"),
        ):
            rule = (await _invalid(call, field))[field]
            assert "'extraction'" in rule and "'decision'" in rule  # what is allowed

    for text, says in (
        ("", "required"),
        (" \n\t ", "blank"),
        ("x" * 32_769, "32,768"),
        ("nul\x00inside", "NUL"),
    ):
        for call in (env.create("extraction", text), env.update("decision", text)):
            assert says in (await _invalid(call, "prompt.text"))["prompt.text"]

    no_ids = Env(backend.owner, "", "")
    for name, call in no_ids.every_call():
        found = await _invalid(call(), "project_id", "environment_id")
        assert found["project_id"] == "is required", name
    no_env = Env(backend.owner, project.id, "")
    for _, call in no_env.every_call():
        assert set(await _invalid(call(), "environment_id")) == {"environment_id"}

    await _invalid(env.get("decision", -1), "version")
    # every bad field at once
    found = await _invalid(no_ids.create("summary", ""), "project_id", "prompt.name")
    assert "prompt.text" in found

    listed = await env.list()
    assert [(p.name, p.version, p.text) for p in listed.prompts] == [("decision", 1, "kept")]


async def test_scopes_are_those_of_the_other_admin_methods(server: RunningServer) -> None:
    o = server.owner
    project = await server.project()
    env = _production(o, project)
    await env.create("extraction", "owner's")

    async def org_key(scopes: list[str]) -> Client:
        made = await o.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(name=",".join(scopes), scopes=scopes), metadata=o.md()
        )
        return o.with_key(made.secret)

    reader = env.as_(await org_key(["admin:read"]))
    assert (await reader.get("extraction")).text == "owner's"
    assert len((await reader.list()).prompts) == 1
    for name, call in reader.every_call("decision"):
        if name.startswith(("Get", "List")):
            continue
        err = await refused(grpc.StatusCode.PERMISSION_DENIED, call())
        assert reason_of(err) == "SCOPE_MISSING" and "'admin:write'" in (err.details() or "")

    writer = env.as_(await org_key(["admin:write"]))
    assert (await writer.update("extraction", "writer's")).version == 2
    for call in (writer.get("extraction"), writer.list()):
        err = await refused(grpc.StatusCode.PERMISSION_DENIED, call)
        assert "'admin:read'" in (err.details() or "")

    data = env.as_(o.with_key(await server.data_key(project, ("memory:*",))))
    for name, call in data.every_call():
        err = await refused(grpc.StatusCode.PERMISSION_DENIED, call())
        assert reason_of(err) == "ORG_KEY_REQUIRED", name
    assert (await env.get("extraction")).version == 2  # nothing else was written


async def test_another_org_project_or_environment_finds_nothing(backend: RunningServer) -> None:
    o = backend.owner
    project = await backend.project("secret")
    prod = _production(o, project)
    staging = await _staging(project, o)
    await prod.create("extraction", "A's extraction")
    await prod.create("decision", "A's decision")

    def details(err: aio.AioRpcError, *ids: str) -> str:
        text = err.details() or ""
        for i in ids:
            text = text.replace(i, "ID")
        return text

    # org B's owner key: NOT_FOUND for every call, worded as for ids that never existed
    b = await backend.new_org("org-b")
    missing = Env(b, "prj_doesnotexist00", "env_doesnotexist00")
    for (name, call), (_, never) in zip(
        prod.as_(b).every_call(), missing.every_call(), strict=True
    ):
        err = await refused(grpc.StatusCode.NOT_FOUND, call())
        none = await refused(grpc.StatusCode.NOT_FOUND, never())
        assert details(err, project.id, prod.environment_id) == details(
            none, missing.project_id, missing.environment_id
        ), name
    # B's own project with A's environment id is no way in either
    b_project = await backend.project("mine", client=b)
    for _, call in Env(b, b_project.id, prod.environment_id).every_call():
        await refused(grpc.StatusCode.NOT_FOUND, call())

    # odd ids are just ids that do not exist
    for odd in ("x" * 5000, "nul\x00id", "' or 1=1 --"):
        for scope in ((odd, prod.environment_id), (project.id, odd)):
            for _, call in Env(o, *scope).every_call():
                await refused(grpc.StatusCode.NOT_FOUND, call())

    # within org A: an environment of another project is not the project's
    other = await backend.project("other")
    for _, call in Env(o, other.id, prod.environment_id).every_call():
        await refused(grpc.StatusCode.NOT_FOUND, call())
    for _, call in Env(o, project.id, other.environments[0].id).every_call():
        await refused(grpc.StatusCode.NOT_FOUND, call())

    # the other environment of the same project has its own (no) prompts
    assert list((await staging.list()).prompts) == []
    await refused(grpc.StatusCode.NOT_FOUND, staging.get("extraction"))
    await refused(grpc.StatusCode.NOT_FOUND, staging.get("extraction", 1))
    await refused(grpc.StatusCode.NOT_FOUND, staging.update("extraction", "x"))
    await refused(grpc.StatusCode.NOT_FOUND, staging.delete("extraction"))
    await staging.create("extraction", "staging's")
    assert [p.text for p in (await staging.list()).prompts] == ["staging's"]

    # A's prompts as they were
    listed = await prod.list()
    assert [(p.name, p.version, p.text) for p in listed.prompts] == [
        ("decision", 1, "A's decision"),
        ("extraction", 1, "A's extraction"),
    ]


async def test_changes_are_audited_without_the_text(backend: RunningServer, tmp_path: Path) -> None:
    o = backend.owner
    project = await backend.project()
    env = _production(o, project)
    secret = "TOP-SECRET-PROMPT-TEXT"
    await env.create("extraction", secret + " 1")
    await env.update("extraction", secret + " 2")
    await refused(grpc.StatusCode.NOT_FOUND, env.update("decision", secret + " 3"))
    await env.delete("extraction")
    await env.list()  # reads are not audited
    await refused(grpc.StatusCode.NOT_FOUND, env.get("extraction"))

    page = await o.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=o.md())
    prompt_events = [e for e in page.events if e.action.startswith("prompt.")]
    seen = [(e.action, e.target, e.outcome, e.details.get("version", "")) for e in prompt_events]
    assert sorted(seen) == sorted(
        [
            ("prompt.create", "extraction", "OK", "1"),
            ("prompt.update", "extraction", "OK", "2"),
            ("prompt.update", "decision", "NOT_FOUND", ""),
            ("prompt.delete", "extraction", "OK", ""),
        ]
    )
    for e in prompt_events:
        assert (e.project_id, e.environment_id) == (project.id, env.environment_id)
        assert secret not in str(e)
    filtered = await o.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="prompt.update"), metadata=o.md()
    )
    assert len(filtered.events) == 2
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["action"].startswith("prompt.") for line in lines) == 4
    assert all(secret not in line for line in lines)


async def test_prompt_set_holds_the_current_texts_and_their_versions(
    backend: RunningServer,
) -> None:
    o = backend.owner
    project = await backend.project()
    env = _production(o, project)
    staging = await _staging(project, o)
    manager = _prompt_set(backend)

    async def prompt_set(e: Env) -> PromptSet:
        return await manager.prompt_set(backend.org_id, e.project_id, e.environment_id)

    assert await prompt_set(env) == PromptSet(None, None, ())
    await env.create("extraction", "e1")
    await env.update("extraction", "e2")
    assert await prompt_set(env) == PromptSet("e2", None, ("extraction:2",))
    await env.create("decision", "d1")
    assert await prompt_set(env) == PromptSet("e2", "d1", ("extraction:2", "decision:1"))
    assert await prompt_set(staging) == PromptSet(None, None, ())
    await staging.create("decision", "staging d1")
    assert await prompt_set(staging) == PromptSet(None, "staging d1", ("decision:1",))
    await env.delete("extraction")
    assert await prompt_set(env) == PromptSet(None, "d1", ("decision:1",))
    # another organization's tenant, or a mismatched one, reads nothing of it
    assert await manager.prompt_set("org_other", project.id, env.environment_id) == PromptSet()
    assert await manager.prompt_set(backend.org_id, "prj_x", env.environment_id) == PromptSet()


async def test_deleting_the_environment_or_project_deletes_its_prompts(
    backend: RunningServer,
) -> None:
    o = backend.owner
    project = await backend.project()
    env = _production(o, project)
    staging = await _staging(project, o)
    for e in (env, staging):
        await e.create("extraction", "e")
        await e.update("extraction", "e2")
        await e.create("decision", "d")
    manager = _prompt_set(backend)

    await o.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=staging.environment_id, force=True), metadata=o.md()
    )
    # read past the API's environment check: the rows are gone, not hidden
    assert await manager.prompt_set(backend.org_id, project.id, staging.environment_id) == (
        PromptSet()
    )
    assert (await manager.prompt_set(backend.org_id, project.id, env.environment_id)).versions
    for _, call in staging.every_call():
        await refused(grpc.StatusCode.NOT_FOUND, call())

    await o.admin.DeleteProject(
        admin_pb2.DeleteProjectRequest(id=project.id, force=True), metadata=o.md()
    )
    assert await manager.prompt_set(backend.org_id, project.id, env.environment_id) == (PromptSet())
