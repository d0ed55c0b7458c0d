"""When a cache reads an entry again before it expires (the verified-key
cache and the project cache): an entry used in the last fifth of its TTL
is refreshed in the background, once per expiry. A steady user never waits
for the read at the TTL, a failed read is not retried by every call, and
the entry still answers only until it expires."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")

# The share of a TTL, at its end, in which a used entry is refreshed.
SHARE = 0.2


class RefreshAhead(Generic[K]):
    """Says when to begin the background refresh of a cached entry."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._window = ttl_s * SHARE
        self._max = max_entries
        self._begun: dict[K, float] = {}  # key → the expiry a refresh was begun for

    def due(self, key: K, expires_at: float, now: float) -> bool:
        """Whether to begin refreshing `key`, which expires at `expires_at`,
        now: when it is in its TTL's last SHARE, and at most once per expiry."""
        if expires_at - now >= self._window or self._begun.get(key) == expires_at:
            return False
        if len(self._begun) >= self._max:
            self._begun.clear()  # old expiries only: at worst one more refresh each
        self._begun[key] = expires_at
        return True
