"""Key-revocation fan-out: tell every replica to forget a cached key at once.

A replica caches verified keys for a short TTL. When a key is revoked or
rotated, the replica that did it calls `publish(key_id)`; every replica that
called `start(on_revoked)` (including the publisher) then has
`on_revoked(key_id)` called. Delivery is best effort: a message published
while a replica is disconnected from Redis is lost for it, so the cache TTL
is what bounds staleness. To narrow that window, `on_resubscribed` (if
given) is called after every reconnection so the caller can drop its whole
cache.

Callbacks run on the event loop and must be quick and must not raise (an
exception is logged and swallowed).

`publish` is the domain's `KeyInvalidator` port (`memoryd.domain.ports`):
`KeyManager` and `ProjectManager` call it after a revoke, rotate or delete.
`LocalRevocationBus` (one process) sits here next to the Redis one so that
both implementations of `RevocationBus` read side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

_log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "memoryd:keys:revoked"


class RevocationBus(Protocol):
    """Publishes key revocations to every replica (see module docstring).

    `publish` never raises for backend trouble: the revocation is already
    durable in the control store, and the cache TTL bounds how long another
    replica may still accept the key. `start` may be called once; `close`
    stops listening.
    """

    async def publish(self, key_id: str) -> None: ...

    async def start(
        self,
        on_revoked: Callable[[str], None],
        *,
        on_resubscribed: Callable[[], None] | None = None,
    ) -> None: ...

    async def close(self) -> None: ...


def _call(callback: Callable[..., None], *args: str) -> None:
    try:
        callback(*args)
    except Exception:
        _log.exception("revocation callback failed")


class LocalRevocationBus:
    """One process only (embedded mode): `publish` calls the callback directly."""

    def __init__(self) -> None:
        self._on_revoked: Callable[[str], None] | None = None

    async def publish(self, key_id: str) -> None:
        if self._on_revoked is not None:
            _call(self._on_revoked, key_id)

    async def start(
        self,
        on_revoked: Callable[[str], None],
        *,
        on_resubscribed: Callable[[], None] | None = None,
    ) -> None:
        if self._on_revoked is not None:
            raise RuntimeError("the revocation bus is already started")
        self._on_revoked = on_revoked

    async def close(self) -> None:
        self._on_revoked = None


class RedisRevocationBus:
    """Redis pub/sub on `channel` (default `memoryd:keys:revoked`).

    `start` subscribes before it returns (so nothing published afterwards is
    missed) and leaves a background task listening. When the connection
    breaks (Redis restarted, network), the task logs once, reconnects with
    backoff from `reconnect_min_s` doubling to `reconnect_max_s`, and calls
    `on_resubscribed` once subscribed again. A connection that goes silent
    without breaking is found by a PING every `ping_interval_s`.

    `publish` calls this replica's own callback first, so the publisher never
    depends on Redis to evict its own cache, then publishes with a
    `timeout_s` budget; failures are logged and counted in `publish_failures`.
    `publish_failures` and `reconnects` are exported as
    `memoryd_revocation_*` metrics.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        channel: str = DEFAULT_CHANNEL,
        timeout_s: float = 1.0,
        ping_interval_s: float = 5.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._timeout_s = timeout_s
        self._ping_interval_s = ping_interval_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._on_revoked: Callable[[str], None] | None = None
        self._on_resubscribed: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.publish_failures = 0
        self.reconnects = 0

    @property
    def channel(self) -> str:
        return self._channel

    async def publish(self, key_id: str) -> None:
        if self._on_revoked is not None:
            _call(self._on_revoked, key_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.publish(self._channel, key_id)
        except (RedisError, OSError, TimeoutError) as exc:
            self.publish_failures += 1
            _log.warning(
                "could not publish the revocation of key %s (%s); other replicas "
                "will drop it from their caches when its cache TTL ends",
                key_id,
                type(exc).__name__,
            )

    async def start(
        self,
        on_revoked: Callable[[str], None],
        *,
        on_resubscribed: Callable[[], None] | None = None,
    ) -> None:
        """Subscribe and listen in the background. If Redis is unreachable now,
        returns anyway and keeps trying in the background."""
        if self._task is not None:
            raise RuntimeError("the revocation bus is already started")
        self._on_revoked = on_revoked
        self._on_resubscribed = on_resubscribed
        pubsub: PubSub | None = None
        try:
            pubsub = await self._subscribe()
        except (RedisError, OSError, TimeoutError) as exc:
            _log.warning(
                "cannot subscribe to key revocations (%s); retrying in the background",
                type(exc).__name__,
            )
        self._task = asyncio.get_running_loop().create_task(
            self._listen_forever(pubsub), name="memoryd-revocation-listener"
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._on_revoked = None
        self._on_resubscribed = None

    async def _subscribe(self) -> PubSub:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
        try:
            async with asyncio.timeout(self._timeout_s):
                await pubsub.subscribe(self._channel)
                # Wait for the confirmation: only then are later messages ours.
                while True:
                    message = await pubsub.get_message(timeout=self._timeout_s)
                    if message is not None and message["type"] == "subscribe":
                        return pubsub
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise

    async def _listen_forever(self, pubsub: PubSub | None) -> None:
        delay = self._reconnect_min_s
        was_down = pubsub is None
        while True:
            if pubsub is None:
                await asyncio.sleep(delay)
                try:
                    pubsub = await self._subscribe()
                except (RedisError, OSError, TimeoutError):
                    delay = min(delay * 2, self._reconnect_max_s)
                    continue
                delay = self._reconnect_min_s
                self.reconnects += 1
                _log.info("subscribed to key revocations again")
                if was_down and self._on_resubscribed is not None:
                    _call(self._on_resubscribed)
                was_down = False
            try:
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                _log.warning(
                    "lost the key-revocation subscription (%s); reconnecting",
                    type(exc).__name__,
                )
                was_down = True
            except Exception:
                # A bug must not end fan-out for the life of the process.
                _log.exception("the key-revocation listener failed; reconnecting")
                was_down = True
            finally:
                await self._discard(pubsub)
                pubsub = None

    async def _listen(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        ping_sent = False
        while True:
            message = await pubsub.get_message(timeout=min(1.0, self._ping_interval_s))
            now = loop.time()
            if message is not None:
                last_heard = now
                ping_sent = False
                if message["type"] == "message" and self._on_revoked is not None:
                    data = message["data"]
                    key_id = data.decode() if isinstance(data, bytes) else str(data)
                    _call(self._on_revoked, key_id)
                continue
            if now - last_heard < self._ping_interval_s:
                continue
            if ping_sent:
                raise TimeoutError("no answer to PING on the revocation subscription")
            async with asyncio.timeout(self._timeout_s):
                await pubsub.ping()
            ping_sent = True
            last_heard = now - self._ping_interval_s / 2

    @staticmethod
    async def _discard(pubsub: PubSub) -> None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
