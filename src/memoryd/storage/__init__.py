"""Stores: the only code that knows Qdrant, SQL or Redis, but for two
subsystems whose own logic is written for Redis and stays with them: the
rate limiter's GCRA script (`memoryd.ratelimit.redis_limiter`) and the usage
counters' key layout (`memoryd.usage.redis_meter`). Both are handed a client
made by `storage.redis.make_redis`.

Here: the control store (`sql`), the Redis client (`redis`), the
key-revocation bus (`revocation`; the domain's `KeyInvalidator` is its
`publish`), the audit log file (`audit_file`) and the vector stores.

Vector stores (the domain's `VectorStore` port): `memoryd.storage.edge`
(Qdrant Edge, embedded) and `memoryd.storage.qdrant` (a Qdrant server). They
are imported from their modules, so that using one never loads the other's
engine.
"""
