"""The vector stores: the domain's `VectorStore` port on Qdrant.

`edge` (Qdrant Edge, embedded; its engine in `edge_engine`, run by
`edge_backends` on a thread or in the `edge_child` process) and `qdrant` (a
Qdrant server) share their behaviour (`point_store`), their payload layout
and indexes (`layout`), the tenant and expiry conditions (`conditions`) and
the translation of domain filters (`filters`). They are imported from their
modules, so that using one never loads the other's engine.
"""
