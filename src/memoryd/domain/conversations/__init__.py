"""Conversations become memories: AddMessages as a durable operation, the
extractor port, and the decisions applied to the tenant's memories."""
