"""Export jobs on a real server: CreateExport → an operation → a JSONL file
read back with ReadExport (the same memories as ExportMemories, and
re-importable), ListExports, the end-user and filter rules, scopes, the
per-export cap, expiry (an injected clock), files erased with their
environment, and the isolation of exports across organizations, projects,
environments and end users (another tenant's export is NOT_FOUND, never
listed)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, json_format
from helpers.errors import reason_of, refused
from helpers.servers import Client, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.storage.export_files import LocalExportFiles
from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2

WAIT = duration_pb2.Duration(seconds=20)  # an upper bound: done long before on any box
EXPORTING = ("memory:*", "export:read", "export:write")


async def data_client(
    server: RunningServer, scopes: tuple[str, ...] = EXPORTING, end_user: str = "", **kw: Any
) -> Client:
    project = kw.pop("project", None) or await server.project(kw.pop("name", "app"))
    return server.client(await server.data_key(project, scopes, **kw), end_user)


async def remember(client: Client, *texts: str, **fields: Any) -> None:
    resp = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=t, **fields))
                for t in texts
            ]
        ),
        metadata=client.md(),
    )
    assert not any(r.error.code for r in resp.results), resp


def export_files(server: RunningServer, suffix: str = ".jsonl") -> list[Path]:
    """The export files in the server's data dir."""
    return list(Path(server.app.settings.data_dir, "exports").rglob("*" + suffix))


async def export(client: Client, **fields: Any) -> operations_pb2.Operation:
    op = await client.memory.CreateExport(
        memory_pb2.CreateExportRequest(**fields), metadata=client.md()
    )
    done = await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=client.md()
    )
    assert done.done, "the export did not finish within the wait"
    return done


def export_name(op: operations_pb2.Operation) -> str:
    return "exports/" + op.name.removeprefix("operations/")


def response(op: operations_pb2.Operation) -> memory_pb2.Export:
    assert op.WhichOneof("result") == "response", op.error
    out = memory_pb2.Export()
    assert op.response.Unpack(out)
    return out


async def download(client: Client, name: str, offset: int = 0) -> bytes:
    out = b""
    async for piece in client.memory.ReadExport(
        memory_pb2.ReadExportRequest(name=name, offset=offset), metadata=client.md()
    ):
        assert piece.offset == offset + len(out)
        assert len(piece.data) <= 64 * 1024
        out += piece.data
    return out


def lines(data: bytes) -> list[memory_pb2.Memory]:
    return [json_format.Parse(line, memory_pb2.Memory()) for line in data.decode().splitlines()]


async def streamed(client: Client, **fields: Any) -> list[memory_pb2.Memory]:
    return [
        m
        async for m in client.memory.ExportMemories(
            memory_pb2.ExportMemoriesRequest(**fields), metadata=client.md()
        )
    ]


# --- the file ---------------------------------------------------------------------------


async def test_an_export_holds_what_export_memories_streams(server: RunningServer) -> None:
    client = await data_client(server)
    await remember(client, *(f"fact number {i}" for i in range(300)), tags=["t"])
    await remember(client, "a note", tags=["other"])

    op = await export(client, description="nightly")
    exported = response(op)
    data = await download(client, exported.name)

    assert exported.name == export_name(op)
    assert exported.state == memory_pb2.ExportMetadata.SUCCEEDED
    assert exported.memory_count == 301 and exported.size_bytes == len(data)
    assert exported.sha256 == hashlib.sha256(data).hexdigest()
    assert exported.description == "nightly" and not exported.expired
    assert exported.expire_time.ToDatetime() > exported.complete_time.ToDatetime()
    assert lines(data) == await streamed(client)
    meta = memory_pb2.ExportMetadata()
    assert op.metadata.Unpack(meta)
    assert (meta.memories_written, meta.bytes_written) == (301, len(data))

    # a download resumes at an offset
    assert await download(client, exported.name, offset=1000) == data[1000:]
    # the filter applies, and embeddings are included when asked
    only = memory_pb2.MemoryFilter(must=[memory_pb2.Condition(field="tags")])
    only.must[0].equals.string_value = "other"
    filtered = lines(await download(client, response(await export(client, filter=only)).name))
    assert [m.content for m in filtered] == ["a note"] and not filtered[0].embedding
    embedded = response(await export(client, filter=only, include_embeddings=True))
    assert lines(await download(client, embedded.name))[0].embedding


