"""Encryption at rest: sealing content with per-environment data keys
(`sealer`) and the providers of key-encryption keys (`kek`)."""
