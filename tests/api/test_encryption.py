"""Encryption at rest on a real server (SQLite control plane, Qdrant Edge
shards, both in the data dir): content written through every path is not
found in clear in any file of the data dir once the server has stopped;
the same writes with encryption off are found (so the search can fail);
the organization's key-encryption key (KEK) is read, changed and rotated
through AdminService (rewrapping data keys, content untouched, audited);
AWS KMS through a real local KMS endpoint (moto's server); a missing, wrong
or unreachable KEK answers UNAVAILABLE (ENCRYPTION_KEY_UNAVAILABLE) with a
clear message, never the content in clear; erasing an environment destroys
its data key; and KEK state is confined to its organization."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
import sqlalchemy as sa
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from helpers.errors import reason_of, refused, violations
from helpers.polling import wait_for
from helpers.servers import Client, RunningServer, start_server
from helpers.webhook_receiver import Receiver
from moto.server import ThreadedMotoServer

from memoryd.crypto.kek import KeyFileError
from memoryd.storage.sql.data_keys import data_keys
from memoryd.v1 import admin_pb2, knowledge_pb2, knowledge_pb2_grpc, memory_pb2, webhooks_pb2

WAIT = duration_pb2.Duration(seconds=20)  # an upper bound: done long before on any box
SCOPES = (
    "memory:*",
    "ingest:write",
    "ingest:read",
    "knowledge:read",
    "knowledge:write",
    "webhook:read",
    "webhook:write",
    "export:read",
    "export:write",
)
FAST = {
    "outbound_allow_networks": "127.0.0.0/8",
    "webhook_poll_interval_s": 0.05,
    "webhook_retry_base_s": 0.01,
    "webhook_retry_max_s": 0.05,
}
REASON = "ENCRYPTION_KEY_UNAVAILABLE"


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[RunningServer]]:
    """Servers a test starts (and may stop itself: `stop`); stopped after."""
    started: list[RunningServer] = []
    yield started
    for s in reversed(started):
        await stop(s)


async def start(started: list[RunningServer], data_dir: Path, **options: Any) -> RunningServer:
    server = await start_server(str(data_dir), **options)
    started.append(server)
    return server


async def stop(server: RunningServer) -> None:
    if not getattr(server, "stopped", False):
        server.stopped = True  # type: ignore[attr-defined]
        await server.stop()


async def data_client(
    server: RunningServer, name: str = "app", owner: Client | None = None
) -> tuple[Client, Any]:
    owner = owner or server.owner
    project = await server.project(name, client=owner)
    return server.client(await server.data_key(project, SCOPES, client=owner)), project


async def remember(client: Client, content: str) -> memory_pb2.Memory:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)),
        metadata=client.md(),
    )
    return resp.memory


async def get(client: Client, memory_id: str) -> memory_pb2.Memory:
    return await client.memory.GetMemory(
        memory_pb2.GetMemoryRequest(id=memory_id), metadata=client.md()
    )


async def waited(client: Client, op: operations_pb2.Operation) -> operations_pb2.Operation:
    done = await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=client.md()
    )
    assert done.done, "the operation did not finish within the wait"
    assert done.WhichOneof("result") == "response", done.error
    return done


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under `root` whose bytes contain `needle` (UTF-8)."""
    raw = needle.encode()
    return [
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and raw in p.read_bytes()
    ]


