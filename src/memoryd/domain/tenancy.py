"""Who is calling and whose data a call may touch.

A `Principal` is what an API key resolves to. A `Tenant` is the data boundary
of a memory call: (organization, project, environment), and within it one
end user's memories, only the memories without an end user, or (explicitly)
every end user's. Storage adapters receive a `Tenant` and add its conditions
to every query themselves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from memoryd.domain.errors import PermissionDenied


class EnvironmentKind(enum.Enum):
    LIVE = "live"
    TEST = "test"
    DEV = "dev"


class KeyKind(enum.Enum):
    DATA = "data"
    ORG = "org"


class Scope:
    """Every scope a key may hold. `memory:*` implies all memory scopes; `*` all."""

    MEMORY_READ = "memory:read"
    MEMORY_ADD = "memory:add"
    MEMORY_UPDATE = "memory:update"
    MEMORY_DELETE = "memory:delete"
    MEMORY_ALL_END_USERS = "memory:all_end_users"
    MEMORY_ALL = "memory:*"
    KEYS_READ = "keys:read"
    KEYS_WRITE = "keys:write"
    ADMIN_READ = "admin:read"
    ADMIN_WRITE = "admin:write"
    AUDIT_READ = "audit:read"
    USAGE_READ = "usage:read"
    ORG_CROSS_PROJECT_READ = "org:cross_project_read"
    WEBHOOK_READ = "webhook:read"
    WEBHOOK_WRITE = "webhook:write"
    WEBHOOK_DELETE = "webhook:delete"
    # knowledge (documents) and its ingest operations: data-key scopes, not
    # implied by `memory:*`
    KNOWLEDGE_READ = "knowledge:read"
    KNOWLEDGE_WRITE = "knowledge:write"
    KNOWLEDGE_DELETE = "knowledge:delete"
    INGEST_READ = "ingest:read"
    INGEST_WRITE = "ingest:write"
    # export jobs take an environment's memories out in bulk: never implied
    # by `memory:*` nor granted by default
    EXPORT_READ = "export:read"
    EXPORT_WRITE = "export:write"
    ALL = "*"


ALL_SCOPES: frozenset[str] = frozenset(
    v for k, v in vars(Scope).items() if k.isupper() and isinstance(v, str)
)
MEMORY_SCOPES: frozenset[str] = frozenset(
    {
        Scope.MEMORY_READ,
        Scope.MEMORY_ADD,
        Scope.MEMORY_UPDATE,
        Scope.MEMORY_DELETE,
        # A call without x-end-user-id reaches every end user's memories only
        # with this scope; without it, only the memories that have no end user.
        Scope.MEMORY_ALL_END_USERS,
    }
)
# Webhooks belong to the environment of the data key that manages them
# (WebhookService takes data keys only, like MemoryService); `memory:*` does
# not imply them: a webhook sends memories out of the server.
WEBHOOK_SCOPES: frozenset[str] = frozenset(
    {Scope.WEBHOOK_READ, Scope.WEBHOOK_WRITE, Scope.WEBHOOK_DELETE}
)
# Scopes only an org key may hold: a data key administers nothing.
ORG_ONLY_SCOPES: frozenset[str] = frozenset(
    {
        Scope.KEYS_READ,
        Scope.KEYS_WRITE,
        Scope.ADMIN_READ,
        Scope.ADMIN_WRITE,
        Scope.AUDIT_READ,
        Scope.USAGE_READ,
    }
)
DEFAULT_DATA_SCOPES: tuple[str, ...] = (Scope.MEMORY_READ, Scope.MEMORY_ADD)
DEFAULT_ORG_SCOPES: tuple[str, ...] = (Scope.KEYS_READ, Scope.ADMIN_READ)


def scope_grants(held: frozenset[str], needed: str) -> bool:
    """Whether a set of held scopes grants `needed`."""
    if needed in held or Scope.ALL in held:
        return True
    return needed in MEMORY_SCOPES and Scope.MEMORY_ALL in held


class EndUsers(enum.Enum):
    """Which end users' memories a tenant reaches, within its environment."""

    ONE = "one"  # the memories of `end_user_id` only
    NONE = "none"  # only the memories without an end user (project-level)
    ALL = "all"  # every memory, whatever its end user (needs all_end_users=True)


