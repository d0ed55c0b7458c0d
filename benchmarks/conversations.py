"""The `conversations` suite: AddMessages operations against a real
`memoryd serve` process (the real embedding model; rate limits no call
reaches), the model a scripted local endpoint that answers at once
(`benchmarks.chat_server`). Measured, in one run:

- calibration: health Check with the Python client (the auth suite's first
  figure), to scale the rest on a shared machine;

- infer=false (each user message stored as it is, embedded by the server):
  `concurrency` clients, each in its own project, each sending AddMessages
  and waiting (WaitOperation) for it to be done, in a loop: messages/s of
  the operations done within the window, the AddMessages call's latency
  (it answers once the operation is durably stored) and submit → done; with
  10 messages per operation, then 1, then 1 from a single client (the
  overhead of an operation); and the CPU time per message of the server
  (with its engine process) and of this process;
- infer=true with the `llm` extractor, one client, 10 messages per
  operation: memoryd's own time per message, the operation's run time
  (metadata end_time - start_time) less the time the endpoint took to answer
  its two requests; and the loopback HTTP round trip of one such request
  from this process, for scale;
- fairness: project A submits `operations` one-message operations as fast as
  it can while project B, right after A starts, submits 20 one after another,
  each waiting for its result.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import duration_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.chat_server import ChatServer
from benchmarks.harness import HIGH_LIMITS, ServerProcess, drive, percentile, vars_of
from benchmarks.memory import corpus
from memoryd.config import Settings
from memoryd.extraction import DECISIONS_SCHEMA_NAME, FACTS_SCHEMA_NAME
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

# How a user drops a fact about someone into a chat.
_OPENERS = (
    "Just so you know,",
    "By the way,",
    "Please remember that",
    "Quick update:",
    "For the record,",
    "Oh, and",
)
# No operation takes this long unless the server is broken.
_DONE_WITHIN_S = 300.0
_FAIR_B_OPERATIONS = 20


class OperationFailed(Exception):
    """An operation ended with an error."""


@dataclass
class Errors:
    """Calls or operations that failed: how many, and the first one's
    message (the figures of a run with errors are not valid)."""

    count: int = 0
    first: str = ""

    def add(self, err: grpc.RpcError | OperationFailed) -> None:
        self.count += 1
        if not self.first:
            self.first = (
                f"{err.code().name}: {err.details()}"
                if isinstance(err, grpc.RpcError)
                else str(err)
            )

    def lines(self, what: str) -> list[str]:
        if not self.count:
            return []
        return [f"  WARNING: {self.count} {what} failed, the first: {self.first}"]


def user_messages(n: int, seed: int = 11) -> list[str]:
    """`n` chat messages, each a fact about a person (the memory suite's
    templates), seeded."""
    facts = corpus(n, max(1, -(-n // 400)), seed=seed)
    openers = itertools.cycle(_OPENERS)
    return [f"{next(openers)} {f.content}." for f in facts]


@dataclass
class Client:
    """A data key of one project (no end user) and the stubs to use it."""

    md: tuple[tuple[str, str], ...]
    memory: memory_pb2_grpc.MemoryServiceStub
    operations: Any  # operations_grpc_pb2.OperationsStub

    async def submit(
        self, texts: list[str], *, infer: bool = False, thread_id: str = ""
    ) -> operations_pb2.Operation:
        req = memory_pb2.AddMessagesRequest(
            messages=[memory_pb2.Message(role="user", content=t) for t in texts],
            thread_id=thread_id,
            source="chat",
            infer=infer,
            request_id=uuid.uuid4().hex,
        )
        return await self.memory.AddMessages(req, metadata=self.md, timeout=60)

    async def until_done(self, name: str) -> operations_pb2.Operation:
        """The operation once done; OperationFailed if it failed,
        RuntimeError if it never ends."""
        deadline = time.monotonic() + _DONE_WITHIN_S
        while time.monotonic() < deadline:
            op = await self.operations.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=name, timeout=duration_pb2.Duration(seconds=10)
                ),
                metadata=self.md,
                timeout=20,
            )
            if op.done:
                if op.HasField("error"):
                    raise OperationFailed(f"operation {name} failed: {op.error.message}")
                return op
        raise RuntimeError(f"operation {name} not done within {_DONE_WITHIN_S:.0f} s")


def metadata_of(op: operations_pb2.Operation) -> memory_pb2.AddMessagesMetadata:
    meta = memory_pb2.AddMessagesMetadata()
    op.metadata.Unpack(meta)
    return meta


def _seconds(ts: Any) -> float:
    """A protobuf Timestamp as `time.time()` seconds."""
    return float(ts.ToNanoseconds()) / 1e9


class Cpu:
    """CPU time spent from creation to `spent()`: the server's (with its
    engine process) and this process's, and the wall time, in seconds.
    On a shared machine CPU per message moves less than messages/s."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self._start = (server.cpu_seconds(), time.process_time(), time.perf_counter())

    def spent(self) -> tuple[float, float, float]:
        server, bench, wall = self._start
        return (
            self._server.cpu_seconds() - server,
            time.process_time() - bench,
            time.perf_counter() - wall,
        )

    def line(self, messages: int) -> str:
        server, bench, wall = self.spent()
        return (
            f"CPU per message: server {server * 1000 / messages:.2f} ms "
            f"({server / wall:.2f} cores), bench client {bench * 1000 / messages:.2f} ms"
        )


