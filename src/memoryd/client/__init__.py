"""A small Python client for memoryd.

- `AsyncMemorydClient` (asyncio) and `MemorydClient` (blocking): typed
  convenience methods for the common calls, the generated stubs (`.memory`,
  `.keys`, `.admin`) for the rest.
- Auth: `x-api-key` / `x-end-user-id` on every call, as call credentials
  (`ApiKeyAuth`) on TLS channels or by an interceptor on plaintext ones.
- Retries: gRPC's retry policy in the channel's service config
  (`RetryPolicy`), which honours the server's `grpc-retry-pushback-ms`.
- Errors: `MemorydError` with the `google.rpc` details decoded.

    from memoryd.client import MemorydClient, where

    with MemorydClient("localhost:50051", "ms_live_…", end_user_id="ana") as c:
        c.create_memory("Ana prefers green tea", tags=["drinks"])
        for hit in c.search_memories("what does Ana drink", filter=where({"tags": "drinks"})):
            print(hit.score, hit.memory.content)
"""

from __future__ import annotations

from memoryd.client._requests import where
from memoryd.client.aio import AsyncMemorydClient
from memoryd.client.channel import ApiKeyAuth, RetryPolicy, TlsConfig, auth_metadata
from memoryd.client.errors import FieldViolation, MemorydError, QuotaViolation
from memoryd.client.sync import MemorydClient

__all__ = [
    "ApiKeyAuth",
    "AsyncMemorydClient",
    "FieldViolation",
    "MemorydClient",
    "MemorydError",
    "QuotaViolation",
    "RetryPolicy",
    "TlsConfig",
    "auth_metadata",
    "where",
]
