"""The ports the domain's rules call out through, besides the stores.

Adapters live where the I/O is:

- `SecretHasher`: `memoryd.auth.hashing.Argon2Hasher`;
- `AuditSink`: `memoryd.storage.audit_file.JsonLinesAuditFile`;
- `UsageSource`: the usage meters of `memoryd.usage`;
- `KeyInvalidator`: `publish` of a revocation bus (`memoryd.storage.revocation`).

The storage ports sit with the values they carry: `ControlStore` in
`memoryd.domain.control`, `VectorStore` and `Embedder` in
`memoryd.domain.memory`; `Clock` in `memoryd.domain.clock`.
"""

from __future__ import annotations

from datetime import date
from typing import Protocol

from memoryd.domain.control import AuditEvent, UsageRecord


class SecretHasher(Protocol):
    """Slow hashing of key secrets, never on the event loop.

    `hash` returns a self-describing hash (algorithm and parameters inside),
    so `verify` checks a secret against hashes made with other parameters.
    `verify` answers False for a wrong secret or a malformed hash and never
    raises for either. `close` releases the workers (at shutdown)."""

    async def hash(self, secret: str) -> str: ...

    async def verify(self, secret: str, hashed: str) -> bool: ...

    def close(self) -> None: ...


class AuditSink(Protocol):
    """Receives every audit event, after the control store has it (or held
    it during an outage), for a SIEM. `append` writes one event as one line;
    events of concurrent calls are never interleaved. An I/O failure is
    raised, and fails the audited call (the change itself is made)."""

    async def append(self, event: AuditEvent) -> None: ...


class UsageSource(Protocol):
    """Reads usage counters for GetUsage.

    Answers one record per project, environment and UTC day with any usage
    in `[start, end]` (inclusive), ordered by date, project, environment;
    `None` for `project_id`/`environment_id` means all. Raises
    `InvalidArgument` for a range longer than what is kept and `Unavailable`
    when the backend cannot answer."""

    async def read(
        self,
        org_id: str,
        project_id: str | None,
        environment_id: str | None,
        start: date,
        end: date,
    ) -> list[UsageRecord]: ...


class KeyInvalidator(Protocol):
    """Called with a key id whenever a key stops being valid as cached
    (revoke, rotate, delete): evicts it here and on every replica. Never
    raises for backend trouble: the change is already durable, and the
    verified-key cache TTL bounds how long another replica may still accept
    the key."""

    async def __call__(self, key_id: str) -> None: ...
