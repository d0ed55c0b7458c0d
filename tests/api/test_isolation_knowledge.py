"""The isolation matrix for knowledge: another organization, project,
environment or end user never reaches a document, its folder, its chunks or
its ingest operation — NOT_FOUND exactly like a missing one, never listed,
never in SearchKnowledge — and the owner's data is untouched after every
attempt."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2
from helpers.errors import refused
from helpers.servers import Client, RunningServer

from memoryd.v1 import admin_pb2, knowledge_pb2, knowledge_pb2_grpc, tenancy_pb2

WAIT = duration_pb2.Duration(seconds=30)
KNOWING = (
    "knowledge:read",
    "knowledge:write",
    "knowledge:delete",
    "ingest:read",
    "ingest:write",
)
SECRET = "The vault combination is seven three nine, kept by the night guard."
WHO = ["other org", "other project", "other environment", "other end user", "no end user"]


def stub(client: Client) -> knowledge_pb2_grpc.KnowledgeServiceStub:
    return knowledge_pb2_grpc.KnowledgeServiceStub(client.channel)


async def owned(server: RunningServer) -> tuple[Any, Client, knowledge_pb2.Document, str]:
    """alice's document in folder "vault", with its ingest operation."""
    project = await server.project()
    owner = server.client(await server.data_key(project, KNOWING), "alice")
    op = await stub(owner).CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text=SECRET, display_name="vault.txt", folder="vault"),
        metadata=owner.md(),
    )
    done = await owner.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=owner.md()
    )
    doc = knowledge_pb2.Document()
    assert done.response.Unpack(doc) and doc.state == knowledge_pb2.Document.READY
    return project, owner, doc, op.name


async def intruder_of(server: RunningServer, project: Any, owner: Client, who: str) -> Client:
    if who == "other org":
        org_b = await server.new_org("org-b")
        other_project = await server.project("app", client=org_b)
        return server.client(await server.data_key(other_project, KNOWING, client=org_b), "alice")
    if who == "other project":
        other_project = await server.project("elsewhere")
        return server.client(await server.data_key(other_project, KNOWING), "alice")
    if who == "other environment":
        env = await server.owner.admin.CreateEnvironment(
            admin_pb2.CreateEnvironmentRequest(
                project_id=project.id,
                environment=admin_pb2.Environment(
                    name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
                ),
            ),
            metadata=server.owner.md(),
        )
        key = await server.data_key(project, KNOWING, environment_id=env.id)
        return server.client(key, "alice")
    if who == "other end user":
        return owner.with_key(owner.key, "bob")
    return owner.with_key(owner.key, "")  # no end user, without memory:all_end_users


@pytest.mark.parametrize("who", WHO)
async def test_another_tenant_never_reaches_a_document(server: RunningServer, who: str) -> None:
    project, owner, doc, op_name = await owned(server)
    intruder = await intruder_of(server, project, owner, who)
    k, md = stub(intruder), intruder.md()
    changed = knowledge_pb2.Document(name=doc.name, display_name="mine")
    for call in (
        k.GetDocument(knowledge_pb2.GetDocumentRequest(name=doc.name), metadata=md),
        k.GetDocument(knowledge_pb2.GetDocumentRequest(name=doc.id), metadata=md),
        k.UpdateDocument(
            knowledge_pb2.UpdateDocumentRequest(
                document=changed, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
            ),
            metadata=md,
        ),
        k.DeleteDocument(knowledge_pb2.DeleteDocumentRequest(name=doc.name), metadata=md),
        k.DeleteFolder(knowledge_pb2.DeleteFolderRequest(name="vault", force=True), metadata=md),
        intruder.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=op_name), metadata=md
        ),
        intruder.operations.WaitOperation(
            operations_pb2.WaitOperationRequest(name=op_name), metadata=md
        ),
        intruder.operations.CancelOperation(
            operations_pb2.CancelOperationRequest(name=op_name), metadata=md
        ),
        intruder.operations.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=op_name), metadata=md
        ),
    ):
        await refused(grpc.StatusCode.NOT_FOUND, call)

    listed = await k.ListDocuments(knowledge_pb2.ListDocumentsRequest(), metadata=md)
    assert not listed.documents
    folders = await k.ListFolders(knowledge_pb2.ListFoldersRequest(), metadata=md)
    assert not folders.folders
    ops = await intruder.operations.ListOperations(
        operations_pb2.ListOperationsRequest(), metadata=md
    )
    assert not ops.operations
    found = await k.SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(query="vault combination night guard", top_k=100),
        metadata=md,
    )
    assert all(SECRET not in c.text for c in found.results)
    assert all(c.document_id != doc.id for c in found.results)
    # the same content in the intruder's own space is a new document
    own = await k.CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text=SECRET, display_name="x", folder="vault"),
        metadata=md,
    )
    done = await intruder.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=own.name, timeout=WAIT), metadata=md
    )
    mine = knowledge_pb2.Document()
    assert done.response.Unpack(mine) and mine.id != doc.id

    # and the owner's document is still whole
    again = await stub(owner).GetDocument(
        knowledge_pb2.GetDocumentRequest(name=doc.name), metadata=owner.md()
    )
    assert again.display_name == "vault.txt" and again.state == knowledge_pb2.Document.READY
    found = await stub(owner).SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(query="vault combination", folder="vault"),
        metadata=owner.md(),
    )
    assert [c.document_id for c in found.results] == [doc.id]


async def test_a_key_with_every_end_user_reaches_them_all(server: RunningServer) -> None:
    project, _, doc, _ = await owned(server)
    admin = server.client(await server.data_key(project, (*KNOWING, "memory:all_end_users")), "")
    got = await stub(admin).GetDocument(
        knowledge_pb2.GetDocumentRequest(name=doc.name), metadata=admin.md()
    )
    assert got.end_user_id == "alice"
    listed = await stub(admin).ListDocuments(
        knowledge_pb2.ListDocumentsRequest(), metadata=admin.md()
    )
    assert [d.id for d in listed.documents] == [doc.id]


async def test_deleting_the_environment_deletes_its_documents_and_chunks(
    server: RunningServer,
) -> None:
    project = await server.project()
    env = await server.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(name="temp", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST),
        ),
        metadata=server.owner.md(),
    )
    client = server.client(await server.data_key(project, KNOWING, environment_id=env.id))
    op = await stub(client).CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text=SECRET), metadata=client.md()
    )
    await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=client.md()
    )
    await server.owner.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env.id, force=True), metadata=server.owner.md()
    )
    from datetime import UTC, datetime

    from memoryd.domain.memory import Filter
    from memoryd.domain.tenancy import Tenant

    assert server.app.chunks is not None
    tenant = Tenant(server.org_id, project.id, env.id, all_end_users=True)
    assert await server.app.chunks.count(tenant, Filter(), datetime.now(UTC)) == 0
    assert await server.app.store.list_documents(tenant, None, 10, None) == []
