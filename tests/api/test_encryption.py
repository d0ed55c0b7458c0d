"""Encryption at rest on a real server: content written through every path
(memories and their revisions, conversation messages, a knowledge document,
an export, a cached idempotent response, change events) is nowhere in
clear in the data dir; the wrong key file or a disabled KMS key answers
UNAVAILABLE (never plaintext); rotation and a switch to AWS KMS (moto's
real local KMS server) rewrap data keys and keep everything readable;
erasing an environment destroys its data key; the admin calls are scoped,
validated, audited and per organization."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2
from helpers.errors import reason_of, refused
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.app import build_app
from memoryd.config import Settings
from memoryd.crypto.kek import KeyFileError, LocalKeyFile
from memoryd.crypto.sealer import Sealer
from memoryd.domain.encryption import key_unavailable
from memoryd.domain.errors import Unavailable
from memoryd.v1 import admin_pb2, knowledge_pb2, knowledge_pb2_grpc, memory_pb2

WAIT = duration_pb2.Duration(seconds=30)
SCOPES = (
    "memory:*",
    "export:read",
    "export:write",
    "knowledge:read",
    "knowledge:write",
    "ingest:read",
    "ingest:write",
)


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def files_holding(data_dir: str, needle: str) -> list[Path]:
    """The files under `data_dir` whose bytes hold `needle` (UTF-8)."""
    raw = needle.encode()
    return [p for p in Path(data_dir).rglob("*") if p.is_file() and raw in p.read_bytes()]


async def client_of(server: RunningServer, end_user: str = "ana") -> Client:
    project = await server.project(unique("app"))
    return server.client(await server.data_key(project, SCOPES), end_user)


async def wait(client: Client, op: operations_pb2.Operation) -> operations_pb2.Operation:
    done = await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=client.md()
    )
    assert done.done and not done.HasField("error"), done
    return done


async def remember(client: Client, content: str, **fields: Any) -> memory_pb2.Memory:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content), **fields),
        metadata=client.md(),
    )
    return resp.memory


async def read(client: Client, memory_id: str) -> memory_pb2.Memory:
    return await client.memory.GetMemory(
        memory_pb2.GetMemoryRequest(id=memory_id), metadata=client.md()
    )


async def test_content_written_every_way_is_not_on_disk_in_clear(
    make_server: MakeServer,
) -> None:
    server = await make_server()
    data_dir = server.app.settings.data_dir
    client = await client_of(server)
    secret = unique("okapi")
    label = unique("label")  # metadata stays in clear: proves the search reads the files

    first = await remember(client, f"the {secret} first", request_id=str(uuid.uuid4()))
    await client.memory.UpdateMemory(
        memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(
                id=first.id,
                content=f"the {secret} second",
                metadata=struct_pb2.Struct(fields={"label": struct_pb2.Value(string_value=label)}),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["content", "metadata"]),
        ),
        metadata=client.md(),
    )
    said = await client.memory.AddMessages(
        memory_pb2.AddMessagesRequest(
            messages=[memory_pb2.Message(role="user", content=f"I keep a {secret} at home")]
        ),
        metadata=client.md(),
    )
    await wait(client, said)
    knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(server.channel)
    ingest = await knowledge.CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text=f"# Handbook\n\nThe {secret} rule applies."),
        metadata=client.md(),
    )
    await wait(client, ingest)
    export = await wait(
        client,
        await client.memory.CreateExport(memory_pb2.CreateExportRequest(), metadata=client.md()),
    )

    # everything reads back in clear through the API
    assert (await read(client, first.id)).content == f"the {secret} second"
    found = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query=secret, top_k=10), metadata=client.md()
    )
    assert any(secret in r.memory.content for r in found.results)
    chunks = await knowledge.SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(query=secret), metadata=client.md()
    )
    assert any(secret in c.text for c in chunks.results)
    exported = b"".join(
        [
            piece.data
            async for piece in client.memory.ReadExport(
                memory_pb2.ReadExportRequest(name="exports/" + export.name.split("/")[-1]),
                metadata=client.md(),
            )
        ]
    )
    assert secret.encode() in exported
    tail = b"".join(
        [
            piece.data
            async for piece in client.memory.ReadExport(
                memory_pb2.ReadExportRequest(
                    name="exports/" + export.name.split("/")[-1], offset=10
                ),
                metadata=client.md(),
            )
        ]
    )
    assert tail == exported[10:]

    await server.stop()  # flushes the engines
    assert files_holding(data_dir, label), "the metadata (clear) should be found"
    assert files_holding(data_dir, secret) == []


async def test_a_restart_with_another_key_file_answers_unavailable_never_content(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "data")
    server = await make_server(data_dir, kek_file=str(tmp_path / "right.key"))
    client = await client_of(server)
    secret = unique("secret")
    memory = await remember(client, f"the {secret}")
    key = client.key
    await server.stop()

    wrong = await make_server(
        data_dir, kek_file=str(tmp_path / "wrong.key"), bootstrap_if_empty=False
    )
    err = await refused(grpc.StatusCode.UNAVAILABLE, read(wrong.client(key, "ana"), memory.id))
    assert reason_of(err) == "ENCRYPTION_KEY_UNAVAILABLE"
    assert "fingerprint" in str(err.details())
    assert secret not in str(err.details())
    await wrong.stop()

    right = await make_server(
        data_dir, kek_file=str(tmp_path / "right.key"), bootstrap_if_empty=False
    )
    assert (await read(right.client(key, "ana"), memory.id)).content == f"the {secret}"


async def test_a_key_file_others_can_read_or_of_another_kind_stops_the_start(
    tmp_path: Path,
) -> None:
    loose = tmp_path / "loose.key"
    LocalKeyFile(loose)
    assert oct(loose.stat().st_mode & 0o777) == "0o600"
    os.chmod(loose, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        LocalKeyFile(loose)
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    os.chmod(junk, 0o600)
    with pytest.raises(KeyFileError, match="not a memoryd key file"):
        await build_app(
            Settings(
                data_dir=str(tmp_path / "d"),
                port=0,
                embedding_provider="hashing",
                embedding_dimension=64,
                kek_file=str(junk),
            )
        )


async def test_rotation_rewraps_data_keys_and_everything_still_reads(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "data")
    server = await make_server(data_dir)
    owner = server.owner
    before = await owner.admin.GetEncryptionKey(
        admin_pb2.GetEncryptionKeyRequest(), metadata=owner.md()
    )
    assert (before.kek_ref, before.version, before.data_keys, before.encryption) == (
        "local",
        1,
        0,
        True,
    )
    client = await client_of(server)
    memory = await remember(client, "a rotated fact")
    env = next(iter(await server.app.store.org_data_keys(server.org_id))).env
    wrapped_before = (await server.app.store.data_key(env)).wrapped  # type: ignore[union-attr]

    rotated = await owner.admin.RotateEncryptionKey(
        admin_pb2.RotateEncryptionKeyRequest(), metadata=owner.md()
    )
    assert (rotated.kek_ref, rotated.version, rotated.data_keys) == ("local", 2, 1)
    assert rotated.HasField("update_time")
    after = await server.app.store.data_key(env)
    assert after is not None and after.kek_version == 2 and after.wrapped != wrapped_before
    assert (await read(client, memory.id)).content == "a rotated fact"
    key = client.key
    await server.stop()

    # a new process unwraps with the rotated key (nothing cached)
    again = await make_server(data_dir, bootstrap_if_empty=False)
    assert (await read(again.client(key, "ana"), memory.id)).content == "a rotated fact"


async def test_admin_calls_are_scoped_validated_audited_and_per_organization(
    server: RunningServer,
) -> None:
    owner = server.owner
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        owner.admin.SetEncryptionKey(
            admin_pb2.SetEncryptionKeyRequest(kek_ref="vault:transit/memoryd"), metadata=owner.md()
        ),
    )
    assert "kek_ref" in str(err.details())
    data = await client_of(server)
    await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        data.admin.RotateEncryptionKey(admin_pb2.RotateEncryptionKeyRequest(), metadata=data.md()),
    )
    await remember(data, "one fact")
    await owner.admin.RotateEncryptionKey(
        admin_pb2.RotateEncryptionKeyRequest(), metadata=owner.md()
    )

    other = await server.new_org("other")
    theirs = await other.admin.GetEncryptionKey(
        admin_pb2.GetEncryptionKeyRequest(), metadata=other.md()
    )
    assert (theirs.version, theirs.data_keys) == (1, 0)  # untouched by our rotation
    ours = await owner.admin.GetEncryptionKey(
        admin_pb2.GetEncryptionKeyRequest(), metadata=owner.md()
    )
    assert (ours.version, ours.data_keys) == (2, 1)

    events = await owner.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(), metadata=owner.md()
    )
    actions = [(e.action, e.outcome) for e in events.events]
    assert ("encryption_key.rotate", "OK") in actions
    assert ("encryption_key.set", "INVALID_ARGUMENT") in actions


async def test_erasing_an_environment_destroys_its_data_key(server: RunningServer) -> None:
    project = await server.project("doomed")
    client = server.client(await server.data_key(project, SCOPES), "ana")
    await remember(client, "shredded soon")
    env = (server.org_id, project.id, project.environments[0].id)
    stored = await server.app.store.data_key(env)
    assert stored is not None
    # a sealed value of the environment, as a backup would keep it
    sealer = Sealer(server.app.store, _wrapper(server))
    await sealer.ready([env], create=False)
    copy = sealer.seal(env, "content", "shredded soon")

    await server.owner.admin.DeleteProject(
        admin_pb2.DeleteProjectRequest(id=project.id, force=True), metadata=server.owner.md()
    )
    assert await server.app.store.data_key(env) is None
    fresh = Sealer(server.app.store, _wrapper(server))
    await fresh.ready_for([(env, copy)])
    with pytest.raises(Unavailable) as gone:
        fresh.open(env, "content", copy)
    assert gone.value.reason == key_unavailable("").reason


def _wrapper(server: RunningServer) -> Any:
    from memoryd.crypto.kek import KekProviders

    return KekProviders(LocalKeyFile(Path(server.app.settings.kek_file)), None)


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's KMS server (a real HTTP endpoint speaking the AWS KMS API) on
    a free port, with test credentials; yields (endpoint URL, boto3 client,
    the server)."""
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        yield url, boto3.client("kms", endpoint_url=url, region_name="us-east-1"), moto
    finally:
        with contextlib.suppress(Exception):  # the test may have stopped it
            moto.stop()


