"""Waiting for a condition that another task or process makes true."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Returns once `predicate()` (plain or async) holds; fails after `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        held = predicate()
        if await held if inspect.isawaitable(held) else held:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