@dataclass
class Loop:
    """What the clients of one measurement saw: per operation done in the
    window, its messages, the AddMessages latency and submit → done; the
    CPU line covers every operation sent (some end after the window)."""

    messages: int = 0
    operations: int = 0
    ack_ms: list[float] = field(default_factory=list)
    done_ms: list[float] = field(default_factory=list)
    cpu: str = ""
    errors: Errors = field(default_factory=Errors)


async def run_conversations(
    settings: Settings, seconds: float, concurrency: int, operations: int
) -> None:
    """Runs the suite on one server started from `settings` (plus the `llm`
    extractor pointed at the scripted endpoint), printing each figure as it
    comes."""
    texts = user_messages(40_000)
    with ChatServer() as chat:
        server_settings = Settings(
            **{
                **vars_of(settings),
                "extractor": "llm",
                "llm_base_url": chat.base_url,
                "llm_api_key": "sk-bench",
                "llm_model": "bench",
            }
        )
        print(
            f"-- conversations suite: embedding {server_settings.embedding_provider} "
            f"({server_settings.embedding_model_dir}); job workers {server_settings.job_workers}, "
            f"{server_settings.job_workers_per_project} per project",
            flush=True,
        )
        async with ServerProcess(server_settings, extra_env=HIGH_LIMITS) as server:
            channel = aio.insecure_channel(server.address)
            owner = (("x-api-key", server.owner_key),)
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            keys = keys_pb2_grpc.KeyServiceStub(channel)

            async def client(name: str) -> Client:
                project = await admin.CreateProject(
                    admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=name)),
                    metadata=owner,
                )
                created = await keys.CreateApiKey(
                    keys_pb2.CreateApiKeyRequest(
                        project_id=project.id,
                        environment_id=project.environments[0].id,
                        name="bench",
                        scopes=["memory:*"],
                    ),
                    metadata=owner,
                )
                return Client(
                    (("x-api-key", created.secret),),
                    memory_pb2_grpc.MemoryServiceStub(channel),
                    operations_grpc_pb2.OperationsStub(channel),
                )

            # the machine's speed now (the auth suite's figure, for scale)
            health = health_pb2_grpc.HealthStub(channel)
            check = await drive(
                "calibration: health Check, 16 in flight",
                lambda: health.Check(health_pb2.HealthCheckRequest()),
                3.0,
                16,
            )
            print(check.line(), flush=True)

            clients = [await client(f"chat-{i}") for i in range(concurrency)]
            pool = itertools.cycle(texts)

            for per_op, n_clients in ((10, concurrency), (1, concurrency), (1, 1)):
                loop = await _loop(server, clients[:n_clients], pool, per_op, seconds)
                print(_loop_line(loop, per_op, n_clients, seconds), flush=True)
                for line in [f"  {loop.cpu}", *loop.errors.lines("operations")]:
                    print(line, flush=True)

            for line in await _llm(server, clients[0], chat, pool, seconds):
                print(line, flush=True)

            a, b = await client("flood-a"), await client("fair-b")
            for line in await _fairness(a, b, pool, operations, concurrency):
                print(line, flush=True)
            await channel.close(None)


