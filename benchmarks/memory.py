"""The `memory` suite: a seeded memory workload against a real
`memoryd serve` process with the real embedding model.

Workload: `--memories` short sentences (default 100,000) over `--tenants`
tenants (default 1,000 = 100 environments of 10 projects x 10 end users),
each sentence a fact about a person with a paraphrased question whose right
answer is that fact, unique within its tenant. Measured, in one run:

- BatchCreate throughput with server-side embedding (first 5% of the corpus,
  at least 2,000) and with client vectors (the rest; vectors computed by the
  bench process beforehand, with the same model);
- SearchMemories with 4 concurrent clients: server-embedded query p50/p99
  (the server's default mode); then with client vectors in each mode,
  SEMANTIC (the vector), HYBRID (the vector and the question's words) and
  KEYWORD (the words), the three taking turns in two rounds so that the
  machine's drift falls on all of them alike: p50/p99 and throughput, and
  h2load's ceiling for SEMANTIC and HYBRID;
- recall@1 and recall@5 of the paraphrase questions in each mode;
- server RSS and data-dir size; cold start to SERVING with the corpus on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import HIGH_LIMITS, MEMORYD, Result, ServerProcess, drive, h2load
from memoryd.config import Settings
from memoryd.embeddings import build_embedder
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    tenancy_pb2,
)

_NAMES = [
    "Ana",
    "Ben",
    "Carla",
    "Dev",
    "Elif",
    "Farah",
    "Gus",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Victor",
    "Wen",
    "Xena",
    "Yusuf",
    "Zoe",
    "Aiko",
    "Bruno",
    "Chen",
    "Dara",
    "Emil",
    "Fatima",
    "Goran",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Liam",
    "Mina",
    "Noor",
    "Olga",
    "Pablo",
    "Rhea",
    "Sven",
    "Tomas",
    "Ugo",
    "Vera",
    "Will",
    "Yara",
    "Zane",
]
_FACTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "{n} prefers {x} over everything else to drink",
        "what does {n} like to drink",
        ("green tea", "black coffee", "orange juice", "sparkling water", "hot chocolate"),
    ),
    (
        "{n} lives in {x}",
        "where is {n}'s home",
        ("Lisbon", "Nairobi", "Osaka", "Toronto", "Krakow"),
    ),
    ("{n} works as a {x}", "what is {n}'s job", ("nurse", "carpenter", "pilot", "teacher", "chef")),
    (
        "{n} is allergic to {x}",
        "which food must {n} avoid",
        ("peanuts", "shellfish", "gluten", "eggs", "milk"),
    ),
    (
        "{n} plays {x} every weekend",
        "which sport does {n} practise",
        ("tennis", "football", "chess", "golf", "rugby"),
    ),
    (
        "{n} was born in {x}",
        "when is {n}'s birthday",
        ("March", "July", "October", "January", "May"),
    ),
    (
        "{n} drives a {x} car",
        "what vehicle does {n} own",
        ("red", "blue", "silver", "green", "black"),
    ),
    (
        "{n} speaks {x} fluently",
        "which language does {n} know",
        ("Spanish", "Japanese", "Swahili", "Polish", "Hindi"),
    ),
    (
        "{n} has a pet {x}",
        "what animal does {n} keep at home",
        ("cat", "parrot", "dog", "rabbit", "turtle"),
    ),
    (
        "{n} is reading a book about {x}",
        "what is {n} reading",
        ("astronomy", "cooking", "history", "gardening", "poetry"),
    ),
)


@dataclasses.dataclass(frozen=True)
class Fact:
    tenant: int
    content: str
    question: str


def corpus(n: int, tenants: int, seed: int = 7) -> list[Fact]:
    """`n` facts spread evenly over `tenants`; (name, fact kind) unique per tenant."""
    rng = random.Random(seed)
    per = max(1, n // tenants)
    if per > len(_NAMES) * len(_FACTS):
        raise ValueError("too many memories per tenant for the templates")
    out: list[Fact] = []
    for t in range(tenants):
        pairs = rng.sample([(a, b) for a in range(len(_NAMES)) for b in range(len(_FACTS))], per)
        for name_i, fact_i in pairs:
            template, question, values = _FACTS[fact_i]
            name = _NAMES[name_i]
            out.append(
                Fact(t, template.format(n=name, x=rng.choice(values)), question.format(n=name))
            )
    return out[:n]


Metadata = tuple[tuple[str, str], ...]
Mode: TypeAlias = memory_pb2.SearchMode


async def create_env_keys(
    channel: aio.Channel, owner_key: str, n_envs: int, scopes: Sequence[str] = ("memory:*",)
) -> list[str]:
    """Projects of 10 environments each (at least one project), `n_envs` in
    all rounded down to tens; a data key (`scopes`) per environment."""
    keys_stub = keys_pb2_grpc.KeyServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    owner = (("x-api-key", owner_key),)
    env_keys: list[str] = []
    for p in range(max(1, n_envs // 10)):
        project = await admin.CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=f"bench-{p}")),
            metadata=owner,
        )
        env_ids = [project.environments[0].id]
        for e in range(9):
            env = await admin.CreateEnvironment(
                admin_pb2.CreateEnvironmentRequest(
                    project_id=project.id,
                    environment=admin_pb2.Environment(
                        name=f"env-{e}", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
                    ),
                ),
                metadata=owner,
            )
            env_ids.append(env.id)
        for env_id in env_ids:
            created = await keys_stub.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(
                    project_id=project.id,
                    environment_id=env_id,
                    name="bench",
                    scopes=list(scopes),
                ),
                metadata=owner,
            )
            env_keys.append(created.secret)
    return env_keys


def tenant_metadata(env_keys: list[str], tenant: int) -> Metadata:
    """The call metadata of tenant number `tenant`: 10 end users per environment."""
    return (
        ("x-api-key", env_keys[(tenant // 10) % len(env_keys)]),
        ("x-end-user-id", f"user-{tenant % 10}"),
    )


async def load_memories(
    mem: memory_pb2_grpc.MemoryServiceAsyncStub,
    md: Callable[[int], Metadata],
    items: list[tuple[Fact, list[float] | None]],
    concurrency: int,
) -> float:
    """BatchCreates `items` (with their vector, or embedded by the server when
    None) in batches of 100 per tenant, `concurrency` in flight; memories/s."""
    by_tenant: dict[int, list[tuple[Fact, list[float] | None]]] = {}
    for item in items:
        by_tenant.setdefault(item[0].tenant, []).append(item)
    queue = [
        (t, chunk[i : i + 100]) for t, chunk in by_tenant.items() for i in range(0, len(chunk), 100)
    ]
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            t, batch = queue.pop()
            req = memory_pb2.BatchCreateMemoriesRequest(
                requests=[
                    memory_pb2.CreateMemoryRequest(
                        memory=memory_pb2.Memory(content=f.content, embedding=v or [])
                    )
                    for f, v in batch
                ]
            )
            resp = await mem.BatchCreateMemories(req, metadata=md(t), timeout=300)
            if resp.failed_count:
                raise RuntimeError(f"batch had {resp.failed_count} failures")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(items) / (time.perf_counter() - started)


async def embed_texts(settings: Settings, texts: list[str]) -> list[list[float]]:
    """`texts` embedded by the bench process with the server's local model."""
    embedder = build_embedder(
        "fastembed",
        model_dir=settings.embedding_model_dir,
        dimension=384,
        openai_base_url="",
        openai_api_key="",
        openai_model="",
        timeout_s=10,
        threads=settings.embedding_threads,
    )
    out: list[list[float]] = []
    try:
        for i in range(0, len(texts), 512):
            out.extend(await embedder.embed(texts[i : i + 512]))
    finally:
        await embedder.close()
    return out


