"""Stores: the only code that knows Qdrant, SQL or Redis.

Vector stores (the domain's `VectorStore` port): `memoryd.storage.edge`
(Qdrant Edge, embedded) and `memoryd.storage.qdrant` (a Qdrant server). They
are imported from their modules, so that using one never loads the other's
engine.
"""