async def test_an_export_is_re_importable(server: RunningServer) -> None:
    source = await data_client(server)
    await remember(source, "first", "second\non two lines", "third")
    data = await download(source, response(await export(source, include_embeddings=True)).name)
    target = await data_client(server, name="target")

    async def items() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for m in lines(data):
            yield memory_pb2.ImportMemoriesRequest(memory=m)

    summary = await target.memory.ImportMemories(items(), metadata=target.md())
    assert summary.imported_count == 3 and summary.failed_count == 0
    imported = sorted(m.content for m in await streamed(target))
    assert imported == ["first", "second\non two lines", "third"]


async def test_exports_follow_the_end_user_rules_of_reads(server: RunningServer) -> None:
    project = await server.project()
    # without memory:* (which implies memory:all_end_users)
    key = await server.data_key(
        project, ("memory:read", "memory:add", "export:read", "export:write")
    )
    alice, bob = server.client(key, "alice"), server.client(key, "bob")
    nobody = server.client(key)
    await remember(alice, "alice's")
    await remember(bob, "bob's")
    await remember(nobody, "nobody's")
    for client, expected in ((alice, ["alice's"]), (bob, ["bob's"]), (nobody, ["nobody's"])):
        got = lines(await download(client, response(await export(client)).name))
        assert [m.content for m in got] == expected
    everyone = server.client(await server.data_key(project, (*EXPORTING, "memory:all_end_users")))
    got = lines(await download(everyone, response(await export(everyone)).name))
    assert sorted(m.content for m in got) == ["alice's", "bob's", "nobody's"]


async def test_list_exports_newest_first_in_pages(server: RunningServer) -> None:
    client = await data_client(server)
    await remember(client, "x")
    names = [response(await export(client)).name for _ in range(3)]
    first = await client.memory.ListExports(
        memory_pb2.ListExportsRequest(page_size=2), metadata=client.md()
    )
    assert [e.name for e in first.exports] == names[::-1][:2] and first.next_page_token
    rest = await client.memory.ListExports(
        memory_pb2.ListExportsRequest(page_size=2, page_token=first.next_page_token),
        metadata=client.md(),
    )
    assert [e.name for e in rest.exports] == names[:1] and not rest.next_page_token
    assert all(e.memory_count == 1 and e.sha256 for e in first.exports)


async def test_an_export_over_the_cap_fails_and_leaves_no_file(make_server: Any) -> None:
    server = await make_server(export_max_memories=2)
    client = await data_client(server)
    await remember(client, "a", "b", "c")
    op = await export(client)
    assert op.WhichOneof("result") == "error"
    assert op.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "narrow it with a filter" in op.error.message
    err = await refused(grpc.StatusCode.NOT_FOUND, download(client, export_name(op)))
    assert reason_of(err) == "EXPORT_NOT_READY"
    assert not export_files(server, ".jsonl*")


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "call"),
    [
        (("memory:*",), "create"),  # memory:* does not imply export scopes
        (("export:write",), "create"),  # an export reads memories: memory:read too
        (("memory:read", "export:write"), "list"),
        (("memory:read", "export:write"), "read"),
    ],
)
async def test_scopes(server: RunningServer, scopes: tuple[str, ...], call: str) -> None:
    project = await server.project()
    owner = await data_client(server, project=project)
    await remember(owner, "x")
    name = response(await export(owner)).name
    client = owner.with_key(await server.data_key(project, scopes))
    if call == "create":
        attempt: Any = client.memory.CreateExport(
            memory_pb2.CreateExportRequest(), metadata=client.md()
        )
    elif call == "list":
        attempt = client.memory.ListExports(memory_pb2.ListExportsRequest(), metadata=client.md())
    else:
        attempt = download(client, name)
    err = await refused(grpc.StatusCode.PERMISSION_DENIED, attempt)
    assert reason_of(err) == "SCOPE_MISSING"