async def memory_suite(
    settings: Settings, memories: int, tenants: int, seconds: float
) -> list[str]:
    """Runs the workload above on a server started from `settings`; the
    figures as lines. Each search measurement lasts `seconds`."""
    lines: list[str] = []
    facts = corpus(memories, tenants)
    n_envs = max(1, tenants // 10)
    server_part = max(2000, len(facts) // 20)
    lines.append(
        f"corpus: {len(facts)} memories over {tenants} tenants "
        f"({n_envs} environments x 10 end users), model dir {settings.embedding_model_dir}"
    )

    t0 = time.perf_counter()
    client_texts = [f.content for f in facts[server_part:]]
    q_facts = facts[:: max(1, len(facts) // 400)][:400]
    questions = [f.question for f in q_facts]
    vectors = await embed_texts(settings, client_texts + questions)
    client_vectors, q_vectors = vectors[: len(client_texts)], vectors[len(client_texts) :]
    lines.append(
        f"bench process embedded {len(client_texts) + len(questions)} texts in "
        f"{time.perf_counter() - t0:.0f} s (not part of the server's figures)"
    )

    async with ServerProcess(settings, extra_env=HIGH_LIMITS) as server:
        channel = aio.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        mem = memory_pb2_grpc.MemoryServiceStub(channel)
        env_keys = await create_env_keys(channel, server.owner_key, n_envs)

        def md(tenant: int) -> Metadata:
            return tenant_metadata(env_keys, tenant)

        async def load(items: list[tuple[Fact, list[float] | None]], concurrency: int) -> float:
            return await load_memories(mem, md, items, concurrency)

        server_rate = await load([(f, None) for f in facts[:server_part]], 4)
        lines.append(
            f"BatchCreate, server-side embedding ({server_part} memories, batches of 100, "
            f"4 clients): {server_rate:.0f} memories/s"
        )
        client_rate = await load(list(zip(facts[server_part:], client_vectors, strict=True)), 4)
        lines.append(
            f"BatchCreate, client vectors ({len(client_vectors)} memories): "
            f"{client_rate:.0f} memories/s"
        )

        # --- recall -------------------------------------------------------------------
        def request(mode: Mode, i: int, top_k: int) -> memory_pb2.SearchMemoriesRequest:
            """Question `i` in `mode`: SEMANTIC by its vector, KEYWORD by its
            words, HYBRID by both."""
            req = memory_pb2.SearchMemoriesRequest(mode=mode, top_k=top_k)
            if mode != memory_pb2.KEYWORD:
                req.query_embedding.extend(q_vectors[i])
            if mode != memory_pb2.SEMANTIC:
                req.query = questions[i]
            return req

        for name, mode in _MODES.items():
            hits1 = hits5 = 0
            for i, fact in enumerate(q_facts):
                resp = await mem.SearchMemories(request(mode, i, 5), metadata=md(fact.tenant))
                found = [r.memory.content for r in resp.results]
                hits1 += bool(found) and found[0] == fact.content
                hits5 += fact.content in found
            lines.append(
                f"{name:<8} recall@1 {hits1 / len(q_facts):.3f}   recall@5 "
                f"{hits5 / len(q_facts):.3f}   ({len(q_facts)} paraphrase questions, each "
                "within its tenant)"
            )

        # --- search latency ---------------------------------------------------------------
        rng = random.Random(3)

        async def by_text() -> Any:
            i = rng.randrange(len(q_facts))
            return await mem.SearchMemories(
                memory_pb2.SearchMemoriesRequest(query=questions[i], top_k=5),
                metadata=md(q_facts[i].tenant),
            )

        def in_mode(mode: Mode) -> Callable[[], Awaitable[Any]]:
            async def call() -> Any:
                i = rng.randrange(len(q_facts))
                return await mem.SearchMemories(request(mode, i, 5), metadata=md(q_facts[i].tenant))

            return call

        # Server CPU per call (server process and the vector engine's child,
        # from /proc): 500 sequential calls with a query text never asked
        # before (the corpus has few distinct questions, so each gets a
        # numbered suffix; no cache of query vectors helps), then with client
        # vectors.
        asked = itertools.count()

        def fresh_request(i: int) -> memory_pb2.SearchMemoriesRequest:
            text = f"{questions[i]} (case {next(asked)})"
            return memory_pb2.SearchMemoriesRequest(query=text, top_k=5)

        async def sequential(make: Callable[[int], Awaitable[Any]], n: int) -> tuple[float, float]:
            cpu, t0 = server.cpu_seconds(), time.perf_counter()
            for i in range(n):
                await make(i)
            return (
                (server.cpu_seconds() - cpu) / n * 1000,
                (time.perf_counter() - t0) / n * 1000,
            )

        def fresh_text(i: int) -> Awaitable[Any]:
            j = i % len(q_facts)
            return mem.SearchMemories(fresh_request(j), metadata=md(q_facts[j].tenant))

        def by_vector(i: int) -> Awaitable[Any]:
            j = i % len(q_facts)
            req = request(memory_pb2.SEMANTIC, j, 5)
            return mem.SearchMemories(req, metadata=md(q_facts[j].tenant))

        for label, make in (
            ("server-embedded query, each text new", fresh_text),
            ("client vector (SEMANTIC)", by_vector),
        ):
            cpu_ms, wall_ms = await sequential(make, 500)
            lines.append(
                f"Search, {label}, 500 sequential calls: server CPU "
                f"{cpu_ms:.2f} ms/call, wall {wall_ms:.2f} ms/call"
            )

        cpu = server.cpu_seconds()
        text: Result = await drive(
            f"Search, server-embedded query ({settings.search_default_mode}), 4 clients",
            by_text,
            seconds,
            4,
        )
        text_cpu = (server.cpu_seconds() - cpu) / max(text.calls + text.errors + 20, 1) * 1000
        lines.append(
            f"{text.line()}   server CPU {text_cpu:.2f} ms/call "
            f"({len(q_facts)} questions drawn at random, so most repeat)"
        )

        async def fresh_by_text() -> Any:
            i = rng.randrange(len(q_facts))
            return await mem.SearchMemories(fresh_request(i), metadata=md(q_facts[i].tenant))

        cpu = server.cpu_seconds()
        fresh: Result = await drive(
            "Search, server-embedded query, each text new, 4 clients", fresh_by_text, seconds, 4
        )
        fresh_cpu = (server.cpu_seconds() - cpu) / max(fresh.calls + fresh.errors + 20, 1) * 1000
        lines.append(f"{fresh.line()}   server CPU {fresh_cpu:.2f} ms/call")
        # the modes take turns, twice (S H K, then K H S), and each one's
        # figures pool both turns
        turns: dict[str, list[Result]] = {name: [] for name in _MODES}
        cpu_of: dict[str, float] = {name: 0.0 for name in _MODES}
        for order in (list(_MODES), list(reversed(_MODES))):
            for name in order:
                cpu = server.cpu_seconds()
                result = await drive(name, in_mode(_MODES[name]), seconds / 2, 4)
                cpu_of[name] += server.cpu_seconds() - cpu
                turns[name].append(result)
        by_mode = {name: _pooled(_LABELS[name], results) for name, results in turns.items()}
        for name, r in by_mode.items():
            per_call = cpu_of[name] / max(r.calls + r.errors + 40, 1) * 1000  # 2 x 20 warm-up
            lines.append(f"{r.line()}   server CPU {per_call:.2f} ms/call")
        semantic, hybrid = by_mode["SEMANTIC"], by_mode["HYBRID"]
        lines.append(
            f"HYBRID - SEMANTIC: p50 {hybrid.pct(0.5) - semantic.pct(0.5):+.2f} ms, "
            f"p99 {hybrid.pct(0.99) - semantic.pct(0.99):+.2f} ms"
        )
        for name in ("SEMANTIC", "HYBRID"):
            ceiling = h2load(
                server.address,
                "/memoryd.v1.MemoryService/SearchMemories",
                request(_MODES[name], 0, 5).SerializeToString(),
                dict(md(q_facts[0].tenant)),
                seconds,
            )
            if ceiling:
                lines.append(
                    f"Search {name}, client vector, h2load (4 conns x 32 streams): "
                    f"{ceiling:.0f} req/s"
                )

        assert server.proc is not None
        rss_kb = _rss_kb(server.proc.pid)
        data_dir = _data_dir(server)
        lines.append(
            f"server RSS {rss_kb / 1024:.0f} MiB; data dir {du_mb(data_dir):.0f} MiB "
            f"({len(facts)} memories)"
        )
        await channel.close(None)

        # --- cold start -----------------------------------------------------------------
        server.proc.send_signal(15)
        await asyncio.to_thread(server.proc.wait, 120)
        # the same settings (embedder included) as the first start, on its port
        child_env = {
            **server.env,
            "MEMORYD_DATA_DIR": str(data_dir),
            "MEMORYD_PORT": str(server.port),
        }
        started = time.perf_counter()
        proc = subprocess.Popen(  # noqa: ASYNC220 - measuring the start itself
            [str(MEMORYD), "serve"],
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            cold = await _until_serving(server.address, started)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 60)
        lines.append(f"cold start to SERVING with {len(facts)} memories on disk: {cold:.2f} s")
    return lines


_MODES: dict[str, Mode] = {
    "SEMANTIC": memory_pb2.SEMANTIC,
    "HYBRID": memory_pb2.HYBRID,
    "KEYWORD": memory_pb2.KEYWORD,
}
_LABELS = {
    "SEMANTIC": "Search SEMANTIC, client vector, 4 clients",
    "HYBRID": "Search HYBRID, client vector + words, 4 clients",
    "KEYWORD": "Search KEYWORD, words, 4 clients",
}


def _pooled(name: str, results: list[Result]) -> Result:
    """One result of several measurements of the same call."""
    return Result(
        name,
        sum(r.calls for r in results),
        sum(r.seconds for r in results),
        [x for r in results for x in r.latencies_ms],
        sum(r.errors for r in results),
    )


# Reconnect at once while the server is not listening yet: gRPC's default
# backoff (1 s, growing by 1.6x) added up to 5 s to a measured cold start.
_PROMPT_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
]


async def _until_serving(address: str, started: float) -> float:
    async with aio.insecure_channel(address, options=_PROMPT_RECONNECT) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.perf_counter() - started < 120:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - started
            except grpc.RpcError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError("the server did not become SERVING within 120 s")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _data_dir(server: ServerProcess) -> Path:
    return Path(server.data_dir)


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20)
