"""The authenticator on an injected clock, a fake store and a counting hasher:
what touches storage, what costs a slow hash, what is cached and for how long,
and that eviction wins over verifications already in flight (a gated hasher
holds a verification open while a key is revoked: no timing involved).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from memoryd.auth.authenticator import Authenticator
from memoryd.auth.hashing import Argon2Hasher
from memoryd.domain.clock import ManualClock
from memoryd.domain.control import ApiKeyRecord
from memoryd.domain.errors import DomainError, InvalidArgument, ResourceExhausted, Unauthenticated
from memoryd.domain.key_format import format_key, new_key_id, new_secret
from memoryd.domain.tenancy import EnvironmentKind, KeyKind


class CountingHasher(Argon2Hasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost_kib=1024)
        self.verifies = 0

    async def verify(self, secret: str, hashed: str) -> bool:
        self.verifies += 1
        return await super().verify(secret, hashed)


class GatedHasher(CountingHasher):
    """`verify` of a gated secret waits until the test opens its gate, so a
    verification is provably in flight (its record already read)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, int] = {}
        self.running = 0
        self.most_running = 0

    def gate(self, secret: str) -> asyncio.Event:
        return self.gates.setdefault(secret, asyncio.Event())

    async def verify(self, secret: str, hashed: str) -> bool:
        self.entered[secret] = self.entered.get(secret, 0) + 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if secret in self.gates:
                await self.gates[secret].wait()
            return await super().verify(secret, hashed)
        finally:
            self.running -= 1

    async def entered_verify(self, secret: str, times: int = 1) -> None:
        for _ in range(10_000):
            if self.entered.get(secret, 0) >= times:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"verify was not entered {times} time(s)")


