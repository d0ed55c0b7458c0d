"""Stores: the only code that knows Qdrant, SQL or Redis, but for two
subsystems whose own logic is written for Redis and stays with them: the
rate limiter's GCRA script (`memoryd.ratelimit.redis_limiter`) and the usage
counters' key layout (`memoryd.usage.redis_meter`). Both are handed a client
made by `storage.redis.make_redis`.

Here: `sql/` the control plane on SQLite or PostgreSQL, `vectors/` the
vector stores (the domain's `VectorStore` port, on Qdrant Edge or a Qdrant
server), `redis` the Redis client, `revocation` the key-revocation bus (the
domain's `KeyInvalidator` is its `publish`), `audit_file` the audit log file
(the domain's `AuditSink`), `disk` the free-space floor of local files.
"""
