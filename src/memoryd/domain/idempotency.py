"""Idempotent requests (AIP-155): a retry with the same `request_id` answers
the first call's response and does the work once.

A key is tenant-scoped from its first field: (org, project, environment,
end user, method, request id). The first call claims it (a "pending" row,
its own transaction, before any work) and stores its response when the work
succeeds; a call that failed as a whole releases its claim, so a retry runs
again. A concurrent call with the same key waits for the pending one (short
polls, bounded) and answers its stored response; a claim older than
`stale_after` is taken over (its server died). A key used again with a
different request (another fingerprint) is refused. Keys expire after
`retention` (24 h): `sweep` deletes them, and an expired one counts as absent
until then.

The crash window: the work is done but the server dies before the response
is stored. The claim goes stale, and the retry runs the work again. For
creates this writes nothing twice: the memories of a request with a request
id get ids derived from its key (`IdempotencyKey.memory_id`), so the re-run
overwrites what the first run wrote.

`IdempotencyStore` is the port; `memoryd.storage.sql.idempotency` keeps it
in the control store, so every replica sees the same keys.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from memoryd.domain.clock import Clock
from memoryd.domain.errors import DomainError, InvalidArgument, Unavailable

log = logging.getLogger("memoryd.idempotency")

MAX_REQUEST_ID_CHARS = 100
RETENTION = timedelta(hours=24)
STALE_AFTER = timedelta(seconds=60)
MAX_WAIT_S = 10.0
# A waiter's polls: the first after FIRST_POLL_S, each next one twice as late,
# at most MAX_POLL_S apart.
FIRST_POLL_S = 0.02
MAX_POLL_S = 0.5
# What a client whose wait ran out is told to wait before its retry.
RETRY_AFTER_S = 1.0

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class IdempotencyKey:
    """Whose request this is, and which: `end_user_id` is the call's
    x-end-user-id ("" when none), `method` the full gRPC method name."""

    org_id: str
    project_id: str
    environment_id: str
    end_user_id: str
    method: str
    request_id: str

    def memory_id(self, index: int) -> str:
        """The id of the `index`th memory this request creates, derived from
        the key: a re-run of the request (its first run was cut short before
        its response was saved) writes the same ids, so it overwrites what
        that run wrote instead of adding duplicates."""
        name = "\x1f".join(
            (
                self.org_id,
                self.project_id,
                self.environment_id,
                self.end_user_id,
                self.method,
                self.request_id,
                str(index),
            )
        )
        return str(uuid.uuid5(_MEMORY_ID_NAMESPACE, name))


_MEMORY_ID_NAMESPACE = uuid.UUID("0b7f4f0e-9a3e-4a51-8f2d-6c3b1e2d7a94")


@dataclass(frozen=True)
class StoredRequest:
    """A claimed key: the request's fingerprint, the claim holding it (a
    random token of the call that runs the work), when it was claimed, and
    the response once the work succeeded (None while pending)."""

    fingerprint: bytes
    claim: str
    claim_time: datetime
    response: bytes | None


class IdempotencyStore(Protocol):
    """Where keys are kept, shared by every replica. A response is opaque
    bytes. Each call is its own transaction; raises `Unavailable` when the
    store cannot answer."""

    async def claim_idempotency_key(
        self, key: IdempotencyKey, fingerprint: bytes, claim: str, now: datetime
    ) -> bool:
        """Stores `key` as pending under `claim`; False (nothing written) when
        the key is already stored, whatever its state."""
        ...

    async def take_over_idempotency_key(
        self, key: IdempotencyKey, old_claim: str, fingerprint: bytes, claim: str, now: datetime
    ) -> bool:
        """Replaces the row of `key` held by `old_claim` with a pending one
        under `claim`; False when it is no longer held by `old_claim` (or
        gone): another call got there first."""
        ...

    async def complete_idempotency_key(
        self, key: IdempotencyKey, claim: str, response: bytes
    ) -> bool:
        """Stores the response of a pending key held by `claim`; False when
        `claim` no longer holds it (taken over as stale)."""
        ...

    async def release_idempotency_key(self, key: IdempotencyKey, claim: str) -> None:
        """Deletes the pending row of `key` held by `claim` (none: nothing)."""
        ...

    async def read_idempotency_key(self, key: IdempotencyKey) -> StoredRequest | None:
        """The row of `key` (expired or not), None when there is none."""
        ...

    async def delete_idempotency_keys(self, before: datetime, limit: int) -> int:
        """Deletes at most `limit` keys claimed before `before`; how many."""
        ...


def validate_request_id(request_id: str) -> None:
    """InvalidArgument (field `request_id`) unless it is printable and at
    most MAX_REQUEST_ID_CHARS long."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument.field(
            "request_id",
            f"is {len(request_id)} characters long; at most {MAX_REQUEST_ID_CHARS}",
        )
    if not request_id.isprintable():
        raise InvalidArgument.field("request_id", "must be printable (no control characters)")


