"""URL ingest on a real server against a real HTTP server the test starts:
a page is downloaded, read and searchable; the outbound guard refuses
loopback (unless allowed), private, link-local and metadata addresses, a
host name resolving to loopback, and a redirect to a private address; size,
content type and status are checked. A refused URL fails its operation
with the reason and leaves nothing searchable."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from helpers.servers import Client, RunningServer

from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc

WAIT = duration_pb2.Duration(seconds=30)
KNOWING = ("knowledge:read", "knowledge:write", "ingest:read", "ingest:write")
PAGE = b"""<!DOCTYPE html><html><head><title>Boats</title></head><body>
<nav>Home | Fleet | Contact</nav>
<article><h1>Harbour rules</h1>
<p>Sailing boats moor on the east pier; motor boats use the west pier at night.</p>
<p>The harbour master closes the gate at midnight and opens it at six.</p></article>
</body></html>"""


class Site:
    """A real HTTP server on 127.0.0.1 with a few scripted paths."""

    def __init__(self) -> None:
        routes = self.routes = {
            "/harbour.html": (200, "text/html; charset=utf-8", PAGE, {}),
            "/photo": (200, "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64), {}),
            "/big.txt": (200, "text/plain", b"x" * 20_000, {}),
            "/gone": (404, "text/plain", b"no", {}),
            "/to-private": (302, "text/plain", b"", {"Location": "http://10.1.2.3/secret"}),
            "/to-page": (301, "text/plain", b"", {"Location": "/harbour.html"}),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, kind, body, headers = routes.get(self.path, (404, "text/plain", b"no", {}))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


def stub(client: Client) -> knowledge_pb2_grpc.KnowledgeServiceStub:
    return knowledge_pb2_grpc.KnowledgeServiceStub(client.channel)


async def fetched(client: Client, url: str) -> operations_pb2.Operation:
    op = await stub(client).CreateDocument(
        knowledge_pb2.CreateDocumentRequest(source_uri=url), metadata=client.md()
    )
    done = await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=client.md()
    )
    assert done.done
    return done


def failure(op: operations_pb2.Operation) -> tuple[int, str, str]:
    """The failed operation's code, reason and message."""
    assert op.WhichOneof("result") == "error", op
    status = status_pb2.Status(code=op.error.code, message=op.error.message)
    status.details.extend(op.error.details)
    reason = ""
    for d in status.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            reason = info.reason
    return op.error.code, reason, op.error.message


async def knowing(server: RunningServer) -> Client:
    return server.client(await server.data_key(await server.project(), KNOWING))


async def test_a_page_is_downloaded_read_and_searchable(make_server: Any, site: Site) -> None:
    server = await make_server(outbound_allow_networks="127.0.0.0/8")
    client = await knowing(server)
    done = await fetched(client, site.url("/to-page"))  # a redirect, followed and checked
    doc = knowledge_pb2.Document()
    assert done.WhichOneof("result") == "response" and done.response.Unpack(doc)
    assert doc.mime_type == "text/html" and doc.source_uri == site.url("/to-page")
    assert doc.display_name == "to-page" and doc.size_bytes == len(PAGE)
    found = await stub(client).SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(query="where do sailing boats moor"),
        metadata=client.md(),
    )
    assert found.results and "east pier" in found.results[0].text
    assert "Fleet" not in found.results[0].text


@pytest.mark.parametrize(
    ("path_or_url", "reason", "words"),
    [
        ("/photo", "INVALID_ARGUMENT", "image/png"),
        ("/big.txt", "DOCUMENT_TOO_LARGE", "larger than"),
        ("/gone", "URL_FETCH_FAILED", "HTTP 404"),
        ("/to-private", "URL_REFUSED", "private"),
    ],
)
async def test_what_a_url_may_not_be(
    make_server: Any, site: Site, path_or_url: str, reason: str, words: str
) -> None:
    server = await make_server(
        outbound_allow_networks="127.0.0.0/8", knowledge_max_upload_bytes=10_000
    )
    client = await knowing(server)
    code, got, message = failure(await fetched(client, site.url(path_or_url)))
    assert got == reason and words in message, (code, got, message)
    listed = await stub(client).ListDocuments(
        knowledge_pb2.ListDocumentsRequest(), metadata=client.md()
    )
    assert [d.state for d in listed.documents] == [knowledge_pb2.Document.FAILED]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/harbour.html",  # loopback, not allowed here
        "http://localhost:{port}/harbour.html",  # a name that resolves to loopback
        "http://10.0.0.7/intranet",  # private
        "http://192.168.1.1/router",  # private
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[::1]:{port}/harbour.html",  # IPv6 loopback
    ],
)
async def test_the_guard_refuses_internal_addresses(
    server: RunningServer, site: Site, url: str
) -> None:
    client = await knowing(server)
    code, reason, message = failure(await fetched(client, url.format(port=site.port)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reason == "URL_REFUSED" and "MEMORYD_OUTBOUND_ALLOW_NETWORKS" in message