async def _loop(
    server: ServerProcess, clients: list[Client], pool: Iterator[str], per_op: int, seconds: float
) -> Loop:
    """Each client sends `per_op` messages and waits for them to be done, in
    a loop, for `seconds` (after one warm-up operation each)."""
    out = Loop()

    async def one(c: Client, thread: str) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        op = await c.submit(list(itertools.islice(pool, per_op)), thread_id=thread)
        t1 = time.perf_counter()
        await c.until_done(op.name)
        return t0, t1, time.perf_counter()

    await asyncio.gather(*(one(c, "warm-up") for c in clients))
    cpu = Cpu(server)
    stop_at = time.perf_counter() + seconds

    async def worker(c: Client, i: int) -> None:
        while time.perf_counter() < stop_at:
            try:
                t0, t1, t2 = await one(c, f"thread-{i}")
            except (grpc.RpcError, OperationFailed) as err:
                out.errors.add(err)
                continue
            out.ack_ms.append((t1 - t0) * 1000)
            out.done_ms.append((t2 - t0) * 1000)
            if t2 <= stop_at:
                out.operations += 1
                out.messages += per_op

    await asyncio.gather(*(worker(c, i) for i, c in enumerate(clients)))
    out.cpu = cpu.line(len(out.done_ms) * per_op)
    return out


def _loop_line(loop: Loop, per_op: int, n_clients: int, seconds: float) -> str:
    name = f"AddMessages infer=false, {per_op} msg/op, {n_clients} client{'s' * (n_clients > 1)}"
    return (
        f"{name:<46} {loop.messages / seconds:>6.0f} messages/s ({loop.operations} ops)   "
        f"ack p50 {percentile(loop.ack_ms, 0.5):6.2f} p99 {percentile(loop.ack_ms, 0.99):6.2f} ms"
        f"   submit->done p50 {percentile(loop.done_ms, 0.5):6.1f} "
        f"p99 {percentile(loop.done_ms, 0.99):6.1f} ms"
    )


async def _llm(
    server: ServerProcess, c: Client, chat: ChatServer, pool: Iterator[str], seconds: float
) -> list[str]:
    """infer=true, one client, 10 messages per operation, for `seconds`:
    memoryd's own time per message (run time less the endpoint's answers)."""
    per_op = 10
    run_ms: list[float] = []
    own_ms: list[float] = []
    model_ms: list[float] = []
    errors = Errors()
    await c.until_done((await c.submit(list(itertools.islice(pool, per_op)), infer=True)).name)
    cpu = Cpu(server)
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        before = len(chat.answered())
        try:
            op = await c.submit(list(itertools.islice(pool, per_op)), infer=True, thread_id="llm")
            meta = metadata_of(await c.until_done(op.name))
        except (grpc.RpcError, OperationFailed) as err:
            errors.add(err)
            continue
        answered = chat.answered()[before:]
        if len(answered) != 2 or meta.message_count != per_op:
            raise RuntimeError(f"expected 2 model calls for {per_op} messages, saw {len(answered)}")
        run = (_seconds(meta.end_time) - _seconds(meta.start_time)) * 1000
        model = sum(a.seconds for a in answered) * 1000
        run_ms.append(run)
        model_ms.append(model)
        own_ms.append((run - model) / per_op)
    cpu_line = cpu.line(len(run_ms) * per_op)
    rtt = await _round_trips(chat.base_url, _model_bodies(list(itertools.islice(pool, per_op))))
    less_rtt = [(r - 2 * rtt) / per_op for r in run_ms]
    return [
        f"AddMessages infer=true (llm), {per_op} msg/op, 1 client: {len(run_ms)} ops; run time "
        f"p50 {percentile(run_ms, 0.5):.1f} ms per op, of which the endpoint answering "
        f"p50 {percentile(model_ms, 0.5):.2f} ms (2 calls)",
        f"  {cpu_line} (the scripted endpoint runs in the bench process)",
        f"memoryd's own time per message (run - endpoint's answers) "
        f"p50 {percentile(own_ms, 0.5):.2f} ms   p99 {percentile(own_ms, 0.99):.2f} ms",
        f"loopback round trip of one model call from this process (httpx, keep-alive) "
        f"p50 {rtt:.2f} ms; own time per message less 2 such round trips "
        f"p50 {percentile(less_rtt, 0.5):.2f} ms",
        *errors.lines("operations"),
    ]