async def write_everything(server: RunningServer, hook: Receiver) -> dict[str, str]:
    """Content through every path that stores it; answers the unique strings
    (by what carried them), each read back in clear through the API."""
    tag = secrets.token_hex(4)
    s = {
        k: f"zq{k}{tag}marker"
        for k in ("memory", "revision", "message", "document", "webhook", "batch")
    }
    client, _ = await data_client(server)
    await client.webhooks.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(webhook=webhooks_pb2.Webhook(url=hook.url)),
        metadata=client.md(),
    )
    first = await remember(client, f"the old note {s['revision']}")
    update = memory_pb2.UpdateMemoryRequest(
        memory=memory_pb2.Memory(id=first.id, content=f"the note {s['memory']}")
    )
    update.update_mask.paths.append("content")
    updated = await client.memory.UpdateMemory(update, metadata=client.md())
    await remember(client, f"webhook body {s['webhook']}")
    await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=f"b {s['batch']}"))
            ]
        ),
        metadata=client.md(),
    )
    op = await client.memory.AddMessages(
        memory_pb2.AddMessagesRequest(
            messages=[memory_pb2.Message(role="user", content=f"I said {s['message']}")]
        ),
        metadata=client.md(),
    )
    await waited(client, op)
    knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(client.channel)
    doc_op = await knowledge.CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text=f"# Guide\n\nThe secret word is {s['document']}."),
        metadata=client.md(),
    )
    await waited(client, doc_op)

    # everything reads back in clear
    assert s["memory"] in updated.content
    revisions = await client.memory.ListMemoryRevisions(
        memory_pb2.ListMemoryRevisionsRequest(id=first.id), metadata=client.md()
    )
    assert any(s["revision"] in r.content for r in revisions.revisions)
    listed = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=100), metadata=client.md()
    )
    contents = " ".join(m.content for m in listed.memories)
    for k in ("memory", "message", "webhook", "batch"):
        assert s[k] in contents, k
    found = await knowledge.SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(query="secret word"), metadata=client.md()
    )
    assert any(s["document"] in c.text for c in found.results)
    await wait_for(lambda: any(s["webhook"] in r.body.decode() for r in list(hook.requests)), 20.0)

    # an export file, read back in clear (whole, and from an offset)
    done = await waited(
        client,
        await client.memory.CreateExport(memory_pb2.CreateExportRequest(), metadata=client.md()),
    )
    name = "exports/" + done.name.removeprefix("operations/")
    whole = await read_export(client, name)
    assert s["memory"].encode() in whole and s["batch"].encode() in whole
    assert await read_export(client, name, 17) == whole[17:]
    return s


async def read_export(client: Client, name: str, offset: int = 0) -> bytes:
    out = b""
    async for piece in client.memory.ReadExport(
        memory_pb2.ReadExportRequest(name=name, offset=offset), metadata=client.md()
    ):
        out += piece.data
    return out


@pytest.mark.parametrize("encryption", [True, False])
async def test_content_on_disk_is_not_readable_in_clear(
    servers: list[RunningServer], tmp_path: Path, encryption: bool
) -> None:
    data = tmp_path / "data"
    server = await start(servers, data, encryption=encryption, **FAST)
    with Receiver() as hook:
        strings = await write_everything(server, hook)
    await stop(server)  # the shards and the WAL flushed and closed
    found = {k: files_containing(data, v) for k, v in strings.items()}
    if encryption:
        assert found == {k: [] for k in strings}
    else:  # the same search finds every string when content is stored in clear
        assert all(found.values()), found


async def test_rotation_rewraps_data_keys_and_keeps_everything_readable(
    servers: list[RunningServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = await start(servers, data)
    owner = server.owner
    client, _ = await data_client(server)
    other, _ = await data_client(server, "other")
    m1 = await remember(client, "prefers window seats")
    m2 = await remember(other, "allergic to peanuts")
    before = await owner.admin.GetEncryptionKey(
        admin_pb2.GetEncryptionKeyRequest(), metadata=owner.md()
    )
    assert (before.kek_ref, before.version, before.data_keys) == ("local", 1, 2)
    assert before.encryption_enabled and before.stale_data_keys == 0
    rows_before = await _key_rows(server)

    rotated = await owner.admin.RotateEncryptionKey(
        admin_pb2.RotateEncryptionKeyRequest(), metadata=owner.md()
    )
    assert rotated.rewrapped_data_keys == 2
    k = rotated.encryption_key
    assert (k.kek_ref, k.version, k.data_keys, k.stale_data_keys) == ("local", 2, 2, 0)
    assert k.HasField("update_time")
    rows_after = await _key_rows(server)
    # the same data keys (so content was not re-encrypted), wrapped anew
    assert {e: r[0] for e, r in rows_after.items()} == {e: r[0] for e, r in rows_before.items()}
    assert all(rows_after[e][1] != rows_before[e][1] for e in rows_before)

    audit = await owner.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(), metadata=owner.md()
    )
    events = [e for e in audit.events if e.action == "encryption_key.rotate"]
    assert events and events[0].details["rewrapped_data_keys"] == "2"

    # a restarted server (no cached key) opens everything with the new version
    await stop(server)
    server = await start(servers, data)
    client, other = server.client(client.key), server.client(other.key)
    assert (await get(client, m1.id)).content == "prefers window seats"
    assert (await get(other, m2.id)).content == "allergic to peanuts"
    owner = server.client(owner.key)
    again = await owner.admin.RotateEncryptionKey(
        admin_pb2.RotateEncryptionKeyRequest(), metadata=owner.md()
    )
    assert again.encryption_key.version == 3 and again.rewrapped_data_keys == 2


async def _key_rows(server: RunningServer) -> dict[str, tuple[str, bytes]]:
    engine = server.app.store.engine
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(data_keys))).all()
    return {r.environment_id: (r.key_id, bytes(r.wrapped)) for r in rows}