@dataclass(frozen=True)
class Tenant:
    """The data boundary of a memory call, and the owner of a memory.

    `end_user_id` is "" for none. Without one, a tenant reaches only the
    memories that have no end user, unless `all_end_users` is set: reaching
    every end user's memories is never the default, so a forgotten field
    can only narrow a call. A memory's own tenant never has `all_end_users`.
    """

    org_id: str
    project_id: str
    environment_id: str
    end_user_id: str = ""
    all_end_users: bool = False

    def __post_init__(self) -> None:
        if self.all_end_users and self.end_user_id:
            raise ValueError("a tenant names one end user or all of them, not both")

    @property
    def key(self) -> str:
        """The composite tenant keyword stored on every memory point."""
        return f"{self.org_id}/{self.project_id}/{self.environment_id}"

    @property
    def end_users(self) -> EndUsers:
        if self.end_user_id:
            return EndUsers.ONE
        return EndUsers.ALL if self.all_end_users else EndUsers.NONE

    def across_end_users(self) -> Tenant:
        """This environment with every end user's memories (no end user named)."""
        return Tenant(self.org_id, self.project_id, self.environment_id, all_end_users=True)

    def sees(self, owner_key: str, owner_end_user: str) -> bool:
        """Whether this tenant reaches a memory of tenant key `owner_key` and
        end user `owner_end_user` ("" for none)."""
        if owner_key != self.key:
            return False
        match self.end_users:
            case EndUsers.ONE:
                return owner_end_user == self.end_user_id
            case EndUsers.NONE:
                return owner_end_user == ""
            case EndUsers.ALL:
                return True


@dataclass(frozen=True)
class Principal:
    """The verified caller of one request."""

    key_id: str
    kind: KeyKind
    org_id: str
    scopes: frozenset[str]
    project_id: str = ""
    environment_id: str = ""
    environment_kind: EnvironmentKind | None = None
    end_user_id: str = ""

    def require(self, scope: str) -> None:
        """Raises PermissionDenied naming the scope when it is not held."""
        if not scope_grants(self.scopes, scope):
            raise PermissionDenied(
                f"this API key lacks the scope '{scope}'; "
                "create a key that has it (KeyService.CreateApiKey)",
                reason="SCOPE_MISSING",
            )

    def require_org_key(self) -> None:
        if self.kind is not KeyKind.ORG:
            raise PermissionDenied(
                "this method needs an org key (ms_org_…); data keys may only use "
                "MemoryService and WhoAmI",
                reason="ORG_KEY_REQUIRED",
            )

    def tenant(self) -> Tenant:
        """The tenant of a data key's memory call: its end user's memories, or
        without x-end-user-id the memories that have none. Reaching every end
        user's is decided by MemoryService (it needs a scope and is audited)."""
        if self.kind is not KeyKind.DATA:
            raise PermissionDenied(
                "memories belong to an environment: use a data key "
                "(ms_live_/ms_test_/ms_dev_), not an org key",
                reason="DATA_KEY_REQUIRED",
            )
        return Tenant(self.org_id, self.project_id, self.environment_id, self.end_user_id)


@dataclass(frozen=True)
class Caller:
    """A principal plus what identifies its call, for audit and logs."""

    principal: Principal
    request_id: str = ""
    peer: str = ""

    def admin(self, scope: str) -> Principal:
        """The principal of an org key holding `scope`, else PermissionDenied."""
        self.principal.require_org_key()
        self.principal.require(scope)
        return self.principal
