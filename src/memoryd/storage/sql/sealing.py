"""Sealed columns of the control store: the content a row carries (a
conversation message, an operation's payload and result, a change event's
memory, a webhook payload, a cached response) is sealed with its
environment's data key (`memoryd.crypto.sealer`) on the way in and opened on
the way out. Without a sealer (a store opened by a tool or a test) values
pass as they are.

Every sealed row carries its tenant columns (org_id, project_id,
environment_id), which name the key; `_keys_for_reading` loads the keys a
batch of rows needs before the synchronous `_open`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from memoryd.crypto.sealer import Sealer
from memoryd.domain.encryption import EnvRef
from memoryd.domain.tenancy import Tenant


def env_of(tenant: Tenant) -> EnvRef:
    return (tenant.org_id, tenant.project_id, tenant.environment_id)


def _row_env(row: Any) -> EnvRef:
    return (row.org_id, row.project_id, row.environment_id)


class Sealing:
    """The sealing helpers of `SqlControlStore`'s area mixins."""

    _sealer: Sealer | None = None

    def seal_with(self, sealer: Sealer) -> None:
        """Seals content columns with `sealer` from now on."""
        self._sealer = sealer

    async def _keys_for_writing(self, tenants: Iterable[Tenant]) -> None:
        if self._sealer is not None and self._sealer.enabled:
            await self._sealer.ready({env_of(t) for t in tenants}, create=True)

    def _seal(self, tenant: Tenant, field: str, text: str) -> str:
        return text if self._sealer is None else self._sealer.seal(env_of(tenant), field, text)

    def _seal_bytes(self, tenant: Tenant, field: str, data: bytes) -> bytes:
        if self._sealer is None:
            return data
        return self._sealer.seal_bytes(env_of(tenant), field, data)

    async def _keys_for_reading(self, rows: Sequence[Any], *columns: str) -> None:
        if self._sealer is None or not rows:
            return
        await self._sealer.ready_for((_row_env(r), getattr(r, c)) for r in rows for c in columns)

    def _open(self, row: Any, column: str) -> Any:
        """The clear value of `row.column` (a row with tenant columns)."""
        value = getattr(row, column)
        if self._sealer is None or value is None:
            return value
        if isinstance(value, bytes | memoryview):
            return self._sealer.open_bytes(_row_env(row), column, bytes(value))
        return self._sealer.open(_row_env(row), column, value)
