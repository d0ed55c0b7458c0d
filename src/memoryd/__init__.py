"""memoryd: a self-hostable, multi-tenant memory server for AI agents, over gRPC."""

__version__ = "0.1.0"
