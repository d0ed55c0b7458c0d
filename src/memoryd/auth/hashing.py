"""Slow hashing of key secrets with passlib's argon2, off the event loop: the
domain's `SecretHasher` port."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from passlib.hash import argon2


class Argon2Hasher:
    """The `SecretHasher` port (`memoryd.domain.ports`) with argon2id: hashes
    and verifies secrets in a small thread pool, so the event loop never runs
    a slow hash. Parameters follow OWASP's argon2id minimum."""

    def __init__(
        self, *, time_cost: int = 2, memory_cost_kib: int = 19_456, workers: int = 2
    ) -> None:
        self._hasher = argon2.using(
            type="ID", time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=1
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")

    async def hash(self, secret: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, secret)

    async def verify(self, secret: str, hashed: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify, secret, hashed)

    def _verify(self, secret: str, hashed: str) -> bool:
        try:
            return bool(self._hasher.verify(secret, hashed))
        except (ValueError, TypeError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
