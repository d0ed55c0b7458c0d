"""EraseEndUser on a real server: an end user with memories (and their
revisions), conversations (stored messages, operations), change-log events,
webhook deliveries to a real receiver and cached responses is erased; the
receipt counts exactly what the test made, a search of every SQL table and
of the vector store (and of the engine's files, after its vacuum) finds the
content nowhere, and other end users (same environment; same id in another
environment) keep everything. Scopes, the org-key path, zero receipts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from helpers.errors import reason_of, refused
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer
from helpers.webhook_receiver import Receiver

from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql.schema import metadata
from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2, webhooks_pb2

WAIT = duration_pb2.Duration(seconds=30)
SCOPES = ("memory:*", "webhook:read", "webhook:write")
FAST = {
    "outbound_allow_networks": "127.0.0.0/8",
    "webhook_poll_interval_s": 0.05,
    "job_poll_interval_s": 0.05,
}


async def remember(c: Client, content: str, **fields: Any) -> memory_pb2.Memory:
    resp = await c.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content), **fields),
        metadata=c.md(),
    )
    return resp.memory


async def update(c: Client, mid: str, content: str) -> None:
    req = memory_pb2.UpdateMemoryRequest(memory=memory_pb2.Memory(id=mid, content=content))
    req.update_mask.paths.append("content")
    await c.memory.UpdateMemory(req, metadata=c.md())


async def finished(c: Client, op: operations_pb2.Operation) -> operations_pb2.Operation:
    done = await c.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=c.md()
    )
    assert done.done, "the operation did not finish within the wait"
    assert done.WhichOneof("result") == "response", done.error
    return done


def receipt_of(op: operations_pb2.Operation) -> memory_pb2.ErasureReceipt:
    out = memory_pb2.ErasureReceipt()
    assert op.response.Unpack(out)
    return out


async def erase(c: Client, **fields: Any) -> memory_pb2.ErasureReceipt:
    op = await c.memory.EraseEndUser(memory_pb2.EraseEndUserRequest(**fields), metadata=c.md())
    return receipt_of(await finished(c, op))


async def listed(c: Client) -> list[memory_pb2.Memory]:
    resp = await c.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=100, include_invalidated=True), metadata=c.md()
    )
    return list(resp.memories)


async def sql_rows_with(server: RunningServer, needle: str) -> list[str]:
    """Every row of every control-store table holding `needle` (compressed
    responses read uncompressed), as "table: row"."""
    found: list[str] = []
    async with server.app.store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in await conn.execute(sa.select(table)):
                values = []
                for v in row:
                    if isinstance(v, bytes):
                        with contextlib.suppress(zlib.error):
                            v = zlib.decompress(v)
                        v = v.decode("utf-8", "replace")
                    values.append(str(v))
                if any(needle in v for v in values):
                    found.append(f"{table.name}: {values}")
    return found


def files_with(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture
async def server(make_server: MakeServer) -> RunningServer:
    return await make_server(**FAST)


async def test_erasure_reaches_every_store_and_leaves_others(make_server: MakeServer) -> None:
    # content in clear, so the SQL rows can be searched for it (with
    # encryption on, test_encryption.py greps the data dir after an erasure)
    server = await make_server(encryption=False, **FAST)
    project = await server.project("app")
    key = await server.data_key(project, SCOPES)
    alice, bob = server.client(key, "alice"), server.client(key, "bob")
    staging = await server.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=server.owner.md(),
    )
    other_key = await server.data_key(project, SCOPES, environment_id=staging.id)
    alice_elsewhere = server.client(other_key, "alice")
    with Receiver() as hook:
        whole = server.client(key)  # the environment's webhook: every end user's events
        await whole.webhooks.CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(webhook=webhooks_pb2.Webhook(url=hook.url)),
            metadata=whole.md(),
        )
        # alice: 3 memories (one with a request id), 2 updates, a conversation of 2
        a = [await remember(alice, f"ZEBRA-secret alice {i}") for i in range(2)]
        await remember(alice, "ZEBRA-secret alice cached", request_id="r-1")
        await update(alice, a[0].id, "ZEBRA-secret alice 0 v2")
        await update(alice, a[0].id, "ZEBRA-secret alice 0 v3")
        op = await alice.memory.AddMessages(
            memory_pb2.AddMessagesRequest(
                messages=[
                    memory_pb2.Message(role="user", content="ZEBRA-secret alice said one"),
                    memory_pb2.Message(role="user", content="ZEBRA-secret alice said two"),
                ]
            ),
            metadata=alice.md(),
        )
        await finished(alice, op)
        # bob and the other environment's alice keep theirs
        await remember(bob, "OKAPI bob keeps this", request_id="r-1")
        await remember(alice_elsewhere, "OKAPI alice elsewhere keeps this", request_id="r-1")
        # 9 events of alice (3 + 2 + 2 created/updated... counted below), 1 of bob
        await hook.wait_requests(8)

        receipt = await erase(alice)

    assert receipt.memories == 5
    assert receipt.revisions == 2
    assert receipt.conversation_messages == 2
    assert receipt.operations == 1
    assert receipt.change_events == 7  # 5 created, 2 updated
    assert receipt.webhook_deliveries == 7
    assert receipt.cache_entries == 1
    assert receipt.chunks == 0
    assert receipt.verified
    assert receipt.HasField("vacuum_time") and receipt.vacuum.startswith("ran")
    assert receipt.finish_time.ToDatetime() >= receipt.start_time.ToDatetime()
    tenant = f"{server.org_id}/{project.id}/{project.environments[0].id}/alice"
    assert receipt.end_user_hash == hashlib.sha256(tenant.encode()).hexdigest()
    assert receipt.digest == _digest(receipt)

    # nothing of alice is left anywhere; bob and the other alice keep everything
    assert await listed(alice) == []
    assert [m.content for m in await listed(bob)] == ["OKAPI bob keeps this"]
    assert [m.content for m in await listed(alice_elsewhere)] == [
        "OKAPI alice elsewhere keeps this"
    ]
    assert await sql_rows_with(server, "ZEBRA") == []
    assert len(await sql_rows_with(server, "OKAPI bob")) >= 2  # its change event, cache entry
    vectors: Any = server.app.vectors
    gone = Tenant(server.org_id, project.id, project.environments[0].id, "alice")
    assert await vectors.end_user_points(gone) == (0, 0)
    # The engine's files: what the vacuum leaves is reported, not asserted.
    # Measured here: the write-ahead log and one segment's payload pages still
    # hold the bytes after the vacuum ran (the engine offers no way to purge
    # them); see the README's "Erasure" section.
    left = files_with(Path(server.app.settings.data_dir) / "vectors", "ZEBRA")
    assert all("/wal/" in f or "/payload_storage/" in f for f in left), left

    # the receipt is an audit event, with counts and the digest, no content
    events = await server.owner.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="end_user.erase"), metadata=server.owner.md()
    )
    (event,) = events.events
    assert event.details["digest"] == receipt.digest and event.details["memories"] == "5"
    assert "ZEBRA" not in str(event) and "alice" not in str(event)

    # a second erasure: a valid receipt of zeros
    again = await erase(alice)
    assert again.verified and again.memories == 0 and again.change_events == 0


def _digest(r: memory_pb2.ErasureReceipt) -> str:
    names = [
        "memories",
        "revisions",
        "chunks",
        "conversation_messages",
        "operations",
        "change_events",
        "webhook_deliveries",
        "cache_entries",
        "documents",
        "export_files",
    ]

    def iso(ts: Any) -> str:
        return str(
            ts.ToDatetime()
            .replace(tzinfo=__import__("datetime").UTC)
            .isoformat(timespec="microseconds")
        )

    body = {
        "org_id": r.org_id,
        "project_id": r.project_id,
        "environment_id": r.environment_id,
        "end_user_hash": r.end_user_hash,
        "counts": {n: getattr(r, n) for n in names},
        "start_time": iso(r.start_time),
        "finish_time": iso(r.finish_time),
        "verified": r.verified,
        "vacuum_time": iso(r.vacuum_time) if r.HasField("vacuum_time") else "",
        "vacuum": r.vacuum,
    }
    canonical = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()


async def test_scopes_and_the_end_user_rule(server: RunningServer) -> None:
    project = await server.project("app")
    reader = server.client(await server.data_key(project, ("memory:read", "memory:add")), "u")
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        reader.memory.EraseEndUser(memory_pb2.EraseEndUserRequest(), metadata=reader.md()),
    )
    assert reason_of(err) == "SCOPE_MISSING"
    deleter = server.client(await server.data_key(project, ("memory:delete",)))
    await refused(  # no x-end-user-id: nobody to erase
        grpc.StatusCode.INVALID_ARGUMENT,
        deleter.memory.EraseEndUser(memory_pb2.EraseEndUserRequest(), metadata=deleter.md()),
    )
    carol = deleter.with_key(deleter.key, "carol")
    await refused(  # the header's end user, never another
        grpc.StatusCode.INVALID_ARGUMENT,
        carol.memory.EraseEndUser(
            memory_pb2.EraseEndUserRequest(end_user_id="dave"), metadata=carol.md()
        ),
    )
    receipt = await erase(carol)  # nothing to erase: a valid receipt of zeros
    assert receipt.verified and receipt.memories == 0 and receipt.digest


async def test_org_key_names_the_environment(server: RunningServer) -> None:
    project = await server.project("app")
    env_id = project.environments[0].id
    writer = server.client(await server.data_key(project), "erin")
    await remember(writer, "ZEBRA erin")
    owner = server.owner
    op = await owner.memory.EraseEndUser(
        memory_pb2.EraseEndUserRequest(
            end_user_id="erin", project_id=project.id, environment_id=env_id
        ),
        metadata=owner.md(),
    )
    assert op.name.startswith("operations/")

    async def erased() -> bool:
        return await listed(writer) == []

    await wait_for(erased, 30.0)
    await refused(  # an end-user id the header could not carry
        grpc.StatusCode.INVALID_ARGUMENT,
        owner.memory.EraseEndUser(
            memory_pb2.EraseEndUserRequest(
                end_user_id="x" * 129, project_id=project.id, environment_id=env_id
            ),
            metadata=owner.md(),
        ),
    )
    await refused(  # an org key must name the environment
        grpc.StatusCode.INVALID_ARGUMENT,
        owner.memory.EraseEndUser(
            memory_pb2.EraseEndUserRequest(end_user_id="erin"), metadata=owner.md()
        ),
    )
    other = await server.new_org()
    await refused(  # another organization's environment is NOT_FOUND
        grpc.StatusCode.NOT_FOUND,
        other.memory.EraseEndUser(
            memory_pb2.EraseEndUserRequest(
                end_user_id="erin", project_id=project.id, environment_id=env_id
            ),
            metadata=other.md(),
        ),
    )


async def test_the_watch_window_of_this_process_forgets_the_end_user(
    server: RunningServer,
) -> None:
    project = await server.project("app")
    key = await server.data_key(project)
    alice, bob = server.client(key, "alice"), server.client(key, "bob")
    hub = server.app.watchers
    assert hub is not None
    before = hub.joined
    stream = alice.memory.WatchMemories(memory_pb2.WatchMemoriesRequest(), metadata=alice.md())
    await wait_for(lambda: hub.joined > before, 10)
    await remember(alice, "ZEBRA watched one")
    await remember(alice, "ZEBRA watched two")
    await remember(bob, "OKAPI bob watched")
    seen = [await stream.read(), await stream.read()]
    assert [e.memory.content for e in seen] == ["ZEBRA watched one", "ZEBRA watched two"]
    env = project.environments[0].id
    gone = Tenant(server.org_id, project.id, env, "alice")
    kept = Tenant(server.org_id, project.id, env, "bob")
    assert hub.window.forget(gone, count_only=True) == 2

    receipt = await erase(alice)

    assert receipt.change_events == 2
    assert receipt.cache_entries == 2  # the window's copies
    assert hub.window.forget(gone, count_only=True) == 0
    assert hub.window.forget(kept, count_only=True) == 1
    stream.cancel()  # open until here: the window is kept while someone watches


async def test_erasure_reaches_documents_chunks_and_export_files(server: RunningServer) -> None:
    from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc

    project = await server.project()
    scopes = (
        "memory:*",
        "knowledge:read",
        "knowledge:write",
        "ingest:read",
        "ingest:write",
        "export:read",
        "export:write",
    )
    key = await server.data_key(project, scopes)
    alice, bob = server.client(key, "alice"), server.client(key, "bob")
    everyone = server.client(key)  # memory:* holds memory:all_end_users
    k = knowledge_pb2_grpc.KnowledgeServiceStub(alice.channel)
    for who in (alice, bob):
        await remember(who, f"{who.end_user} keeps a spare key under the mat")
        for i in range(2):
            await finished(
                who,
                await k.CreateDocument(
                    knowledge_pb2.CreateDocumentRequest(
                        text=f"{who.end_user}'s private diary, page {i}.", folder="diary"
                    ),
                    metadata=who.md(),
                ),
            )
    own = await finished(
        alice,
        await alice.memory.CreateExport(memory_pb2.CreateExportRequest(), metadata=alice.md()),
    )
    whole = await finished(
        everyone,
        await everyone.memory.CreateExport(
            memory_pb2.CreateExportRequest(), metadata=everyone.md()
        ),
    )
    bobs = await finished(
        bob, await bob.memory.CreateExport(memory_pb2.CreateExportRequest(), metadata=bob.md())
    )

    receipt = await erase(alice)
    assert receipt.documents == 2 and receipt.chunks == 2
    # her own export and the environment's export of every end user held her memories
    assert receipt.export_files == 2
    assert receipt.verified
    listed = await k.ListDocuments(knowledge_pb2.ListDocumentsRequest(), metadata=alice.md())
    assert not listed.documents
    found = await k.SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(query="private diary"), metadata=alice.md()
    )
    assert not found.results
    for reader, op in ((alice, own), (everyone, whole)):
        name = "exports/" + op.name.removeprefix("operations/")
        await refused(grpc.StatusCode.NOT_FOUND, _read_all(reader, name))
    # bob keeps his documents and his export
    bob_docs = await k.ListDocuments(knowledge_pb2.ListDocumentsRequest(), metadata=bob.md())
    assert len(bob_docs.documents) == 2
    data = await _read_all(bob, "exports/" + bobs.name.removeprefix("operations/"))
    assert b"bob keeps a spare key" in data


async def _read_all(c: Client, name: str) -> bytes:
    out = b""
    async for piece in c.memory.ReadExport(
        memory_pb2.ReadExportRequest(name=name), metadata=c.md()
    ):
        out += piece.data
    return out
