"""API key → Principal, with the slow hash kept off the hot path.

Order of checks for one call:
1. format and checksum (no storage access);
2. the verified-key cache (a dict lookup: the steady state);
3. failure limits per client address and per key id (guessing is slow and
   costs the server nothing);
4. the negative cache of recently refused key+secret pairs (no hash);
5. the stored key: revoked, expired, then the argon2 hash, in a thread.

Concurrent first uses of one key share one verification (single flight).
Revocation and rotation evict the cache entries of a key id (`evict`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime

from memoryd.auth.hashing import SecretHasher
from memoryd.auth.keys import parse_key
from memoryd.domain.clock import Clock
from memoryd.domain.control import ApiKeyRecord, ControlStore
from memoryd.domain.errors import (
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
)
from memoryd.domain.tenancy import Principal

log = logging.getLogger("memoryd.auth")

MAX_END_USER_ID_LEN = 128
_TOUCH_INTERVAL_S = 60.0
_NEGATIVE_TTL_S = 60.0
_FAILURE_WINDOW_S = 60.0


@dataclass
class _Entry:
    principal: Principal
    deadline: float  # monotonic


class _FailureLimiter:
    """Fixed one-minute windows of failed authentications per subject."""

    def __init__(self, clock: Clock, per_minute: int, max_subjects: int = 100_000) -> None:
        self._clock = clock
        self._limit = per_minute
        self._max = max_subjects
        self._windows: dict[str, tuple[float, int]] = {}

    def retry_after(self, subject: str) -> float:
        """Seconds until `subject` may try again; 0 when it may now."""
        window = self._windows.get(subject)
        if window is None:
            return 0.0
        start, count = window
        left = start + _FAILURE_WINDOW_S - self._clock.monotonic()
        if left <= 0:
            del self._windows[subject]
            return 0.0
        return left if count >= self._limit else 0.0

    def failed(self, subject: str) -> None:
        now = self._clock.monotonic()
        start, count = self._windows.get(subject, (now, 0))
        if now - start >= _FAILURE_WINDOW_S:
            start, count = now, 0
        self._windows[subject] = (start, count + 1)
        if len(self._windows) > self._max:
            cutoff = now - _FAILURE_WINDOW_S
            for key in [k for k, (s, _) in self._windows.items() if s < cutoff]:
                del self._windows[key]


class Authenticator:
    def __init__(
        self,
        store: ControlStore,
        hasher: SecretHasher,
        clock: Clock,
        *,
        cache_ttl_s: float = 30.0,
        cache_size: int = 10_000,
        failures_per_minute: int = 30,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._clock = clock
        self._ttl = cache_ttl_s
        self._size = cache_size
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_key_id: dict[str, set[bytes]] = {}
        self._negative: OrderedDict[bytes, tuple[float, Unauthenticated]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[Principal]] = {}
        self._failures = _FailureLimiter(clock, failures_per_minute)
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.cache_hits = 0
        self.cache_misses = 0

    async def authenticate(
        self, raw: str | None, *, end_user_id: str = "", peer: str = ""
    ) -> Principal:
        if not raw:
            raise Unauthenticated(
                "missing API key: send it in the x-api-key header (or authorization: Bearer <key>)",
                reason="API_KEY_MISSING",
            )
        if end_user_id and (
            len(end_user_id) > MAX_END_USER_ID_LEN or not end_user_id.isprintable()
        ):
            raise InvalidArgument.field(
                "x-end-user-id", f"must be 1 to {MAX_END_USER_ID_LEN} printable characters"
            )
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()
        entry = self._cache.get(digest)
        if entry is not None and entry.deadline > self._clock.monotonic():
            self.cache_hits += 1
            principal = entry.principal
        else:
            self.cache_misses += 1
            principal = await self._verify_once(raw, digest, peer)
        if end_user_id:
            return replace(principal, end_user_id=end_user_id)
        return principal

    def evict(self, key_id: str) -> None:
        """Forgets every cached verification of `key_id` (revoke, rotate, delete)."""
        for digest in self._by_key_id.pop(key_id, ()):
            self._cache.pop(digest, None)

    def clear(self) -> None:
        self._cache.clear()
        self._by_key_id.clear()

    async def close(self) -> None:
        """Stops the background last-used writes, before the store closes (a
        write cancelled mid-way must not be left awaiting a closed database)."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # --- slow path --------------------------------------------------------------

    async def _verify_once(self, raw: str, digest: bytes, peer: str) -> Principal:
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            principal = await self._verify(raw, digest, peer)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when nobody else waits
            raise
        else:
            future.set_result(principal)
            return principal
        finally:
            del self._inflight[digest]

    async def _verify(self, raw: str, digest: bytes, peer: str) -> Principal:
        parsed = parse_key(raw)  # raises before any storage access
        for subject in (f"peer:{peer}", f"key:{parsed.key_id}"):
            wait = self._failures.retry_after(subject)
            if wait > 0:
                raise ResourceExhausted(
                    f"too many failed authentications; retry in {wait:.0f} s",
                    [QuotaViolation(subject.split(":", 1)[0], "failed authentications per minute")],
                    retry_after=wait,
                    reason="AUTH_FAILURES_EXCEEDED",
                )
        refused = self._negative.get(digest)
        if refused is not None and refused[0] > self._clock.monotonic():
            if refused[1].reason == "API_KEY_INVALID":
                self._fail(parsed.key_id, peer)
            raise refused[1]

        record = await self._store.get_key(parsed.key_id)
        if record is None or record.prefix_kind != parsed.kind:
            self._fail(parsed.key_id, peer)
            raise _unknown_key()
        now = self._clock.now()
        # The secret first: a key's state is told only to who holds its secret.
        valid_until = self._ttl
        if await self._hasher.verify(parsed.secret, record.secret_hash):
            pass
        elif (
            record.previous_secret_hash
            and record.previous_secret_expire_time is not None
            and record.previous_secret_expire_time > now
            and await self._hasher.verify(parsed.secret, record.previous_secret_hash)
        ):
            valid_until = (record.previous_secret_expire_time - now).total_seconds()
        else:
            self._fail(parsed.key_id, peer)
            raise self._remember_refusal(digest, _unknown_key())
        if record.revoke_time is not None:
            raise self._remember_refusal(
                digest,
                Unauthenticated(
                    "this API key was revoked; use another key or create one "
                    "(KeyService.CreateApiKey)",
                    reason="API_KEY_REVOKED",
                ),
            )
        if record.expire_time is not None and record.expire_time <= now:
            raise self._remember_refusal(
                digest,
                Unauthenticated(
                    "this API key has expired; create a new one (KeyService.CreateApiKey)",
                    reason="API_KEY_EXPIRED",
                ),
            )
        valid_until = min(valid_until, self._valid_until(record, now))

        principal = Principal(
            key_id=record.id,
            kind=record.kind,
            org_id=record.org_id,
            scopes=frozenset(record.scopes),
            project_id=record.project_id,
            environment_id=record.environment_id,
            environment_kind=record.environment_kind,
        )
        self._remember(digest, principal, valid_until)
        self._touch(record.id, now)
        return principal

    def _valid_until(self, record: ApiKeyRecord, now: datetime) -> float:
        ttl = self._ttl
        if record.expire_time is not None:
            ttl = min(ttl, (record.expire_time - now).total_seconds())
        return ttl

    def _remember(self, digest: bytes, principal: Principal, ttl: float) -> None:
        self._cache[digest] = _Entry(principal, self._clock.monotonic() + ttl)
        self._cache.move_to_end(digest)
        self._by_key_id.setdefault(principal.key_id, set()).add(digest)
        while len(self._cache) > self._size:
            old_digest, old = self._cache.popitem(last=False)
            digests = self._by_key_id.get(old.principal.key_id)
            if digests is not None:
                digests.discard(old_digest)
                if not digests:
                    del self._by_key_id[old.principal.key_id]

    def _remember_refusal(self, digest: bytes, error: Unauthenticated) -> Unauthenticated:
        """Refuses the same key+secret again for a minute without a hash."""
        self._negative[digest] = (self._clock.monotonic() + _NEGATIVE_TTL_S, error)
        while len(self._negative) > self._size:
            self._negative.popitem(last=False)
        return error

    def _fail(self, key_id: str, peer: str) -> None:
        self._failures.failed(f"peer:{peer}")
        self._failures.failed(f"key:{key_id}")

    def _touch(self, key_id: str, now: datetime) -> None:
        """Records last use at most once a minute per key, off the call's path."""
        mono = self._clock.monotonic()
        if mono - self._touched.get(key_id, -_TOUCH_INTERVAL_S) < _TOUCH_INTERVAL_S:
            return
        self._touched[key_id] = mono
        task = asyncio.get_running_loop().create_task(self._store_touch(key_id, now))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store_touch(self, key_id: str, now: datetime) -> None:
        try:
            await self._store.touch_key(key_id, now)
        except Exception:  # a lost last-used time must never fail a call
            log.warning("could not record last use of key %s", key_id, exc_info=True)


def _unknown_key() -> Unauthenticated:
    return Unauthenticated(
        "unknown API key: it is not a key of this server, or its secret is wrong; "
        "check the x-api-key header",
        reason="API_KEY_INVALID",
    )
