"""An ingest survives kill -9, with the installed `memoryd serve`: the
server is killed while its ingest job is downloading the document (the
test's HTTP server holds the first download half way); after a restart on
the same data directory the job is taken over once its lease ran out,
downloads again, and the document becomes searchable once, whole.

Waits are bounded polls; no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import duration_pb2
from helpers.polling import wait_for
from helpers.served import Served

from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
)

DONE_WITHIN_S = 120.0
TEXT = "\n\n".join(
    f"Section {i}. The lighthouse keeper logs ship number {i} at dawn." for i in range(60)
).encode()


class HeldSite:
    """Serves TEXT; the first request gets half of it, then waits (until
    the test ends); later requests get it whole."""

    def __init__(self) -> None:
        self.requests = 0
        self.release = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests += 1
                first = site.requests == 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(TEXT)))
                self.end_headers()
                if first:
                    self.wfile.write(TEXT[: len(TEXT) // 2])
                    self.wfile.flush()
                    site.release.wait(DONE_WITHIN_S)
                    return
                self.wfile.write(TEXT)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/log.txt"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


async def test_kill_9_mid_ingest_the_document_is_ready_after_restart(tmp_path: Path) -> None:
    site = HeldSite()
    data = tmp_path / "data"
    options = (
        "--outbound-allow-networks",
        "127.0.0.0/8",
        "--knowledge-fetch-timeout-s",
        "300",
        "--job-lease-s",
        "3",
        "--job-poll-interval-s",
        "0.5",
    )
    first = Served(data, tmp_path, 0, *options)
    try:
        assert first.channel is not None
        owner_key = first.owner_key()
        assert owner_key
        owner_md = (("x-api-key", owner_key),)
        project = await admin_pb2_grpc.AdminServiceStub(first.channel).CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="docs")),
            metadata=owner_md,
        )
        created = await keys_pb2_grpc.KeyServiceStub(first.channel).CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                project_id=project.id,
                environment_id=project.environments[0].id,
                name="ingest",
                scopes=["knowledge:read", "knowledge:write", "ingest:read", "ingest:write"],
            ),
            metadata=owner_md,
        )
        md = (("x-api-key", created.secret),)
        op = await knowledge_pb2_grpc.KnowledgeServiceStub(first.channel).CreateDocument(
            knowledge_pb2.CreateDocumentRequest(source_uri=site.url), metadata=md
        )
        await wait_for(lambda: site.requests >= 1, within=DONE_WITHIN_S)  # mid-download
    finally:
        first.kill()  # SIGKILL: the lease stays with the dead process

    second = Served(data, tmp_path, 1, *options)
    try:
        assert second.channel is not None
        operations = operations_grpc_pb2.OperationsStub(second.channel)
        deadline = time.monotonic() + DONE_WITHIN_S
        while True:
            done = await operations.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=op.name, timeout=duration_pb2.Duration(seconds=5)
                ),
                metadata=md,
            )
            if done.done or time.monotonic() > deadline:
                break
        assert done.done, f"{op.name} not done within {DONE_WITHIN_S} s"
        doc = knowledge_pb2.Document()
        assert done.response.Unpack(doc), done.error
        meta = knowledge_pb2.IngestMetadata()
        done.metadata.Unpack(meta)
        assert meta.attempts == 2 and site.requests == 2
        assert doc.state == knowledge_pb2.Document.READY and doc.size_bytes == len(TEXT)
        found = await knowledge_pb2_grpc.KnowledgeServiceStub(second.channel).SearchKnowledge(
            knowledge_pb2.SearchKnowledgeRequest(query="ship number 42 at dawn", top_k=100),
            metadata=md,
        )
        indexes = [c.chunk_index for c in found.results]
        assert indexes and len(indexes) == len(set(indexes)) <= doc.chunk_count
        assert not list((data / "uploads").iterdir())
    finally:
        second.kill()
        site.close()
