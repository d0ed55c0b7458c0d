"""AddMessages operations survive what kills servers, with the installed
`memoryd serve`:

- kill -9 while an operation's job waits for the model: after a restart on
  the same data directory the job is taken over (once its lease ran out),
  completes, and its effect happens once;
- two `memoryd serve` processes on one PostgreSQL database share the queue:
  every operation accepted by either is done, exactly once in effect.

Waits are bounded polls (a busy machine only makes them take longer); no
assertion depends on how fast anything runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import duration_pb2
from helpers.openai_server import ScriptedOpenAI, facts_reply
from helpers.polling import wait_for
from helpers.served import Served

from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

DONE_WITHIN_S = 120.0


class Api:
    def __init__(self, served: Served, key: str) -> None:
        assert served.channel is not None
        self.md: tuple[tuple[str, str], ...] = (("x-api-key", key),)
        self.memory = memory_pb2_grpc.MemoryServiceStub(served.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(served.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(served.channel)
        self.operations = operations_grpc_pb2.OperationsStub(served.channel)


async def data_key(owner: Api) -> str:
    project = await owner.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="chat")), metadata=owner.md
    )
    created = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="runtime",
            scopes=["memory:*"],
        ),
        metadata=owner.md,
    )
    return created.secret


async def until_done(api: Api, name: str) -> operations_pb2.Operation:
    deadline = time.monotonic() + DONE_WITHIN_S
    while True:
        op = await api.operations.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(seconds=5)
            ),
            metadata=api.md,
        )
        if op.done or time.monotonic() > deadline:
            assert op.done, f"{name} not done within {DONE_WITHIN_S} s"
            return op


async def contents(api: Api) -> list[str]:
    resp = await api.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1000), metadata=api.md
    )
    return sorted(m.content for m in resp.memories)


@pytest.fixture
def llm() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as server:
        yield server


async def test_kill_9_mid_operation_the_job_completes_after_restart_with_its_effect_once(
    tmp_path: Path, llm: ScriptedOpenAI
) -> None:
    data = tmp_path / "data"
    options = (
        "--extractor",
        "llm",
        "--llm-base-url",
        llm.base_url,
        "--llm-model",
        "test-model",
        "--llm-timeout-s",
        "300",
        "--job-lease-s",
        "3",
        "--job-poll-interval-s",
        "0.5",
    )
    # the first answer never comes in time: the job is mid-flight when killed
    llm.script(facts_reply(["The user lives in Lisbon"]).delayed(600))
    first = Served(data, tmp_path, 0, *options)
    try:
        owner_key = first.owner_key()
        assert owner_key
        owner = Api(first, owner_key)
        key = await data_key(owner)
        api = Api(first, key)
        request = memory_pb2.AddMessagesRequest(
            messages=[memory_pb2.Message(role="user", content="I moved to Lisbon")],
            infer=True,
            request_id="r-1",
        )
        op = await api.memory.AddMessages(request, metadata=api.md)
        await wait_for(lambda: bool(llm.requests), within=DONE_WITHIN_S)  # the job is mid-flight
    finally:
        first.kill()  # SIGKILL: no shutdown, the lease stays with the dead process

    second = Served(data, tmp_path, 1, *options)
    try:
        api = Api(second, key)
        # the accepted operation is still there, and a retry of the call names it
        again = await api.memory.AddMessages(request, metadata=api.md)
        assert again.name == op.name
        done = await until_done(api, op.name)
        response = memory_pb2.AddMessagesResponse()
        assert done.response.Unpack(response), done.error
        # the restarted server's model answers at once (each message one fact)
        assert [d.memory.content for d in response.decisions] == ["I moved to Lisbon"]
        meta = memory_pb2.AddMessagesMetadata()
        done.metadata.Unpack(meta)
        assert meta.attempts == 2
        assert await contents(api) == ["I moved to Lisbon"]
    finally:
        second.kill()


async def test_two_servers_on_one_postgresql_do_every_operation_once(
    tmp_path: Path, pg_url: str
) -> None:
    # replicas of one deployment share the key-encryption key file
    common = (
        "--database-url",
        pg_url,
        "--job-poll-interval-s",
        "0.2",
        "--job-workers",
        "2",
        "--kek-file",
        str(tmp_path / "kek.key"),
    )
    a = Served(tmp_path / "a", tmp_path, 0, *common)
    b = Served(tmp_path / "b", tmp_path, 1, *common, "--bootstrap", "false")
    try:
        owner_key = a.owner_key()
        assert owner_key
        key = await data_key(Api(a, owner_key))
        apis = [Api(a, key), Api(b, key)]
        sent: dict[str, list[str]] = {}
        for i in range(40):
            api = apis[i % 2]
            texts = [f"fact {i}.{j}" for j in range(3)]
            op = await api.memory.AddMessages(
                memory_pb2.AddMessagesRequest(
                    messages=[memory_pb2.Message(role="user", content=t) for t in texts]
                ),
                metadata=api.md,
            )
            sent[op.name] = texts
        for name, texts in sent.items():
            done = await until_done(apis[0], name)
            response = memory_pb2.AddMessagesResponse()
            assert done.response.Unpack(response), done.error
            meta = memory_pb2.AddMessagesMetadata()
            done.metadata.Unpack(meta)
            assert meta.attempts == 1
            assert len(response.decisions) == len(texts)
        # Each process has its own embedded vector store here (production
        # replicas share a Qdrant server): every memory is in exactly one.
        everything = (await contents(apis[0])) + (await contents(apis[1]))
        expected = sorted(t for texts in sent.values() for t in texts)
        assert sorted(everything) == expected
    finally:
        a.kill()
        b.kill()