async def test_an_organization_on_aws_kms(
    make_server: MakeServer, tmp_path: Path, kms: Any
) -> None:
    url, client_kms, moto = kms
    key_id = client_kms.create_key(Description="memoryd test")["KeyMetadata"]["KeyId"]
    data_dir = str(tmp_path / "data")
    server = await make_server(data_dir, kms_endpoint_url=url)
    owner = server.owner
    client = await client_of(server)
    memory = await remember(client, "kept under KMS")

    # a key KMS does not have: refused, nothing changed
    err = await refused(
        grpc.StatusCode.UNAVAILABLE,
        owner.admin.SetEncryptionKey(
            admin_pb2.SetEncryptionKeyRequest(kek_ref="aws-kms:" + str(uuid.uuid4())),
            metadata=owner.md(),
        ),
    )
    assert reason_of(err) == "ENCRYPTION_KEY_UNAVAILABLE"
    assert "NotFoundException" in err.details()
    unchanged = await owner.admin.GetEncryptionKey(
        admin_pb2.GetEncryptionKeyRequest(), metadata=owner.md()
    )
    assert unchanged.kek_ref == "local"

    moved = await owner.admin.SetEncryptionKey(
        admin_pb2.SetEncryptionKeyRequest(kek_ref="aws-kms:" + key_id), metadata=owner.md()
    )
    assert (moved.kek_ref, moved.version, moved.data_keys) == ("aws-kms:" + key_id, 2, 1)
    stored = next(iter(await server.app.store.org_data_keys(server.org_id)))
    assert stored.kek_ref == "aws-kms:" + key_id and stored.wrapped.startswith(b"K1")
    later = await client_of(server, "bo")  # a new environment: its key is made under KMS
    fact = await remember(later, "made under KMS")
    key, later_key = client.key, later.key
    await server.stop()

    # a new process unwraps through KMS
    again = await make_server(data_dir, kms_endpoint_url=url, bootstrap_if_empty=False)
    assert (await read(again.client(key, "ana"), memory.id)).content == "kept under KMS"
    assert (await read(again.client(later_key, "bo"), fact.id)).content == "made under KMS"
    await again.stop()

    # KMS out of reach (moto does not enforce DisableKey, so the outage is
    # the server stopped): UNAVAILABLE naming why, never the content
    moto.stop()
    cut_off = await make_server(
        data_dir, kms_endpoint_url=url, kms_timeout_s=1.0, bootstrap_if_empty=False
    )
    err = await refused(grpc.StatusCode.UNAVAILABLE, read(cut_off.client(key, "ana"), memory.id))
    assert reason_of(err) == "ENCRYPTION_KEY_UNAVAILABLE"
    assert "could not be reached" in err.details() and "kept under" not in err.details()