async def test_bad_requests_are_refused_with_their_field(server: RunningServer) -> None:
    client = await data_client(server)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.CreateExport(
            memory_pb2.CreateExportRequest(description="x" * 501), metadata=client.md()
        ),
    )
    assert "description" in err.details()
    await remember(client, "x")
    name = response(await export(client)).name
    await refused(grpc.StatusCode.INVALID_ARGUMENT, download(client, name, offset=-1))
    await refused(grpc.StatusCode.INVALID_ARGUMENT, download(client, name, offset=10**9))
    await refused(grpc.StatusCode.NOT_FOUND, download(client, "exports/nope"))
    # an operation of another kind is not an export
    op = await client.memory.AddMessages(
        memory_pb2.AddMessagesRequest(messages=[memory_pb2.Message(role="user", content="hi")]),
        metadata=client.md(),
    )
    await refused(grpc.StatusCode.NOT_FOUND, download(client, export_name(op)))


# --- expiry and deletion --------------------------------------------------------------


async def test_an_export_expires_after_the_retention(make_server: Any) -> None:
    clock = ManualClock()
    server = await make_server(clock=clock, export_retention_hours=1.0)
    client = await data_client(server)
    await remember(client, "x")
    name = response(await export(client)).name
    assert await download(client, name)

    clock.advance(3601)
    err = await refused(grpc.StatusCode.NOT_FOUND, download(client, name))
    assert reason_of(err) == "EXPORT_EXPIRED"
    listed = await client.memory.ListExports(memory_pb2.ListExportsRequest(), metadata=client.md())
    assert [e.expired for e in listed.exports] == [True]

    # the sweep removes files last written before the cut-off (file times
    # are the wall clock's)
    files = LocalExportFiles(Path(server.app.settings.data_dir, "exports"), 0)
    assert files.sweep(datetime.now(UTC) - timedelta(days=1)) == 0
    assert export_files(server)
    assert files.sweep(datetime.now(UTC) + timedelta(days=1)) == 1
    assert not export_files(server)


async def test_deleting_an_environment_erases_its_export_files(server: RunningServer) -> None:
    project = await server.project()
    env = await server.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=server.owner.md(),
    )
    kept = server.client(await server.data_key(project, EXPORTING))
    gone = server.client(await server.data_key(project, EXPORTING, environment_id=env.id))
    for client in (kept, gone):
        await remember(client, "x")
        await export(client)
    assert len(export_files(server)) == 2

    await server.owner.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env.id, force=True), metadata=server.owner.md()
    )
    left = export_files(server)
    assert len(left) == 1 and env.id not in str(left[0])


# --- isolation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "who", ["other org", "other project", "other environment", "other end user"]
)
async def test_another_tenants_export_does_not_exist(server: RunningServer, who: str) -> None:
    project = await server.project()
    owner = await data_client(server, project=project, end_user="alice")
    await remember(owner, "alice's secret")
    op = await export(owner)
    if who == "other org":
        org_b = await server.new_org("org-b")
        other_project = await server.project("home", client=org_b)
        key = await server.data_key(other_project, EXPORTING, client=org_b)
        intruder = server.client(key, "alice")
    elif who == "other project":
        intruder = await data_client(server, name="elsewhere", end_user="alice")
    elif who == "other environment":
        env = await server.owner.admin.CreateEnvironment(
            admin_pb2.CreateEnvironmentRequest(
                project_id=project.id,
                environment=admin_pb2.Environment(
                    name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
                ),
            ),
            metadata=server.owner.md(),
        )
        intruder = server.client(
            await server.data_key(project, EXPORTING, environment_id=env.id), "alice"
        )
    else:
        intruder = owner.with_key(owner.key, "bob")
    for call in (
        download(intruder, export_name(op)),
        intruder.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=op.name), metadata=intruder.md()
        ),
        intruder.operations.CancelOperation(
            operations_pb2.CancelOperationRequest(name=op.name), metadata=intruder.md()
        ),
        intruder.operations.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=op.name), metadata=intruder.md()
        ),
    ):
        await refused(grpc.StatusCode.NOT_FOUND, call)
    listed = await intruder.memory.ListExports(
        memory_pb2.ListExportsRequest(), metadata=intruder.md()
    )
    assert not listed.exports
    # the intruder's own export holds nothing of alice's
    await remember(intruder, "mine")
    mine = lines(await download(intruder, response(await export(intruder)).name))
    assert [m.content for m in mine] == ["mine"]
    # and the owner's export is still there
    assert b"alice's secret" in await download(owner, export_name(op))
