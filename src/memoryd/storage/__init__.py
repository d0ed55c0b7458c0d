"""Stores: the only code that knows Qdrant, SQL or Redis.

`vectors/` holds the vector stores (the domain's `VectorStore` port, on
Qdrant Edge or a Qdrant server), `sql/` the control plane on SQL, `redis`
the Redis client, `disk` the free-space floor of local files.
"""