class FailingStore:
    """Any storage access fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was called ({name}) for a key refused by its format")


class FakeStore:
    def __init__(self) -> None:
        self.keys: dict[str, ApiKeyRecord] = {}
        self.reads = 0
        self.touched: list[str] = []

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        self.reads += 1
        await asyncio.sleep(0)
        return self.keys.get(key_id)

    async def touch_key(self, key_id: str, when: Any) -> None:
        self.touched.append(key_id)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def hasher() -> Any:
    h = CountingHasher()
    yield h
    h.close()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def _auth(store: Any, hasher: Argon2Hasher, clock: ManualClock, **kw: Any) -> Authenticator:
    kw.setdefault("cache_ttl_s", 30.0)
    kw.setdefault("failures_per_minute", 30)
    return Authenticator(store, hasher, clock, **kw)


async def _add_key(
    store: FakeStore, hasher: Argon2Hasher, clock: ManualClock, **fields: Any
) -> tuple[ApiKeyRecord, str, str]:
    key_id, secret = new_key_id(), new_secret()
    record = ApiKeyRecord(
        id=key_id,
        org_id="org_1",
        kind=KeyKind.DATA,
        name="k",
        scopes=("memory:read",),
        secret_hash=await hasher.hash(secret),
        create_time=clock.now(),
        created_by="test",
        project_id="prj_1",
        environment_id="env_1",
        environment_kind=EnvironmentKind.LIVE,
    )
    record = replace(record, **fields)
    store.keys[key_id] = record
    return record, format_key(record.prefix_kind, key_id, secret), secret


def _wrong_secret(raw: str, secret: str) -> str:
    record_kind, key_id = raw.split("_")[1], raw.split("_")[2][:12]
    other = ("A" if secret[0] != "A" else "B") + secret[1:]
    return format_key(record_kind, key_id, other)


# --- refused without storage --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "not-a-key",
        "ms_live_short",
        "ms_live_" + "a" * 50,  # right shape, wrong checksum
        format_key("live", "abc123def456", "x" * 32)[:-1] + "0",
    ],
)
async def test_malformed_keys_are_refused_without_touching_storage(
    raw: str, hasher: CountingHasher, clock: ManualClock
) -> None:
    auth = _auth(FailingStore(), hasher, clock)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(raw, peer="1.2.3.4")
    assert info.value.reason in ("API_KEY_MALFORMED", "API_KEY_CHECKSUM")
    assert hasher.verifies == 0


@pytest.mark.parametrize(
    "variant",
    [
        lambda raw: " " + raw,
        lambda raw: raw + " ",
        lambda raw: "\t" + raw,
        lambda raw: raw + "\n",
        lambda raw: "\xa0" + raw,
        lambda raw: raw + "\xa0",
        lambda raw: raw + "\u2003",
        lambda raw: "\ufeff" + raw,
        lambda raw: raw[:-1] + "\u0660",  # a non-ASCII digit
    ],
    ids=[
        "space",
        "trailing-space",
        "tab",
        "newline",
        "nbsp",
        "trailing-nbsp",
        "em-space",
        "bom",
        "arabic-digit",
    ],
)
async def test_a_non_canonical_copy_of_a_valid_key_is_refused_without_lookup_or_hash(
    variant: Any, store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    await auth.authenticate(raw)  # the canonical key is verified and cached
    reads, verifies = store.reads, hasher.verifies
    for _ in range(3):
        with pytest.raises(Unauthenticated) as info:
            await auth.authenticate(variant(raw), peer="1.2.3.4")
        assert info.value.reason == "API_KEY_MALFORMED"
    assert (store.reads, hasher.verifies) == (reads, verifies)
    assert auth.cache_hits == 0  # not even a cache lookup answered it


async def test_a_missing_key_is_refused_without_touching_storage(
    hasher: CountingHasher, clock: ManualClock
) -> None:
    auth = _auth(FailingStore(), hasher, clock)
    for raw in (None, ""):
        with pytest.raises(Unauthenticated) as info:
            await auth.authenticate(raw)
        assert info.value.reason == "API_KEY_MISSING"
        assert "x-api-key" in info.value.message


async def test_a_bad_end_user_id_is_invalid_argument(
    hasher: CountingHasher, clock: ManualClock
) -> None:
    auth = _auth(FailingStore(), hasher, clock)
    for bad in ("u" * 129, "a\nb"):
        with pytest.raises(InvalidArgument) as info:
            await auth.authenticate(format_key("live", new_key_id(), new_secret()), end_user_id=bad)
        assert info.value.violations[0].field == "x-end-user-id"


# --- the happy path and its cache ---------------------------------------------------------


async def test_a_valid_key_resolves_to_its_principal_and_is_cached(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    p = await auth.authenticate(raw, end_user_id="user-7")
    assert (p.key_id, p.org_id, p.project_id, p.environment_id) == (
        record.id,
        "org_1",
        "prj_1",
        "env_1",
    )
    assert p.scopes == frozenset({"memory:read"})
    assert p.end_user_id == "user-7"
    for _ in range(20):
        again = await auth.authenticate(raw)
        assert again.end_user_id == ""
    assert (store.reads, hasher.verifies) == (1, 1)
    assert auth.cache_hits == 20
    await asyncio.sleep(0)
    assert store.touched == [record.id]  # last use recorded once, not per call


async def test_the_cache_expires_after_its_ttl(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, cache_ttl_s=10)
    await auth.authenticate(raw)
    clock.advance(9)
    await auth.authenticate(raw)
    assert (store.reads, hasher.verifies) == (1, 1)
    clock.advance(2)
    await auth.authenticate(raw)
    # the record is read again; the secret, verified against the hash the
    # record still holds, is not hashed again
    assert (store.reads, hasher.verifies) == (2, 1)
    assert auth.cache_misses == 2


async def _settled(auth: Authenticator) -> None:
    """Until the authenticator's background work (refreshes, last-use
    writes) is done."""
    while auth._background:
        await asyncio.gather(*auth._background)


async def test_a_key_used_near_its_ttl_is_verified_again_in_the_background(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, cache_ttl_s=10)
    await auth.authenticate(raw)
    clock.advance(7.9)  # before the last fifth of the TTL: nothing
    await auth.authenticate(raw)
    await _settled(auth)
    assert (store.reads, auth.refreshes) == (1, 0)
    clock.advance(0.2)  # in it: answered from the cache, refreshed behind it, once
    for _ in range(3):
        await auth.authenticate(raw)
    await _settled(auth)
    assert (store.reads, hasher.verifies, auth.refreshes) == (2, 1, 1)
    clock.advance(5)  # past the first deadline, within the refreshed one: no wait
    await auth.authenticate(raw)
    assert (store.reads, auth.cache_misses) == (2, 1)


async def test_a_refresh_that_finds_the_key_revoked_drops_it_before_its_ttl(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, cache_ttl_s=10)
    await auth.authenticate(raw)
    # revoked by another replica, whose revocation message this one missed
    store.keys[record.id] = replace(record, revoke_time=clock.now())
    clock.advance(9)
    await auth.authenticate(raw)  # cached until its TTL, as without a refresh
    await _settled(auth)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(raw)  # 1 s before the TTL
    assert info.value.reason == "API_KEY_REVOKED"


async def test_a_failed_refresh_is_not_retried_by_every_call(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, cache_ttl_s=10)
    await auth.authenticate(raw)
    store.keys.clear()  # stands in for a store that cannot answer

    async def unavailable(key_id: str) -> None:
        store.reads += 1
        raise ConnectionError("the database is down")

    store.get_key = unavailable  # type: ignore[method-assign]
    clock.advance(9)
    for _ in range(5):
        assert (await auth.authenticate(raw)).key_id == record.id
        await _settled(auth)
    assert (store.reads, auth.refreshes) == (2, 1)  # the first verification, one refresh


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("revoke_time", "API_KEY_REVOKED"),
        ("expire_time", "API_KEY_EXPIRED"),
    ],
)
async def test_after_the_ttl_the_record_decides_without_an_eviction(
    change: str, reason: str, store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, cache_ttl_s=10)
    await auth.authenticate(raw)
    # changed by another replica, whose revocation message this one missed
    store.keys[record.id] = replace(record, **{change: clock.now()})
    clock.advance(11)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(raw)
    assert info.value.reason == reason
    assert hasher.verifies == 1


async def test_a_rotated_secret_is_hashed_again_after_the_ttl(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, old_raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, cache_ttl_s=10)
    await auth.authenticate(old_raw)
    new_part = new_secret()
    store.keys[record.id] = replace(record, secret_hash=await hasher.hash(new_part))
    clock.advance(11)
    with pytest.raises(Unauthenticated) as info:  # the old secret against the new hash
        await auth.authenticate(old_raw)
    assert info.value.reason == "API_KEY_INVALID"
    assert hasher.verifies == 2
    await auth.authenticate(format_key("live", record.id, new_part))
    assert hasher.verifies == 3


async def test_an_evicted_key_is_hashed_again(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    await auth.authenticate(raw)
    auth.evict(record.id)
    await auth.authenticate(raw)
    auth.clear()
    await auth.authenticate(raw)
    assert hasher.verifies == 3


async def test_evict_forces_a_fresh_lookup(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    await auth.authenticate(raw)
    store.keys[record.id] = replace(record, revoke_time=clock.now())
    await auth.authenticate(raw)  # still cached: revocation must evict
    auth.evict(record.id)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(raw)
    assert info.value.reason == "API_KEY_REVOKED"


@pytest.mark.parametrize("how", ["evict", "clear"])
async def test_a_verification_in_flight_during_a_revocation_is_not_cached(
    how: str, store: FakeStore, clock: ManualClock
) -> None:
    hasher = GatedHasher()
    record, raw, secret = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, cache_ttl_s=30)
    gate = hasher.gate(secret)
    in_flight = asyncio.create_task(auth.authenticate(raw))
    await hasher.entered_verify(secret)  # it read the record while the key was valid
    store.keys[record.id] = replace(record, revoke_time=clock.now())
    auth.evict(record.id) if how == "evict" else auth.clear()
    gate.set()
    assert (await in_flight).key_id == record.id  # answers its own call only
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(raw)  # at once: no cache TTL window
    assert info.value.reason == "API_KEY_REVOKED"
    hasher.close()


async def test_a_call_after_a_revocation_does_not_join_a_verification_begun_before_it(
    store: FakeStore, clock: ManualClock
) -> None:
    hasher = GatedHasher()
    record, raw, secret = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    gate = hasher.gate(secret)
    before = asyncio.create_task(auth.authenticate(raw))
    joined = asyncio.create_task(auth.authenticate(raw))  # concurrent with the revoke
    await hasher.entered_verify(secret)
    store.keys[record.id] = replace(record, revoke_time=clock.now())
    auth.evict(record.id)
    after = asyncio.create_task(auth.authenticate(raw))
    for _ in range(20):
        await asyncio.sleep(0)  # `after` is waiting (to join, or for its own verification)
    gate.set()
    assert (await before).key_id == (await joined).key_id == record.id
    with pytest.raises(Unauthenticated) as info:
        await after
    assert info.value.reason == "API_KEY_REVOKED"
    assert hasher.entered[secret] == 2  # it verified against the record as it is now
    hasher.close()


async def test_the_cache_is_keyed_by_key_id_with_the_verified_secret(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, secret = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, failures_per_minute=1000)
    await auth.authenticate(raw)
    # the same key id with another secret is no cache hit: it is verified, and refused
    with pytest.raises(Unauthenticated):
        await auth.authenticate(_wrong_secret(raw, secret))
    assert hasher.verifies == 2
    await auth.authenticate(raw)
    assert (auth.cache_hits, hasher.verifies) == (1, 2)
    auth.evict(record.id)  # one eviction by key id drops every secret of it
    await auth.authenticate(raw)
    assert hasher.verifies == 3


async def test_the_cache_is_bounded(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    keys = [(await _add_key(store, hasher, clock))[1] for _ in range(3)]
    auth = _auth(store, hasher, clock, cache_size=2)
    for raw in keys:
        await auth.authenticate(raw)
    assert (store.reads, hasher.verifies) == (3, 3)
    await auth.authenticate(keys[0])  # the oldest entry was dropped: read again
    assert (store.reads, hasher.verifies) == (4, 3)  # its secret still noted as verified


async def test_the_verified_secrets_are_bounded(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    keys = [(await _add_key(store, hasher, clock))[1] for _ in range(3)]
    auth = _auth(store, hasher, clock, cache_size=1)  # two secrets noted at most
    for raw in keys:
        await auth.authenticate(raw)
    await auth.authenticate(keys[2])
    assert hasher.verifies == 3
    await auth.authenticate(keys[0])  # dropped from both: hashed again
    assert hasher.verifies == 4


async def test_concurrent_first_uses_share_one_verification(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    results = await asyncio.gather(*(auth.authenticate(raw) for _ in range(10)))
    assert len({r.key_id for r in results}) == 1
    assert hasher.verifies == 1


async def test_a_cached_key_stops_working_at_its_expire_time(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, _ = await _add_key(store, hasher, clock, expire_time=clock.now() + timedelta(seconds=5))
    auth = _auth(store, hasher, clock, cache_ttl_s=30)
    await auth.authenticate(raw)
    clock.advance(4)
    await auth.authenticate(raw)
    clock.advance(2)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(raw)
    assert info.value.reason == "API_KEY_EXPIRED"
    assert "expired" in info.value.message


async def test_an_old_secret_works_only_during_its_grace(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, old_raw, _ = await _add_key(store, hasher, clock)
    new_secret_part = new_secret()
    store.keys[record.id] = replace(
        record,
        secret_hash=await hasher.hash(new_secret_part),
        previous_secret_hash=record.secret_hash,
        previous_secret_expire_time=clock.now() + timedelta(seconds=60),
    )
    new_raw = format_key("live", record.id, new_secret_part)
    auth = _auth(store, hasher, clock, cache_ttl_s=600)
    await auth.authenticate(old_raw)
    await auth.authenticate(new_raw)
    clock.advance(61)  # the grace ends long before the cache TTL would
    await auth.authenticate(new_raw)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(old_raw)


# --- wrong secrets: no hash per request, then refused outright ----------------------------


async def test_a_wrong_secret_costs_one_hash_then_none(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, secret = await _add_key(store, hasher, clock)
    wrong = _wrong_secret(raw, secret)
    auth = _auth(store, hasher, clock, failures_per_minute=1000)
    for _ in range(10):
        with pytest.raises(Unauthenticated) as info:
            await auth.authenticate(wrong, peer="9.9.9.9")
        assert info.value.reason == "API_KEY_INVALID"
    assert hasher.verifies == 1
    # the right secret still works: the negative cache is per secret
    await auth.authenticate(raw, peer="9.9.9.9")


async def test_repeated_failures_are_limited_per_address_and_key_id(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, failures_per_minute=5)
    for i in range(5):
        wrong = format_key("live", raw[8:20], f"{i:0>32}")
        with pytest.raises(Unauthenticated):
            await auth.authenticate(wrong, peer="6.6.6.6")
    verifies = hasher.verifies
    with pytest.raises(ResourceExhausted) as info:
        await auth.authenticate(format_key("live", raw[8:20], "9" * 32), peer="6.6.6.6")
    assert info.value.reason == "AUTH_FAILURES_EXCEEDED"
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
    assert "retry" in info.value.message
    assert hasher.verifies == verifies  # refused without a hash
    clock.advance(61)
    with pytest.raises(Unauthenticated):  # the window has passed: verified again
        await auth.authenticate(format_key("live", raw[8:20], "9" * 32), peer="6.6.6.6")
    assert hasher.verifies == verifies + 1


async def test_failures_from_one_address_never_lock_the_key_out_elsewhere(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, failures_per_minute=30)
    for i in range(40):  # the attacker knows the (public) key id
        with pytest.raises((Unauthenticated, ResourceExhausted)):
            await auth.authenticate(format_key("live", record.id, f"{i:0>32}"), peer="6.6.6.6")
    # the real key, never verified before, from its owner's address
    assert (await auth.authenticate(raw, peer="7.7.7.7")).key_id == record.id


async def test_failures_on_other_key_ids_never_refuse_a_fresh_key_from_the_same_address(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    auth = _auth(store, hasher, clock, failures_per_minute=3)
    for _ in range(10):  # unknown key ids, and wrong secrets of another tenant's key
        with pytest.raises(Unauthenticated):
            await auth.authenticate(format_key("live", new_key_id(), new_secret()), peer="6.6.6.6")
    _, raw, _ = await _add_key(store, hasher, clock, org_id="org_2")
    # another tenant behind the same address (a NAT) with a fresh key
    assert (await auth.authenticate(raw, peer="6.6.6.6")).org_id == "org_2"


async def test_one_address_runs_one_slow_verification_at_a_time(
    store: FakeStore, clock: ManualClock
) -> None:
    hasher = GatedHasher()
    keys = [await _add_key(store, hasher, clock) for _ in range(3)]
    auth = _auth(store, hasher, clock)
    for _, _, secret in keys[:2]:
        hasher.gate(secret)
    busy = [asyncio.create_task(auth.authenticate(raw, peer="6.6.6.6")) for _, raw, _ in keys[:2]]
    await hasher.entered_verify(keys[0][2])
    for _ in range(20):
        await asyncio.sleep(0)
    assert hasher.entered.get(keys[1][2], 0) == 0  # queued behind the first
    # another address is not queued behind it
    assert (await auth.authenticate(keys[2][1], peer="7.7.7.7")).key_id == keys[2][0].id
    for _, _, secret in keys[:2]:
        hasher.gate(secret).set()
    await asyncio.gather(*busy)
    assert hasher.most_running == 2  # 6.6.6.6's first, and 7.7.7.7's
    hasher.close()


async def test_an_address_with_too_many_verifications_queued_is_told_to_retry(
    store: FakeStore, clock: ManualClock
) -> None:
    hasher = GatedHasher()
    keys = [await _add_key(store, hasher, clock) for _ in range(66)]
    auth = _auth(store, hasher, clock)
    for _, _, secret in keys:
        hasher.gate(secret)
    queued = [
        asyncio.create_task(auth.authenticate(raw, peer="6.6.6.6")) for _, raw, _ in keys[:65]
    ]
    await hasher.entered_verify(keys[0][2])
    with pytest.raises(ResourceExhausted) as info:
        await auth.authenticate(keys[65][1], peer="6.6.6.6")
    assert info.value.reason == "AUTH_CONCURRENCY_EXCEEDED"
    for _, _, secret in keys:
        hasher.gate(secret).set()
    await asyncio.gather(*queued)
    hasher.close()


# --- no existence oracle: an unknown key id costs what a wrong secret costs ------------------


async def test_an_unknown_key_id_costs_one_hash_like_a_wrong_secret(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, secret = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, failures_per_minute=1000)
    costs = []
    for attempt in (_wrong_secret(raw, secret), format_key("live", new_key_id(), new_secret())):
        before = hasher.verifies
        with pytest.raises(Unauthenticated) as info:
            await auth.authenticate(attempt)
        assert info.value.reason == "API_KEY_INVALID"
        costs.append(hasher.verifies - before)
        before = hasher.verifies
        with pytest.raises(Unauthenticated):  # repeated: the negative cache, both alike
            await auth.authenticate(attempt)
        costs.append(hasher.verifies - before)
    assert costs == [1, 0, 1, 0]


async def test_a_key_of_the_wrong_kind_prefix_is_unknown(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, _, secret = await _add_key(store, hasher, clock)
    as_test = format_key("test", record.id, secret)
    auth = _auth(store, hasher, clock)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(as_test)
    assert info.value.reason == "API_KEY_INVALID"
    assert hasher.verifies == 1  # against the dummy hash, as for an unknown id


async def test_no_error_message_contains_the_secret(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, secret = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock, failures_per_minute=1000)
    wrong = _wrong_secret(raw, secret)
    errors: list[DomainError] = []
    for attempt in (wrong, raw[:-1] + ("x" if raw[-1] != "x" else "y"), raw[:30]):
        with pytest.raises(DomainError) as info:
            await auth.authenticate(attempt)
        errors.append(info.value)
    store.keys[record.id] = replace(record, revoke_time=clock.now())
    with pytest.raises(DomainError) as info:
        await auth.authenticate(raw)
    errors.append(info.value)
    for err in errors:
        assert err.code == "UNAUTHENTICATED"
        assert secret not in str(err) and secret[:16] not in str(err)
        assert wrong[20:] not in str(err)


# --- the cached answer without a coroutine (the call pipeline's steady state) -------------


async def test_cached_answers_only_a_key_verified_within_its_ttl(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    record, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    assert auth.cached(raw) is None  # never verified: only `authenticate` can tell
    assert (store.reads, hasher.verifies, auth.cache_hits) == (0, 0, 0)
    verified = await auth.authenticate(raw)
    p = auth.cached(raw, end_user_id="user-7")
    assert p is not None
    assert (p.key_id, p.end_user_id) == (record.id, "user-7")
    assert auth.cached(raw) is verified
    assert (store.reads, hasher.verifies, auth.cache_hits) == (1, 1, 2)
    clock.advance(31)  # past the TTL
    assert auth.cached(raw) is None


async def test_cached_refuses_what_authenticate_refuses_before_the_cache(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    _, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    await auth.authenticate(raw)
    with pytest.raises(Unauthenticated) as missing:
        auth.cached("")
    assert missing.value.reason == "API_KEY_MISSING"
    with pytest.raises(Unauthenticated) as malformed:
        auth.cached(" " + raw)
    assert malformed.value.reason == "API_KEY_MALFORMED"
    with pytest.raises(InvalidArgument):
        auth.cached(raw, end_user_id="x" * 1000)


async def test_a_key_with_a_bad_checksum_is_refused_by_its_checksum_not_the_cache(
    store: FakeStore, hasher: CountingHasher, clock: ManualClock
) -> None:
    # The cache is looked up before the checksum is computed: a wrong
    # checksum can never match a verified key, and on the miss `authenticate`
    # checks it before any storage access or slow hash.
    _, raw, _ = await _add_key(store, hasher, clock)
    auth = _auth(store, hasher, clock)
    await auth.authenticate(raw)
    last = "A" if raw[-1] != "A" else "B"
    bad = raw[:-1] + last
    assert auth.cached(bad) is None
    with pytest.raises(Unauthenticated) as err:
        await auth.authenticate(bad)
    assert err.value.reason == "API_KEY_CHECKSUM"
    assert (store.reads, hasher.verifies) == (1, 1)
