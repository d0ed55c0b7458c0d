"""The MCP endpoint: memoryd for AI agents over the Model Context Protocol
(streamable HTTP at `/mcp`), on its own port, in the gRPC server's event loop.

Every HTTP request is authenticated before the MCP SDK sees it, with the
server's own `Authenticator` (the key in `Authorization: Bearer` or
`x-api-key`, the end user in `x-end-user-id`): no key or a bad, revoked or
expired one is an HTTP 401 with `WWW-Authenticate`. `tools/list` shows the
tools the key's scopes allow. A tool call is a gRPC call to this very
server, as the caller, over a private Unix socket (`GrpcSideChannel`): the
same pipeline as any gRPC client (scopes, tenancy, rate limits, usage,
audit, metrics), and nothing reaches a store any other way. Those calls
carry the peer `unix:` and, unless the agent sent its own, a request id
starting `mcp-`, so logs and audit events tell them apart.

The transport is stateless (no MCP session kept between requests): replicas
behind any HTTP load balancer serve an agent alike, as for gRPC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import socket
import ssl
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
import uvicorn
from grpc import aio
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

from memoryd import __version__
from memoryd.api.call import CROSS_PROJECT_HEADER
from memoryd.api.mcp.tools import Rpc, Stubs, Tool
from memoryd.api.server import StartupError
from memoryd.domain.errors import DomainError
from memoryd.domain.tenancy import KeyKind, Principal, scope_grants

log = logging.getLogger("memoryd.mcp")

PATH = "/mcp"
MAX_REQUEST_ID = 100
_CALLER = "memoryd.mcp.caller"

Authenticate = Callable[..., Awaitable[Principal]]
"""`(key, *, end_user_id, peer) -> Principal`: the server's key check."""

INSTRUCTIONS = (
    "memoryd: long-term memory for this agent. Search memories before answering "
    "(search_memories), store what is worth remembering (add_memory, or add_messages for "
    "conversation turns), and correct or remove what is wrong (update_memory, delete_memory)."
)