def _model_bodies(texts: list[str]) -> list[dict[str, Any]]:
    """An extraction and a decision request like memoryd's, for `texts`."""
    messages = [{"index": i, "role": "user", "content": t} for i, t in enumerate(texts)]
    facts = [{"fact": i, "text": t, "memories": []} for i, t in enumerate(texts)]
    return [
        {
            "model": "bench",
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "Extract facts."},
                {"role": "user", "content": json.dumps(data)},
            ],
            "response_format": {"type": "json_schema", "json_schema": {"name": name}},
        }
        for name, data in (
            (FACTS_SCHEMA_NAME, {"context": [], "messages": messages}),
            (DECISIONS_SCHEMA_NAME, {"facts": facts}),
        )
    ]


async def _round_trips(base_url: str, bodies: list[dict[str, Any]], n: int = 200) -> float:
    """Median milliseconds of one call to the endpoint, as memoryd makes it."""
    samples: list[float] = []
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per call
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(n):
            t0 = time.perf_counter()
            resp = await http.post(f"{base_url}/chat/completions", json=bodies[i % len(bodies)])
            resp.raise_for_status()
            resp.json()
            samples.append((time.perf_counter() - t0) * 1000)
    return percentile(samples[n // 10 :], 0.5)  # the first calls warm up


async def _fairness(
    a: Client, b: Client, pool: Iterator[str], operations: int, concurrency: int
) -> list[str]:
    """A floods `operations` one-message operations from `concurrency`
    submitters; B, once A's first is accepted, sends 20 one at a time."""
    submitted: list[tuple[float, str]] = []  # (time.time() at submit, name)
    started = asyncio.Event()
    todo = iter(range(operations))
    a_errors, b_errors = Errors(), Errors()

    async def submitter() -> None:
        for _ in todo:
            t = time.time()
            try:
                op = await a.submit([next(pool)])
            except grpc.RpcError as err:
                a_errors.add(err)
                continue
            submitted.append((t, op.name))
            started.set()

    b_ms: list[float] = []
    b_ack_ms: list[float] = []
    b_done_at: list[float] = []

    async def tenant_b() -> None:
        await started.wait()
        for _ in range(_FAIR_B_OPERATIONS):
            t0 = time.perf_counter()
            try:
                op = await b.submit([next(pool)])
                b_ack_ms.append((time.perf_counter() - t0) * 1000)
                await b.until_done(op.name)
            except (grpc.RpcError, OperationFailed) as err:
                b_errors.add(err)
                continue
            b_ms.append((time.perf_counter() - t0) * 1000)
            b_done_at.append(time.time())

    flood_started = time.time()
    b_task = asyncio.create_task(tenant_b())
    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    submit_s = time.time() - flood_started
    started.set()  # B runs even if none of A's was accepted
    a_ms: list[float] = []
    a_end = 0.0
    for t, name in sorted(submitted):
        try:
            end = _seconds(metadata_of(await a.until_done(name)).end_time)
        except (grpc.RpcError, OperationFailed) as err:
            a_errors.add(err)
            continue
        a_ms.append((end - t) * 1000)
        a_end = max(a_end, end)
    await b_task
    during = sum(1 for t in b_done_at if t < a_end)
    return [
        f"fairness: A submitted {operations} ops in {submit_s:.1f} s "
        f"({operations / submit_s:.0f}/s, {concurrency} submitters); "
        f"A's flood done in {a_end - flood_started:.1f} s",
        f"fairness: B's {_FAIR_B_OPERATIONS} ops done while A's flood ran: {during}   "
        f"B submit->done p50 {percentile(b_ms, 0.5):.1f} ms p99 {percentile(b_ms, 0.99):.1f} ms"
        f"   A submit->done p50 {percentile(a_ms, 0.5):.0f} ms "
        f"p99 {percentile(a_ms, 0.99):.0f} ms",
        f"fairness: B's AddMessages calls (acknowledge) p50 {percentile(b_ack_ms, 0.5):.1f} ms "
        f"p99 {percentile(b_ack_ms, 0.99):.1f} ms",
        *a_errors.lines("of A's calls or operations"),
        *b_errors.lines("of B's calls or operations"),
    ]