class Idempotency:
    """Runs a request's work once per key (see the module)."""

    def __init__(
        self,
        store: IdempotencyStore,
        clock: Clock,
        *,
        retention: timedelta = RETENTION,
        stale_after: timedelta = STALE_AFTER,
        max_wait_s: float = MAX_WAIT_S,
        sleep: Sleep = asyncio.sleep,
        sweep_batch: int = 1000,
    ) -> None:
        """`sleep` waits between a waiter's polls (tests pass one that moves
        a manual clock)."""
        self._store = store
        self._clock = clock
        self._retention = retention
        self._stale_after = stale_after
        self._max_wait_s = max_wait_s
        self._sleep = sleep
        self._sweep_batch = sweep_batch

    async def run(
        self,
        key: IdempotencyKey | None,
        fingerprint: bytes,
        work: Callable[[], Awaitable[bytes]],
        *,
        max_wait_s: float | None = None,
    ) -> bytes:
        """`work()`'s response, or the stored response of the first call
        with `key` (None: no idempotency, just `work()`). `fingerprint`
        identifies the request: a key stored with another one is refused
        (InvalidArgument on `request_id`). A call that finds the key pending
        waits at most `max_wait_s` (the constructor's bound when None or
        longer), then fails Unavailable (REQUEST_IN_PROGRESS) with a retry
        hint. An error of `work` propagates and releases the claim."""
        if key is None:
            return await work()
        wait_s = self._max_wait_s if max_wait_s is None else min(max_wait_s, self._max_wait_s)
        deadline = self._clock.monotonic() + wait_s
        poll_s = FIRST_POLL_S
        claim = secrets.token_hex(16)
        while True:
            stored = await self._claim(key, fingerprint, claim)
            if stored is None:
                return await self._work(key, claim, work)
            if stored.response is not None:
                return stored.response
            if self._clock.monotonic() + poll_s > deadline:
                raise Unavailable(
                    f"a call with this request_id is still in progress; retry after "
                    f"{RETRY_AFTER_S:g} s to get its response",
                    reason="REQUEST_IN_PROGRESS",
                    retry_after=RETRY_AFTER_S,
                )
            await self._sleep(poll_s)
            poll_s = min(poll_s * 2, MAX_POLL_S)

    async def _claim(
        self, key: IdempotencyKey, fingerprint: bytes, claim: str
    ) -> StoredRequest | None:
        """None once `claim` holds the key (the caller runs the work), else
        the first call's row (pending or done) for the same request."""
        while True:
            now = self._clock.now()
            if await self._store.claim_idempotency_key(key, fingerprint, claim, now):
                return None
            stored = await self._store.read_idempotency_key(key)
            if stored is None:
                continue  # released or swept since: claim it again
            if stored.claim_time < now - self._retention:
                # expired, not yet swept: as if absent, whatever it was for
                if await self._store.take_over_idempotency_key(
                    key, stored.claim, fingerprint, claim, now
                ):
                    return None
                continue
            if stored.fingerprint != fingerprint:
                raise InvalidArgument.field(
                    "request_id",
                    "was used for a different request within the last "
                    f"{self._retention.total_seconds() / 3600:g} hours; send a new request_id "
                    "for a new request",
                )
            if stored.response is None and stored.claim_time < now - self._stale_after:
                # its server died before it finished: this call does the work
                if await self._store.take_over_idempotency_key(
                    key, stored.claim, fingerprint, claim, now
                ):
                    return None
                continue
            return stored

    async def _work(
        self, key: IdempotencyKey, claim: str, work: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        try:
            response = await work()
        except BaseException:
            # A failed (or cancelled) call stores nothing: its retry runs
            # again. Shielded: a second cancellation must not leave the claim
            # pending until it goes stale.
            await asyncio.shield(self._release(key, claim))
            raise
        try:
            if not await self._store.complete_idempotency_key(key, claim, response):
                log.warning(
                    "a request outlived its claim (%s s) and was run again by a retry",
                    self._stale_after.total_seconds(),
                )
        except DomainError as err:
            # The work is done: its caller gets the response. The claim stays
            # pending until it goes stale (the crash window of the module).
            log.warning("the response of an idempotent request was not stored: %s", err)
        return response

    async def _release(self, key: IdempotencyKey, claim: str) -> None:
        try:
            await self._store.release_idempotency_key(key, claim)
        except DomainError as err:
            # The claim goes stale and a retry takes it over then.
            log.warning("a failed request's idempotency key was not released: %s", err)

    async def sweep(self) -> int:
        """Deletes the keys claimed more than `retention` ago; how many."""
        before = self._clock.now() - self._retention
        removed = 0
        while True:
            n = await self._store.delete_idempotency_keys(before, self._sweep_batch)
            removed += n
            if n < self._sweep_batch:
                return removed