class GrpcSideChannel:
    """A Unix socket the gRPC server also listens on, in a directory only
    this user can enter: the MCP endpoint's way in, whatever TLS or mTLS
    the public port demands."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="memoryd-mcp-"))
        self.target = f"unix:{self._dir / 'grpc.sock'}"

    def add_to(self, server: aio.Server) -> None:
        if server.add_insecure_port(self.target) == 0:
            raise StartupError(f"cannot listen on {self.target} (MCP side channel)")

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass(frozen=True)
class Tls:
    """The gRPC port's certificate, for HTTPS; with a client CA, clients
    must present a certificate it signed (mTLS), as on the gRPC port."""

    cert: str
    key: str
    client_ca: str = ""

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": self.cert, "ssl_keyfile": self.key}
        if self.client_ca:
            options |= {"ssl_ca_certs": self.client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options


@dataclass(frozen=True)
class _Caller:
    principal: Principal
    metadata: tuple[tuple[str, str], ...]


class McpEndpoint:
    """The HTTP server of the MCP endpoint. Its port is bound when it is
    made (so the port is known, and a busy one is a start-up error); then
    `start` and `stop`."""

    def __init__(
        self,
        authenticate: Authenticate,
        side_channel: GrpcSideChannel,
        tools: Sequence[Tool],
        *,
        host: str,
        port: int,
        max_request_bytes: int,
        tls: Tls | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._side_channel = side_channel
        self._tools = {t.name: t for t in tools}
        # JSON schemas are made once: a call's arguments are checked against them
        self._listings = {t.name: t.listing() for t in tools}
        self._host = host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._channel: aio.Channel | None = None
        self._stubs: Stubs | None = None
        mcp = Server(
            "memoryd",
            version=__version__,
            instructions=INSTRUCTIONS,
            # the list depends on the key (its scopes are fixed): kept by
            # each client for a minute, never shared between callers
            cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="private")},
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        app = mcp.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            json_response=True,
            max_request_body_size=max_request_bytes,
            host=host,
        )
        config = uvicorn.Config(
            _Authenticated(app, self._check),
            log_config=None,
            access_log=False,
            lifespan="on",
            server_header=False,
            proxy_headers=False,  # the peer is the connection's, as on the gRPC port
            **(tls.uvicorn_options() if tls is not None else {}),
        )
        self.scheme = "https" if tls is not None else "http"
        self._server = uvicorn.Server(config)
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel = aio.insecure_channel(
            self._side_channel.target, options=[("grpc.primary_user_agent", "memoryd-mcp")]
        )
        self._stubs = Stubs(self._channel)
        config = self._server.config
        if not config.loaded:
            config.load()
        # Server.serve would take over the process's signal handlers: the
        # steps it runs, without that.
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[self._sock])
        self._loop_task = asyncio.get_running_loop().create_task(self._server.main_loop())
        log.info("MCP endpoint on %s://%s:%d%s", self.scheme, self._host, self.port, PATH)

    async def stop(self, grace: float) -> None:
        """Stops taking requests; those in flight get `grace` seconds."""
        if self._loop_task is not None:
            self._server.should_exit = True
            await self._loop_task
            self._loop_task = None
            self._server.config.timeout_graceful_shutdown = max(math.ceil(grace), 1)
            await self._server.shutdown(sockets=[self._sock])
        self._sock.close()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    # --- HTTP: who calls ------------------------------------------------------------

    async def _check(self, scope: Scope) -> _Caller:
        """The caller of one HTTP request, or a DomainError (the key check's)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("x-api-key", "") or _bearer(headers.get("authorization", ""))
        end_user = headers.get("x-end-user-id", "")
        client = scope.get("client")
        peer = client[0] if client else ""
        principal = await self._authenticate(key, end_user_id=end_user, peer=peer)
        request_id = headers.get("x-request-id", "")
        if not request_id or len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
            request_id = f"mcp-{uuid.uuid4().hex}"
        metadata = [("x-api-key", key), ("x-request-id", request_id)]
        if end_user:
            metadata.append(("x-end-user-id", end_user))
        if headers.get(CROSS_PROJECT_HEADER):
            metadata.append((CROSS_PROJECT_HEADER, headers[CROSS_PROJECT_HEADER]))
        return _Caller(principal, tuple(metadata))

    # --- MCP: the tools -------------------------------------------------------------

    def _allowed(self, principal: Principal) -> list[Tool]:
        if principal.kind is not KeyKind.DATA:
            return []  # memories belong to an environment: org keys have none
        return [t for t in self._tools.values() if scope_grants(principal.scopes, t.scope)]

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = _caller_of(ctx)
        allowed = self._allowed(caller.principal)
        return types.ListToolsResult(tools=[self._listings[t.name] for t in allowed])

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        listing = self._listings.get(name)
        return listing.input_schema if listing is not None else None

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = self._tools.get(params.name)
        if tool is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool: {params.name}")
        assert self._stubs is not None, "the endpoint was not started"
        # A tool the key may not use is called all the same: the gRPC
        # pipeline refuses it (PERMISSION_DENIED), audited as any refusal.
        rpc = Rpc(self._stubs, _caller_of(ctx).metadata)
        return await tool.call(rpc, dict(params.arguments or {}))


def _caller_of(ctx: ServerRequestContext[Any]) -> _Caller:
    request = ctx.request
    caller = request.scope.get(_CALLER) if request is not None else None
    if not isinstance(caller, _Caller):  # every request passed _Authenticated
        raise MCPError(code=types.INTERNAL_ERROR, message="unauthenticated request")
    return caller


class _Authenticated:
    """ASGI middleware: every HTTP request to the endpoint is authenticated
    first; a refusal is answered here, before any MCP processing."""

    def __init__(self, app: ASGIApp, check: Callable[[Scope], Awaitable[_Caller]]) -> None:
        self._app = app
        self._check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                scope[_CALLER] = await self._check(scope)
            except DomainError as err:
                await _refuse(err, send)
                return
        await self._app(scope, receive, send)


# HTTP status of a refused request, by the key check's error code.
_STATUS = {"UNAUTHENTICATED": 401, "INVALID_ARGUMENT": 400, "RESOURCE_EXHAUSTED": 429}


async def _refuse(err: DomainError, send: Send) -> None:
    status = _STATUS.get(err.code, 503 if err.code == "UNAVAILABLE" else 500)
    message = err.message if status != 500 else "internal error"
    body = json.dumps({"error": {"code": err.code, "reason": err.reason, "message": message}})
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        challenge = 'Bearer realm="memoryd"'
        if err.reason != "API_KEY_MISSING":
            challenge += ', error="invalid_token"'
        headers.append((b"www-authenticate", challenge.encode()))
    if status == 429:
        retry_after = getattr(err, "retry_after", None) or 1.0
        headers.append((b"retry-after", str(math.ceil(retry_after)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _bind(host: str, port: int) -> socket.socket:
    """The endpoint's listening socket, or StartupError naming the address."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise StartupError(f"cannot listen on {host}:{port} (MCP): {err.strerror or err}") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port} (MCP): {err.strerror or err}") from err
    return sock
