"""Org isolation of the control plane: an org key of org B finds nothing of
org A (NOT_FOUND, exactly as for ids that never existed) and lists nothing
of it; org A's objects are untouched by B's attempts."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc import aio
from helpers.errors import refused
from helpers.servers import Client, RunningServer

from memoryd.v1 import admin_pb2, keys_pb2, tenancy_pb2


@dataclass
class OrgA:
    project: admin_pb2.Project
    staging: admin_pb2.Environment
    data_key: keys_pb2.CreateApiKeyResponse
    org_key: keys_pb2.CreateApiKeyResponse
    owner_key_id: str


@pytest.fixture
async def org_a(server: RunningServer) -> OrgA:
    o = server.owner
    project = await server.project("secret-project")
    staging = await o.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=o.md(),
    )
    data_key = await o.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            name="a-data", project_id=project.id, environment_id=staging.id
        ),
        metadata=o.md(),
    )
    org_key = await o.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="a-org", scopes=["keys:read"]), metadata=o.md()
    )
    me = await o.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=o.md())
    return OrgA(project, staging, data_key, org_key, me.key_id)


async def test_other_orgs_projects_and_environments_are_not_found(
    server: RunningServer, org_a: OrgA
) -> None:
    b: Client = await server.new_org("org-b")
    a_env_ids = [org_a.project.environments[0].id, org_a.staging.id]
    p = org_a.project.id
    missing = await refused(
        grpc.StatusCode.NOT_FOUND,
        b.admin.GetProject(admin_pb2.GetProjectRequest(id="prj_doesnotexist00"), metadata=b.md()),
    )
    err = await refused(
        grpc.StatusCode.NOT_FOUND,
        b.admin.GetProject(admin_pb2.GetProjectRequest(id=p), metadata=b.md()),
    )
    # indistinguishable from an id that never existed
    assert err.details().replace(p, "X") == missing.details().replace("prj_doesnotexist00", "X")

    await refused(
        grpc.StatusCode.NOT_FOUND,
        b.admin.ListEnvironments(admin_pb2.ListEnvironmentsRequest(project_id=p), metadata=b.md()),
    )
    update = admin_pb2.UpdateProjectRequest(project=admin_pb2.Project(id=p, display_name="pwned"))
    update.update_mask.paths.append("display_name")
    await refused(grpc.StatusCode.NOT_FOUND, b.admin.UpdateProject(update, metadata=b.md()))
    await refused(
        grpc.StatusCode.NOT_FOUND,
        b.admin.CreateEnvironment(
            admin_pb2.CreateEnvironmentRequest(
                project_id=p,
                environment=admin_pb2.Environment(
                    name="evil", kind=tenancy_pb2.ENVIRONMENT_KIND_DEV
                ),
            ),
            metadata=b.md(),
        ),
    )
    for env_id in a_env_ids:
        await refused(
            grpc.StatusCode.NOT_FOUND,
            b.admin.DeleteEnvironment(
                admin_pb2.DeleteEnvironmentRequest(id=env_id), metadata=b.md()
            ),
        )
    await refused(
        grpc.StatusCode.NOT_FOUND,
        b.admin.DeleteProject(admin_pb2.DeleteProjectRequest(id=p), metadata=b.md()),
    )

    listed = await b.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=b.md())
    assert list(listed.projects) == []

    # org A sees its project as it was
    o = server.owner
    got = await o.admin.GetProject(admin_pb2.GetProjectRequest(id=p), metadata=o.md())
    assert got.display_name == "" and len(got.environments) == 2


async def test_other_orgs_keys_are_not_found(server: RunningServer, org_a: OrgA) -> None:
    b: Client = await server.new_org("org-b")
    for key_id in (org_a.data_key.api_key.id, org_a.org_key.api_key.id, org_a.owner_key_id):
        await refused(
            grpc.StatusCode.NOT_FOUND,
            b.keys.GetApiKey(keys_pb2.GetApiKeyRequest(id=key_id), metadata=b.md()),
        )
        await refused(
            grpc.StatusCode.NOT_FOUND,
            b.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(id=key_id), metadata=b.md()),
        )
        await refused(
            grpc.StatusCode.NOT_FOUND,
            b.keys.RotateApiKey(
                keys_pb2.RotateApiKeyRequest(
                    id=key_id, grace_period=duration_pb2.Duration(seconds=60)
                ),
                metadata=b.md(),
            ),
        )
    listed = await b.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(show_revoked=True), metadata=b.md()
    )
    assert len(listed.api_keys) == 1  # its own owner key only
    assert listed.api_keys[0].id not in (
        org_a.data_key.api_key.id,
        org_a.org_key.api_key.id,
        org_a.owner_key_id,
    )
    by_project = await b.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(project_id=org_a.project.id), metadata=b.md()
    )
    assert list(by_project.api_keys) == []

    # A's keys still work, unrotated and unrevoked
    for secret in (org_a.data_key.secret, org_a.org_key.secret, server.owner_key):
        me = await b.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=(("x-api-key", secret),))
        assert me.organization_id == server.org_id


async def test_keys_cannot_be_made_for_another_orgs_environment(
    server: RunningServer, org_a: OrgA
) -> None:
    b: Client = await server.new_org("org-b")
    for env_id in (org_a.project.environments[0].id, org_a.staging.id):
        await refused(
            grpc.StatusCode.NOT_FOUND,
            b.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(
                    name="sneaky", project_id=org_a.project.id, environment_id=env_id
                ),
                metadata=b.md(),
            ),
        )
    # nor by pairing B's own project with A's environment
    b_project = await server.project("b-project", client=b)
    await refused(
        grpc.StatusCode.NOT_FOUND,
        b.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                name="sneaky", project_id=b_project.id, environment_id=org_a.staging.id
            ),
            metadata=b.md(),
        ),
    )
    # and within one org, an environment of another project is not found either
    other = await server.project("other")
    await refused(
        grpc.StatusCode.NOT_FOUND,
        server.owner.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                name="mixed", project_id=other.id, environment_id=org_a.staging.id
            ),
            metadata=server.owner.md(),
        ),
    )
    listed = await b.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(), metadata=b.md())
    assert [k.name for k in listed.api_keys] == ["owner"]


async def test_other_orgs_audit_events_are_invisible(server: RunningServer, org_a: OrgA) -> None:
    b: Client = await server.new_org("org-b")
    b_me = await b.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=b.md())
    # B's failed attempts are B's events, not A's
    await refused(
        grpc.StatusCode.NOT_FOUND,
        b.admin.GetProject(admin_pb2.GetProjectRequest(id=org_a.project.id), metadata=b.md()),
    )
    with pytest.raises(aio.AioRpcError):
        await b.admin.DeleteProject(
            admin_pb2.DeleteProjectRequest(id=org_a.project.id), metadata=b.md()
        )

    for query in (
        admin_pb2.ListAuditEventsRequest(),
        admin_pb2.ListAuditEventsRequest(project_id=org_a.project.id),
        admin_pb2.ListAuditEventsRequest(actor_key_id=org_a.owner_key_id),
        admin_pb2.ListAuditEventsRequest(action="api_key.create"),
    ):
        events = await b.admin.ListAuditEvents(query, metadata=b.md())
        for e in events.events:
            assert e.organization_id == b_me.organization_id
            assert e.actor_key_id == b_me.key_id
    own = await b.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=b.md())
    assert [(e.action, e.outcome) for e in own.events] == [("project.delete", "NOT_FOUND")]

    o = server.owner
    a_events = await o.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=o.md())
    assert {e.organization_id for e in a_events.events} == {server.org_id}
    assert "project.create" in {e.action for e in a_events.events}
    assert b_me.key_id not in {e.actor_key_id for e in a_events.events}


async def test_whoami_tells_each_org_its_own(server: RunningServer) -> None:
    b: Client = await server.new_org("org-b")
    a_me = await server.owner.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=server.owner.md())
    b_me = await b.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=b.md())
    assert (a_me.organization_name, b_me.organization_name) == ("default", "org-b")
    assert a_me.organization_id != b_me.organization_id
    assert b_me.kind == keys_pb2.KEY_KIND_ORG


async def test_other_orgs_legal_holds_are_not_found_nor_listed(
    server: RunningServer, org_a: OrgA
) -> None:
    o = server.owner
    held = await o.admin.SetLegalHold(
        admin_pb2.SetLegalHoldRequest(
            legal_hold=admin_pb2.LegalHold(
                project_id=org_a.project.id,
                environment_id=org_a.staging.id,
                end_user_id="ana",
                reason="matter",
            )
        ),
        metadata=o.md(),
    )
    b: Client = await server.new_org("org-b")
    await refused(
        grpc.StatusCode.NOT_FOUND,
        b.admin.ReleaseLegalHold(admin_pb2.ReleaseLegalHoldRequest(id=held.id), metadata=b.md()),
    )
    for query in (
        admin_pb2.ListLegalHoldsRequest(),
        admin_pb2.ListLegalHoldsRequest(project_id=org_a.project.id),
        admin_pb2.ListLegalHoldsRequest(environment_id=org_a.staging.id),
    ):
        assert list((await b.admin.ListLegalHolds(query, metadata=b.md())).legal_holds) == []
    await refused(  # B cannot hold (nor learn about) A's environment
        grpc.StatusCode.NOT_FOUND,
        b.admin.SetLegalHold(
            admin_pb2.SetLegalHoldRequest(
                legal_hold=admin_pb2.LegalHold(
                    project_id=org_a.project.id, environment_id=org_a.staging.id, reason="x"
                )
            ),
            metadata=b.md(),
        ),
    )
    mine = await o.admin.ListLegalHolds(admin_pb2.ListLegalHoldsRequest(), metadata=o.md())
    assert [h.id for h in mine.legal_holds] == [held.id]  # untouched by B's attempts
