"""The state of one call as the pipeline and the servicers see it.

`CallState` is made by the pipeline's first step and kept in a contextvar
(`current_call()`), read by the servicers; the domain gets what it needs of
it as an explicit `Caller` argument. The request headers are read in one
scan (`read_headers`), and the caller's project in one read (`CallProjects`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from grpc import aio

from memoryd.domain.control import Environment, Project
from memoryd.domain.project_cache import ProjectCache, Unknown
from memoryd.domain.tenancy import Caller, EnvironmentKind, Principal

CROSS_PROJECT_HEADER = "x-allow-cross-project"


@dataclass(slots=True)
class CallState:
    method: str
    request_id: str
    peer: str
    # x-allow-cross-project: true (a search across the org's projects)
    allow_cross_project: bool = False
    principal: Principal | None = None
    # the rate limiter's trailers (x-ratelimit-*), set by admission
    trailers: Sequence[tuple[str, str]] = ()
    code: str = "OK"
    reason: str = ""
    request_bytes: int = 0  # size of the (unary) request body
    # the call's deadline as the server first saw it (None: no deadline)
    timeout_s: float | None = None
    # Extra `google.rpc.Status` details (protobuf messages) for the call's
    # error status, should it fail: an import's summary of what was stored.
    error_details: list[Any] = field(default_factory=list)
    # Projects read during the call, by (org, project): see `CallProjects`.
    projects: dict[tuple[str, str], Project | None] = field(default_factory=dict)

    def caller(self) -> Caller:
        assert self.principal is not None, "the call was not authenticated"
        return Caller(self.principal, self.request_id, self.peer)


_CALL: contextvars.ContextVar[CallState] = contextvars.ContextVar("memoryd_call")


def current_call() -> CallState:
    return _CALL.get()


def current_caller() -> Caller:
    return _CALL.get().caller()


def begin_call(call: CallState) -> None:
    """Makes `call` the current call of this task (and of the tasks it starts)."""
    _CALL.set(call)


def ongoing_call() -> CallState | None:
    """The current call, if one has begun."""
    return _CALL.get(None)


class Headers(NamedTuple):
    """The request headers the pipeline reads (binary headers are skipped)."""

    request_id: str = ""
    end_user_id: str = ""
    cross_project: bool = False
    # every API key presented: x-api-key values and bearer tokens, non-empty
    credentials: tuple[str, ...] = ()


def read_headers(context: aio.ServicerContext[Any, Any]) -> Headers:
    """The call's headers, from one scan of its metadata: nothing after the
    pipeline reads the metadata again."""
    request_id = end_user_id = ""
    cross_project = False
    credentials: list[str] = []
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if key == "x-api-key":
            if value:
                credentials.append(value)
        elif key == "authorization":
            token = _bearer(value)
            if token:
                credentials.append(token)
        elif key == "x-request-id":
            request_id = value
        elif key == "x-end-user-id":
            end_user_id = value
        elif key == CROSS_PROJECT_HEADER:
            cross_project = value.lower() == "true"
    return Headers(request_id, end_user_id, cross_project, tuple(credentials))


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` → `127.0.0.1` (the port changes per connection)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = rest.rpartition(":")
        return host.strip("[]") or rest
    return peer


class CallProjects:
    """The project source of the rate limiter and of memory calls: within a
    call, each project is read from the cache once and kept in the call
    state, so admission and the memory rules see the same project and the
    cache is asked once. Outside a call (start-up, background work) it reads
    through; a task that outlives the call it was started in would see that
    call's reads, so only the call's own work reads projects through this."""

    def __init__(self, projects: ProjectCache) -> None:
        self._projects = projects

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        call = _CALL.get(None)
        if call is None:
            return await self._projects.get_project(org_id, project_id)
        key = (org_id, project_id)
        if key not in call.projects:
            call.projects[key] = await self._projects.get_project(org_id, project_id)
        return call.projects[key]

    def peek(self, org_id: str, project_id: str) -> Project | Unknown | None:
        """`get_project` without a read: `Unknown.UNKNOWN` when one is needed."""
        call = _CALL.get(None)
        key = (org_id, project_id)
        if call is not None and key in call.projects:
            return call.projects[key]
        project = self._projects.peek(org_id, project_id)
        if call is not None and project is not Unknown.UNKNOWN:
            call.projects[key] = project
        return project

    async def list_environments_of_kind(
        self, org_id: str, kind: EnvironmentKind
    ) -> list[Environment]:
        return await self._projects.list_environments_of_kind(org_id, kind)
