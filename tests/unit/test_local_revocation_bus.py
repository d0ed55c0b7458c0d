"""LocalRevocationBus: key revocations in one process (embedded mode)."""

from __future__ import annotations

import pytest

from memoryd.storage.revocation import LocalRevocationBus


async def test_local_revocation_reaches_the_callback_at_once() -> None:
    bus = LocalRevocationBus()
    await bus.publish("before-start")  # nobody listens yet: nothing to do
    revoked: list[str] = []
    await bus.start(revoked.append)
    await bus.publish("key_1")
    assert revoked == ["key_1"]
    with pytest.raises(RuntimeError):
        await bus.start(revoked.append)
    await bus.close()
    await bus.publish("key_2")
    assert revoked == ["key_1"]