async def test_a_different_key_file_answers_unavailable_never_content(
    servers: list[RunningServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = await start(servers, data)
    client, _ = await data_client(server)
    m = await remember(client, "the vault code is 4711")
    await stop(server)
    (data / "kek.key").rename(tmp_path / "kek.key.saved")  # a fresh key file is made
    server = await start(servers, data)
    client = server.client(client.key)
    for call in (
        get(client, m.id),
        client.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(query="vault code"), metadata=client.md()
        ),
        client.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=client.md()),
    ):
        err = await refused(grpc.StatusCode.UNAVAILABLE, call)
        assert reason_of(err) == REASON
        assert "key file" in (err.details() or "") and "4711" not in (err.details() or "")
    await stop(server)
    # the original key file back: everything opens again
    (tmp_path / "kek.key.saved").replace(data / "kek.key")
    server = await start(servers, data)
    assert (await get(server.client(client.key), m.id)).content == "the vault code is 4711"


def test_a_key_file_others_can_read_or_not_a_key_file_refuses_to_start(tmp_path: Path) -> None:
    import asyncio

    loose = tmp_path / "loose.key"
    loose.write_text("memoryd-kek-v1 " + "A" * 43 + "=\n")
    os.chmod(loose, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        asyncio.run(start_server(str(tmp_path / "d1"), kek_file=str(loose)))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    os.chmod(garbage, 0o600)
    with pytest.raises(KeyFileError, match="not a memoryd key file"):
        asyncio.run(start_server(str(tmp_path / "d2"), kek_file=str(garbage)))
    made = tmp_path / "d3" / "kek.key"
    from memoryd.crypto.kek import LocalKeyFile

    LocalKeyFile(made)
    assert made.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ThreadedMotoServer, str]]:
    """A real local AWS KMS endpoint (moto's server) on a free port."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    try:
        yield moto, f"http://{host}:{port}"
    finally:
        moto.stop()


async def test_aws_kms_key_wraps_data_keys_and_its_loss_is_unavailable(
    servers: list[RunningServer], tmp_path: Path, kms: tuple[ThreadedMotoServer, str]
) -> None:
    moto, url = kms
    key_id = boto3.client("kms", endpoint_url=url, region_name="us-east-1").create_key()[
        "KeyMetadata"
    ]["KeyId"]
    data = tmp_path / "data"
    options = {"kms_endpoint_url": url, "kms_timeout_s": 2.0}
    server = await start(servers, data, **options)
    owner = server.owner
    client, _ = await data_client(server)
    m = await remember(client, "met Bob at the harbour")

    # a key KMS does not have: UNAVAILABLE, and nothing changed
    err = await refused(
        grpc.StatusCode.UNAVAILABLE,
        owner.admin.SetEncryptionKey(
            admin_pb2.SetEncryptionKeyRequest(kek_ref="aws-kms:" + "0" * 8 + "-missing"),
            metadata=owner.md(),
        ),
    )
    assert reason_of(err) == REASON and "AWS KMS refused" in (err.details() or "")
    still = await owner.admin.GetEncryptionKey(
        admin_pb2.GetEncryptionKeyRequest(), metadata=owner.md()
    )
    assert (still.kek_ref, still.version) == ("local", 1)

    changed = await owner.admin.SetEncryptionKey(
        admin_pb2.SetEncryptionKeyRequest(kek_ref=f"aws-kms:{key_id}"), metadata=owner.md()
    )
    assert changed.rewrapped_data_keys == 1
    assert changed.encryption_key.kek_ref == f"aws-kms:{key_id}"
    assert changed.encryption_key.version == 2
    fresh, _ = await data_client(server, "fresh")  # a new environment: a KMS-wrapped key
    await remember(fresh, "a new environment's first memory")
    await stop(server)

    server = await start(servers, data, **options)  # no cached key: KMS unwraps
    assert (await get(server.client(client.key), m.id)).content == "met Bob at the harbour"
    await stop(server)

    moto.stop()  # the KMS is gone
    server = await start(servers, data, **options)
    err = await refused(grpc.StatusCode.UNAVAILABLE, get(server.client(client.key), m.id))
    assert reason_of(err) == REASON
    assert "AWS KMS could not be reached" in (err.details() or "")
    assert "harbour" not in (err.details() or "")
    newer, _ = await data_client(
        server, "newer", server.client(owner.key)
    )  # a new data key cannot be wrapped either
    err = await refused(grpc.StatusCode.UNAVAILABLE, remember(newer, "nothing stored"))
    assert reason_of(err) == REASON


async def test_set_encryption_key_refuses_unknown_references(
    servers: list[RunningServer], tmp_path: Path
) -> None:
    server = await start(servers, tmp_path / "data")
    owner = server.owner
    for bad in ("", "vault:transit/x", "aws-kms:", "aws-kms:" + "k" * 3000):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            owner.admin.SetEncryptionKey(
                admin_pb2.SetEncryptionKeyRequest(kek_ref=bad), metadata=owner.md()
            ),
        )
        assert "kek_ref" in violations(err)


async def test_erasing_an_environment_destroys_its_data_key(
    servers: list[RunningServer], tmp_path: Path
) -> None:
    server = await start(servers, tmp_path / "data")
    owner = server.owner
    client, project = await data_client(server)
    kept, _ = await data_client(server, "kept")
    await remember(client, "to be shredded")
    await remember(kept, "to be kept")
    env_id = project.environments[0].id
    assert env_id in await _key_rows(server)
    # a delete keeps the data (and its key) restorable for the window ...
    await owner.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env_id), metadata=owner.md()
    )
    assert env_id in await _key_rows(server)
    await owner.admin.UndeleteEnvironment(
        admin_pb2.UndeleteEnvironmentRequest(id=env_id), metadata=owner.md()
    )
    # ... the purge (here at once: force) destroys the key with the content
    await owner.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env_id, force=True), metadata=owner.md()
    )
    rows = await _key_rows(server)
    assert env_id not in rows and len(rows) == 1
    status = await owner.admin.GetEncryptionKey(
        admin_pb2.GetEncryptionKeyRequest(), metadata=owner.md()
    )
    assert status.data_keys == 1


async def test_key_state_is_confined_to_its_organization(
    servers: list[RunningServer], tmp_path: Path
) -> None:
    server = await start(servers, tmp_path / "data")
    a = server.owner
    client, _ = await data_client(server)
    await remember(client, "org a's memory")
    b = await server.new_org("b")
    b_status = await b.admin.GetEncryptionKey(admin_pb2.GetEncryptionKeyRequest(), metadata=b.md())
    assert (b_status.data_keys, b_status.version) == (0, 1)
    rotated = await b.admin.RotateEncryptionKey(
        admin_pb2.RotateEncryptionKeyRequest(), metadata=b.md()
    )
    assert rotated.rewrapped_data_keys == 0
    a_status = await a.admin.GetEncryptionKey(admin_pb2.GetEncryptionKeyRequest(), metadata=a.md())
    assert (a_status.data_keys, a_status.version) == (1, 1)
    assert (
        await client.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=client.md())
    ).memories
