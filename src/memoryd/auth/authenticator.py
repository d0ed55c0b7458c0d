"""API key → Principal, with the slow hash kept off the hot path.

Order of checks for one call:
1. format, strictly (no storage access, no hash): a key has one spelling,
   so no variant can bypass the cache or cost a hash;
2. the verified-key cache, by key id, holding the sha256 of the verified
   secret(s) (a dict lookup and a constant-time compare: the steady state,
   answered without a coroutine by `cached`); a hit is this very key,
   verified before, so its checksum is not computed again;
3. on a miss, the checksum (no storage access, no slow hash);
4. failure limits per (client address, key id): guessing a key is slow for
   the guesser, and nobody else is locked out;
5. the negative cache of recently refused key+secret pairs (no hash);
6. the stored key, then the argon2 hash in a thread (an unknown key id is
   verified against a dummy hash, so it costs the same), then revoked and
   expired; one client address runs one such verification at a time (a
   short queue, then RESOURCE_EXHAUSTED), so no address can take the hasher
   pool from the others. A secret this process verified before against
   the very hash the record still holds (its sha256 noted with that hash)
   is not hashed again: when a cache entry's TTL ends, the key costs one
   store read, not an argon2 verification (~25 ms of CPU, and a latency
   spike every TTL per key); revocation, expiry and deletion are read from
   the record as always, and a rotated or changed hash is verified anew.

Concurrent first uses of one key share one verification (single flight).
A key used in the last fifth of its cache TTL is verified again in the
background (once per cached secret), so a key in steady use does not make
one call wait for the store every TTL; the cached entry still answers only
until its TTL.

Revocation, rotation and deletion call `evict(key_id)` (here and, through
the revocation bus, on every replica). Eviction wins over a verification
that started before it: every verification notes the eviction generation
when it starts, `evict` bumps the generation of the key id, and a
verification that finishes under an older generation is not cached and is
not shared with calls that arrive after the eviction. It answers only the
calls that were already waiting on it (they were concurrent with the
revocation), and only if the record it read was valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime

from memoryd.domain.clock import Clock
from memoryd.domain.control import ApiKeyRecord, ControlStore
from memoryd.domain.errors import (
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
)
from memoryd.domain.key_format import ParsedKey, key_id_of, new_secret, parse_key
from memoryd.domain.ports import SecretHasher
from memoryd.domain.refresh_ahead import RefreshAhead
from memoryd.domain.tenancy import Principal

log = logging.getLogger("memoryd.auth")

MAX_END_USER_ID_LEN = 128
_TOUCH_INTERVAL_S = 60.0
_NEGATIVE_TTL_S = 60.0
_FAILURE_WINDOW_S = 60.0
# Key verifications (store read + argon2) one client address may run at once,
# and how many more may wait: one address gets at most this share of the
# hasher pool, whatever it sends, and nobody is locked out by failures.
_HASHES_PER_PEER = 1
_WAITING_PER_PEER = 64
# A key has at most two valid secrets (the current one and, during a
# rotation's grace, the previous one).
_SECRETS_PER_KEY = 2


@dataclass(frozen=True)
class _Secret:
    digest: bytes  # sha256 of a verified secret: never the secret itself
    deadline: float  # monotonic


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    secrets: tuple[_Secret, ...]

    def deadline(self, digest: bytes, now: float) -> float | None:
        """Until when the secret of `digest` is cached (None: it is not, or
        no longer). Every stored digest is compared, in constant time each."""
        found = None
        for s in self.secrets:
            if hmac.compare_digest(s.digest, digest) and s.deadline > now:
                found = s.deadline
        return found


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


@dataclass(frozen=True)
class _Flight:
    """One verification in progress, and the eviction generation it began in."""

    future: asyncio.Future[Principal]
    generation: int


class _PeerGate:
    """Bounds the slow verifications of one client address: `_HASHES_PER_PEER`
    at a time, `_WAITING_PER_PEER` more queued, the rest refused at once.

    This keeps the work per attempt bounded without counting failures per
    address (which locked out other tenants behind the same address)."""

    def __init__(self) -> None:
        self._peers: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, peer: str) -> AsyncIterator[None]:
        sem, users = self._peers.setdefault(peer, (asyncio.Semaphore(_HASHES_PER_PEER), [0]))
        if users[0] >= _HASHES_PER_PEER + _WAITING_PER_PEER:
            raise ResourceExhausted(
                "too many key verifications in progress from this address; retry in 1 s",
                [QuotaViolation("address", "concurrent key verifications per address")],
                retry_after=1.0,
                reason="AUTH_CONCURRENCY_EXCEEDED",
            )
        users[0] += 1
        try:
            async with sem:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._peers[peer]


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
        self._cache: OrderedDict[str, _Entry] = OrderedDict()  # by key id
        self._negative: OrderedDict[bytes, tuple[float, Unauthenticated]] = OrderedDict()
        self._inflight: dict[bytes, _Flight] = {}
        # sha256 of a verified secret → the stored hash it was verified against
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        # Eviction generations: a counter bumped by every evict/clear, and the
        # generation in which each key id (or the whole cache) was last evicted.
        self._generation = 0
        self._evicted_at: dict[str, int] = {}
        self._cleared_at = 0
        self._dummy_hash: str | None = None
        self._failures = _FailureLimiter(clock, failures_per_minute)
        self._gate = _PeerGate()
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ahead: RefreshAhead[bytes] = RefreshAhead(cache_ttl_s, cache_size * _SECRETS_PER_KEY)
        self.cache_hits = 0
        self.cache_misses = 0
        self.evictions = 0  # evict() and clear() calls, from this replica or the bus
        self.refreshes = 0  # verifications begun ahead of a cached key's TTL

    async def authenticate(
        self, raw: str | None, *, end_user_id: str = "", peer: str = ""
    ) -> Principal:
        principal = self.cached(raw, end_user_id=end_user_id, peer=peer)
        if principal is not None:
            return principal
        assert raw  # `cached` refused a missing key
        parsed = parse_key(raw)  # the checksum too, before any verification
        digest = hashlib.sha256(raw.encode("ascii")).digest()
        self.cache_misses += 1
        principal = await self._verify_once(parsed, digest, peer)
        if end_user_id:
            return replace(principal, end_user_id=end_user_id)
        return principal

    def cached(self, raw: str | None, *, end_user_id: str = "", peer: str = "") -> Principal | None:
        """The principal of a key verified within its cache TTL, without
        waiting; None when only `authenticate` can tell. Refuses a missing
        or malformed key, or a malformed end-user id, as `authenticate` does."""
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
        key_id = key_id_of(raw)  # strict: before the cache, any lookup or hash
        # `raw` is now the one canonical ASCII spelling of the key.
        digest = hashlib.sha256(raw.encode("ascii")).digest()
        entry = self._cache.get(key_id)
        if entry is None:
            return None
        now = self._clock.monotonic()
        deadline = entry.deadline(digest, now)
        if deadline is None:
            return None
        self.cache_hits += 1
        if digest not in self._inflight and self._ahead.due(digest, deadline, now):
            self._refresh(parse_key(raw), digest, peer)
        if end_user_id:
            return replace(entry.principal, end_user_id=end_user_id)
        return entry.principal

    def _refresh(self, parsed: ParsedKey, digest: bytes, peer: str) -> None:
        """Verifies a cached key again in the background, as its TTL nears
        its end (`RefreshAhead`): a key in steady use never waits for the
        store at its TTL. The entry answers until its deadline as before; a
        refusal drops it at once."""
        self.refreshes += 1
        task = asyncio.get_running_loop().create_task(self._refresh_now(parsed, digest, peer))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_now(self, parsed: ParsedKey, digest: bytes, peer: str) -> None:
        try:
            await self._verify_once(parsed, digest, peer)
        except (Unauthenticated, NotFound):
            self._cache.pop(parsed.key_id, None)  # revoked, expired or deleted meanwhile
        except Exception:  # e.g. the store is down: the calls at the deadline will say so
            log.debug("refreshing key %s ahead of its TTL failed", parsed.key_id, exc_info=True)

    def evict(self, key_id: str) -> None:
        """Forgets every cached verification of `key_id` (revoke, rotate, delete),
        and makes every verification of it already in flight uncacheable."""
        self._generation += 1
        self.evictions += 1
        self._evicted_at[key_id] = self._generation
        entry = self._cache.pop(key_id, None)
        for secret in entry.secrets if entry is not None else ():
            self._verified.pop(secret.digest, None)
        if len(self._evicted_at) > self._size:
            self._prune_generations()

    def clear(self) -> None:
        """Forgets every cached verification (after a lost revocation feed)."""
        self._generation += 1
        self.evictions += 1
        self._cleared_at = self._generation
        self._evicted_at.clear()  # `_cleared_at` covers them all
        self._cache.clear()
        self._verified.clear()

    async def close(self) -> None:
        """Stops the background last-used writes, before the store closes (a
        write cancelled mid-way must not be left awaiting a closed database)."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # --- slow path --------------------------------------------------------------

    def _evicted_since(self, key_id: str, generation: int) -> bool:
        return self._cleared_at > generation or self._evicted_at.get(key_id, -1) > generation

    def _prune_generations(self) -> None:
        """Drops eviction marks no verification in flight can be older than."""
        oldest = min((f.generation for f in self._inflight.values()), default=self._generation)
        for key_id in [k for k, g in self._evicted_at.items() if g <= oldest]:
            del self._evicted_at[key_id]

    async def _verify_once(self, parsed: ParsedKey, digest: bytes, peer: str) -> Principal:
        pending = self._inflight.get(digest)
        # A verification that began before an eviction is not shared with
        # calls arriving after it: they must see the record as it is now.
        if pending is not None and not self._evicted_since(parsed.key_id, pending.generation):
            return await asyncio.shield(pending.future)
        flight = _Flight(asyncio.get_running_loop().create_future(), self._generation)
        self._inflight[digest] = flight
        try:
            principal, ttl = await self._verify(parsed, digest, peer)
        except BaseException as exc:
            flight.future.set_exception(exc)
            flight.future.exception()  # marks it retrieved when nobody else waits
            raise
        else:
            if not self._evicted_since(parsed.key_id, flight.generation):
                self._remember(digest, principal, ttl)
            flight.future.set_result(principal)
            return principal
        finally:
            if self._inflight.get(digest) is flight:
                del self._inflight[digest]

    async def _verify(self, parsed: ParsedKey, digest: bytes, peer: str) -> tuple[Principal, float]:
        """The principal of a verified key and how long it may be cached."""
        subject = _failure_subject(peer, parsed.key_id)
        wait = self._failures.retry_after(subject)
        if wait > 0:
            raise ResourceExhausted(
                f"too many failed authentications of this key from this address; "
                f"retry in {wait:.0f} s",
                [QuotaViolation("key", "failed authentications per address and key per minute")],
                retry_after=wait,
                reason="AUTH_FAILURES_EXCEEDED",
            )
        refused = self._negative.get(digest)
        if refused is not None and refused[0] > self._clock.monotonic():
            if refused[1].reason == "API_KEY_INVALID":
                self._failures.failed(subject)
            raise refused[1]
        if digest in self._verified:
            # A secret verified before (so not a guess): outside the gate,
            # which bounds hashing per address; no hash if the record still
            # holds the hash it was verified against.
            record = await self._store.get_key(parsed.key_id)
            if (
                record is not None
                and record.prefix_kind == parsed.kind
                and self._known(digest, record.secret_hash)
            ):
                return self._check_state(record, digest, self._ttl)
        async with self._gate.slot(peer):
            return await self._check_stored(parsed, digest, subject)

    def _known(self, digest: bytes, stored_hash: str) -> bool:
        """Whether this secret was verified against `stored_hash` before."""
        hashed = self._verified.get(digest)
        return hashed is not None and hmac.compare_digest(hashed, stored_hash)

    def _note_verified(self, digest: bytes, stored_hash: str) -> None:
        self._verified[digest] = stored_hash
        self._verified.move_to_end(digest)
        while len(self._verified) > self._size * _SECRETS_PER_KEY:
            self._verified.popitem(last=False)

    async def _check_stored(
        self, parsed: ParsedKey, digest: bytes, subject: str
    ) -> tuple[Principal, float]:
        record = await self._store.get_key(parsed.key_id)
        if record is None or record.prefix_kind != parsed.kind:
            # One hash as for a real key: an unknown id must not answer faster.
            await self._hasher.verify(parsed.secret, await self._dummy())
            self._failures.failed(subject)
            raise self._remember_refusal(digest, _unknown_key())
        now = self._clock.now()
        # The secret first: a key's state is told only to who holds its secret.
        valid_until = self._ttl
        if await self._hasher.verify(parsed.secret, record.secret_hash):
            self._note_verified(digest, record.secret_hash)
        elif (
            record.previous_secret_hash
            and record.previous_secret_expire_time is not None
            and record.previous_secret_expire_time > now
            and await self._hasher.verify(parsed.secret, record.previous_secret_hash)
        ):
            valid_until = (record.previous_secret_expire_time - now).total_seconds()
        else:
            self._failures.failed(subject)
            raise self._remember_refusal(digest, _unknown_key())
        return self._check_state(record, digest, valid_until)

    def _check_state(
        self, record: ApiKeyRecord, digest: bytes, valid_until: float
    ) -> tuple[Principal, float]:
        """The principal of a key whose secret was verified, unless the key is
        revoked, expired or of a deleted scope; and how long it may be cached."""
        now = self._clock.now()
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
        if record.scope_deleted:
            # Told only to who holds the secret; not remembered, so an
            # Undelete restores the key on the next call.
            raise NotFound(
                "the project or environment of this API key is deleted; an org key "
                "may restore it within the retention window (AdminService.UndeleteEnvironment, "
                "UndeleteProject)",
                reason="SCOPE_DELETED",
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
        self._touch(record.id, now)
        return principal, valid_until

    async def _dummy(self) -> str:
        """A hash of a random secret, made once with the hasher's parameters."""
        if self._dummy_hash is None:
            self._dummy_hash = await self._hasher.hash(new_secret())
        return self._dummy_hash

    def _valid_until(self, record: ApiKeyRecord, now: datetime) -> float:
        ttl = self._ttl
        if record.expire_time is not None:
            ttl = min(ttl, (record.expire_time - now).total_seconds())
        return ttl

    def _remember(self, digest: bytes, principal: Principal, ttl: float) -> None:
        key_id = principal.key_id
        now = self._clock.monotonic()
        old = self._cache.get(key_id)
        kept = tuple(
            s for s in (old.secrets if old else ()) if s.digest != digest and s.deadline > now
        )[-(_SECRETS_PER_KEY - 1) :]
        self._cache[key_id] = _Entry(principal, (*kept, _Secret(digest, now + ttl)))
        self._cache.move_to_end(key_id)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)

    def _remember_refusal(self, digest: bytes, error: Unauthenticated) -> Unauthenticated:
        """Refuses the same key+secret again for a minute without a hash."""
        self._negative[digest] = (self._clock.monotonic() + _NEGATIVE_TTL_S, error)
        while len(self._negative) > self._size:
            self._negative.popitem(last=False)
        return error

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


def _failure_subject(peer: str, key_id: str) -> str:
    """Failures count per (client address, key id): an attacker's guesses slow
    the attacker down, never the key's owner elsewhere nor other keys."""
    return f"{peer}|{key_id}"


def _unknown_key() -> Unauthenticated:
    return Unauthenticated(
        "unknown API key: it is not a key of this server, or its secret is wrong; "
        "check the x-api-key header",
        reason="API_KEY_INVALID",
    )
