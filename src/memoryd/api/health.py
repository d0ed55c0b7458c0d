"""The standard gRPC health service (`grpc.health.v1.Health`), kept true by a
probe of the stores.

The whole server (`""`) and each service name go SERVING or NOT_SERVING
together; `liveness` stays SERVING while the process runs, so a liveness
probe on it does not restart pods because a backend is down. The probe runs
every `interval_s`, and at once after `recheck()` (a store saw its state
change). After `enter_graceful_shutdown()` every name is NOT_SERVING for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeAlias

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from memoryd.domain.control import ControlStore
from memoryd.domain.errors import DomainError
from memoryd.domain.memory import Filter, VectorStore
from memoryd.domain.tenancy import Tenant

log = logging.getLogger("memoryd")

LIVENESS_SERVICE = "liveness"

Check = Callable[[], Awaitable[bool]]
"""One part of the probe: True when that part can serve. It may raise instead
(a `DomainError` for a known state such as a full disk, said without a
traceback; anything else is logged with one)."""

Status: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus.ValueType

_HEALTH_TENANT = Tenant("_health", "_health", "_health")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def store_checks(
    control: ControlStore,
    vectors: VectorStore,
    disk: Callable[[], object] | None = None,
    *,
    timeout_s: float = 2.0,
) -> list[Check]:
    """SERVING only when `disk()` (run in a thread; it raises when the data
    directory's disk has no room for writes) passes, the control store answers
    a ping and the vector store a count (of a tenant that holds nothing), each
    store within `timeout_s`."""

    async def control_answers() -> bool:
        return await asyncio.wait_for(control.ping(), timeout_s)

    async def vectors_answer() -> bool:
        await asyncio.wait_for(vectors.count(_HEALTH_TENANT, Filter(), _EPOCH), timeout_s)
        return True

    checks: list[Check] = [control_answers, vectors_answer]
    if disk is not None:
        room = disk

        async def disk_has_room() -> bool:
            await asyncio.to_thread(room)
            return True

        checks.insert(0, disk_has_room)
    return checks


class Health:
    """The health servicer and the task that keeps it current."""

    def __init__(self, services: Sequence[str], *, interval_s: float = 5.0) -> None:
        self.servicer = HealthServicer()
        self._services = tuple(services)
        self._interval_s = interval_s
        self._checks: Sequence[Check] = ()
        self._recheck = asyncio.Event()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    def add_to_server(self, server: aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self, checks: Sequence[Check]) -> None:
        """Sets the first status from `checks` and keeps probing in the background."""
        self._checks = checks
        await self._set(await self._probe())
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def recheck(self) -> None:
        """Probes now instead of at the next interval."""
        self._recheck.set()

    async def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING from now on; the probe no longer changes it."""
        self._stopped = True
        await self.servicer.enter_graceful_shutdown()

    async def close(self) -> None:
        """Stops probing."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)
            self._task = None

    async def _probe(self) -> Status:
        try:
            for check in self._checks:
                if not await check():
                    return health_pb2.HealthCheckResponse.NOT_SERVING
        except DomainError as err:
            # a full or hung disk: said once by the state change, no traceback
            log.debug("health probe: %s", err)
            return health_pb2.HealthCheckResponse.NOT_SERVING
        except Exception:
            log.warning("health probe failed", exc_info=True)
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING

    async def _watch(self) -> None:
        last = None
        while not self._stopped:
            self._recheck.clear()
            status = await self._probe()
            if status != last and not self._stopped:
                await self._set(status)
                if last is not None:
                    log.warning(
                        "health changed to %s",
                        health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                    )
                last = status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), self._interval_s)

    async def _set(self, status: Status) -> None:
        await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.servicer.set("", status)
        for name in self._services:
            await self.servicer.set(name, status)
