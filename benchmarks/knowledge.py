"""The `knowledge` suite: documents through a real `memoryd serve`.

- Ingest: a generated 100-page PDF and a 1 MB Markdown file, each uploaded
  (UploadDocument, 64 KiB messages) and waited for: seconds from the upload
  to READY, pages/s, chunks/s, and the server's peak RSS (VmHWM of the
  server process and of its vector engines' processes, from /proc).
- Search: `chunks` chunks over `environments` environments (one document of
  paragraphs each, ingested through the API), then SearchKnowledge with a
  client vector (`query_embedding`, so the figure is the search's, not the
  model's) from `concurrency` clients: p50/p99 and calls/s.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator

from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import duration_pb2
from grpc import aio

from benchmarks.harness import HIGH_LIMITS, ServerProcess, _children, drive
from benchmarks.memory import create_env_keys
from memoryd.config import Settings
from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc

SCOPES = ("knowledge:read", "knowledge:write", "ingest:read", "ingest:write")
PIECE = 64 * 1024
# Words per generated paragraph: about one 32-token chunk each.
WORDS = [
    "harbour",
    "pier",
    "ferry",
    "lighthouse",
    "keeper",
    "tide",
    "anchor",
    "rope",
    "gull",
    "storm",
    "cargo",
    "crane",
    "dock",
    "sailor",
    "compass",
    "chart",
    "beacon",
    "buoy",
    "hull",
    "mast",
]


async def knowledge_suite(
    settings: Settings, chunks: int, environments: int, seconds: float, concurrency: int
) -> list[str]:
    env = {
        **HIGH_LIMITS,
        "MEMORYD_KNOWLEDGE_CHUNK_TOKENS": "32",
        "MEMORYD_KNOWLEDGE_CHUNK_OVERLAP": "0",
        "MEMORYD_KNOWLEDGE_MAX_BYTES_PER_ENVIRONMENT": "0",
    }
    lines = [
        f"knowledge: embedder {settings.embedding_provider}; chunks of 32 tokens; "
        f"{chunks} chunks over {environments} environments for the search"
    ]
    async with ServerProcess(settings, env) as server, aio.insecure_channel(server.address) as ch:
        keys = await create_env_keys(ch, server.owner_key, max(environments, 10), SCOPES)
        k: knowledge_pb2_grpc.KnowledgeServiceAsyncStub = knowledge_pb2_grpc.KnowledgeServiceStub(
            ch
        )
        ops = operations_grpc_pb2.OperationsStub(ch)

        for name, data in (("100-page PDF", _pdf(100)), ("1 MB Markdown", _markdown(1 << 20))):
            cpu = server.cpu_seconds()
            t0 = time.perf_counter()
            doc, meta = await _upload(k, ops, keys[0], name, data)
            took = time.perf_counter() - t0
            lines.append(
                f"ingest {name:<14} {len(data) / 1e6:6.2f} MB {took:7.2f} s   "
                f"{meta.pages / took:7.1f} pages/s   {doc.chunk_count / took:8.1f} chunks/s   "
                f"({doc.chunk_count} chunks; server CPU {server.cpu_seconds() - cpu:.1f} s)"
            )
        lines.append(f"server peak RSS {_peak_rss_mb(server):.0f} MiB (server + engines)")

        per_env = max(1, chunks // environments)
        t0 = time.perf_counter()
        total = 0
        for i in range(environments):
            text = _paragraphs(per_env, seed=i).encode()
            doc, _ = await _upload(k, ops, keys[i % len(keys)], f"doc-{i}.md", text)
            total += doc.chunk_count
        lines.append(
            f"loaded {total} chunks in {environments} documents in {time.perf_counter() - t0:.0f} s"
        )
        dim = settings.embedding_dimension or 384
        rng = random.Random(7)
        envs = itertools.cycle(range(environments))

        async def search() -> None:
            vector = [rng.gauss(0, 1) for _ in range(dim)]
            key = keys[next(envs) % len(keys)]
            await k.SearchKnowledge(
                knowledge_pb2.SearchKnowledgeRequest(query_embedding=vector, top_k=10),
                metadata=(("x-api-key", key),),
            )

        for in_flight in (1, concurrency):
            cpu = server.cpu_seconds()
            result = await drive(
                f"SearchKnowledge, client vector, {in_flight} in flight",
                search,
                seconds,
                in_flight,
            )
            per_call = (server.cpu_seconds() - cpu) / max(result.calls, 1) * 1000
            lines.append(f"{result.line()}   server CPU {per_call:.2f} ms/call")
    return lines


async def _upload(
    k: knowledge_pb2_grpc.KnowledgeServiceAsyncStub,
    ops: operations_grpc_pb2.OperationsStub,
    key: str,
    name: str,
    data: bytes,
) -> tuple[knowledge_pb2.Document, knowledge_pb2.IngestMetadata]:
    md = (("x-api-key", key),)

    async def messages() -> AsyncIterator[knowledge_pb2.UploadDocumentRequest]:
        yield knowledge_pb2.UploadDocumentRequest(
            header=knowledge_pb2.UploadHeader(display_name=name.replace(" ", "-"))
        )
        for i in range(0, len(data), PIECE):
            yield knowledge_pb2.UploadDocumentRequest(data=data[i : i + PIECE])

    op = await k.UploadDocument(messages(), metadata=md)
    while not op.done:
        op = await ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=op.name, timeout=duration_pb2.Duration(seconds=30)
            ),
            metadata=md,
        )
    doc, meta = knowledge_pb2.Document(), knowledge_pb2.IngestMetadata()
    if not op.response.Unpack(doc):
        raise RuntimeError(f"the ingest of {name} failed: {op.error.message}")
    op.metadata.Unpack(meta)
    return doc, meta


def _pdf(pages: int) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for p in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 6, f"Chapter {p}\n\n" + _paragraphs(12, seed=p))
    return bytes(pdf.output())


def _markdown(size: int) -> bytes:
    parts: list[str] = []
    n = 0
    section = 0
    while n < size:
        part = f"## Section {section}\n\n{_paragraphs(8, seed=section)}\n\n"
        parts.append(part)
        n += len(part)
        section += 1
    return "".join(parts).encode()[:size]


def _paragraphs(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "\n\n".join(
        " ".join(rng.choice(WORDS) for _ in range(22)).capitalize() + "." for _ in range(n)
    )


def _peak_rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    total = 0
    for pid in (server.proc.pid, *_children(server.proc.pid)):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024
