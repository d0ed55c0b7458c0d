"""The public surface of `memoryd.client` is pinned: a name added, removed or a
signature changed shows up here, on purpose, before it reaches users."""

from __future__ import annotations

import inspect

import memoryd.client as client

PUBLIC = [
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

CALLS = {
    "close": "(self) -> 'None'",
    "create_api_key": "(self, name: 'str', *, project_id: 'str' = '', environment_id: 'str' = '', "
    "scopes: 'Iterable[str]' = (), expire_time: 'dt.datetime | None' = None, "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "create_memory": "(self, content: 'str', *, metadata: 'Mapping[str, Any] | None' = None, "
    "tags: 'Sequence[str]' = (), agent_id: 'str' = '', thread_id: 'str' = '', source: 'str' = '', "
    "ttl: 'float | dt.timedelta | None' = None, embedding: 'Sequence[float] | None' = None, "
    "dedupe: 'bool' = False, timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "delete_memory": "(self, memory_id: 'str', *, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ()) -> 'None'",
    "get_memory": "(self, memory_id: 'str', *, include_embedding: 'bool' = False, "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "iter_memories": "(self, filter: 'memory_pb2.MemoryFilter | None' = None, *, "
    "page_size: 'int' = 100, "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "list_memories": "(self, filter: 'memory_pb2.MemoryFilter | None' = None, *, "
    "page_size: 'int' = 0, "
    "page_token: 'str' = '', timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "purge_memories": "(self, filter: 'memory_pb2.MemoryFilter | None' = None, *, "
    "everything: 'bool' = False, dry_run: 'bool' = False, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "revoke_api_key": "(self, key_id: 'str', *, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "search_memories": "(self, query: 'str' = '', *, embedding: 'Sequence[float] | None' = None, "
    "filter: 'memory_pb2.MemoryFilter | None' = None, top_k: 'int' = 0, min_score: 'float' = 0.0, "
    "mode: 'str' = '', recency_half_life: 'dt.timedelta | None' = None, diversity: 'float' = 0.0, "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "update_memory": "(self, memory_id: 'str', *, content: 'str | None' = None, "
    "metadata: 'Mapping[str, Any] | None' = None, tags: 'Sequence[str] | None' = None, "
    "agent_id: 'str | None' = None, thread_id: 'str | None' = None, source: 'str | None' = None, "
    "expire_time: 'dt.datetime | None' = None, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "whoami": "(self, *, timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    # webhooks
    "create_webhook": "(self, url: 'str', *, event_types: 'Iterable[str]' = (), "
    "filter: 'memory_pb2.MemoryFilter | None' = None, description: 'str' = '', "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "list_webhooks": "(self, *, page_size: 'int' = 0, page_token: 'str' = '', "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "get_webhook": "(self, webhook_id: 'str', *, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "update_webhook": "(self, webhook_id: 'str', *, url: 'str | None' = None, "
    "event_types: 'Iterable[str] | None' = None, "
    "filter: 'memory_pb2.MemoryFilter | None' = None, description: 'str | None' = None, "
    "enabled: 'bool | None' = None, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "delete_webhook": "(self, webhook_id: 'str', *, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "rotate_webhook_secret": "(self, webhook_id: 'str', *, "
    "grace_period: 'float | dt.timedelta | None' = None, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "list_webhook_deliveries": "(self, webhook_id: 'str', *, state: 'str' = '', "
    "page_size: 'int' = 0, page_token: 'str' = '', timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "redeliver_webhook_delivery": "(self, webhook_id: 'str', delivery_id: 'str', *, "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    # knowledge
    "create_document": "(self, text: 'str' = '', *, source_uri: 'str' = '', "
    "display_name: 'str' = '', "
    "folder: 'str' = '', mime_type: 'str' = '', metadata: 'Mapping[str, "
    "Any] | None' = None, replace: 'bool' = False, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "upload_document": "(self, data: 'bytes | Iterable[bytes]', *, display_name: 'str' = '', "
    "folder: 'str' = '', mime_type: 'str' = '', metadata: 'Mapping[str, "
    "Any] | None' = None, replace: 'bool' = False, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "wait_operation": "(self, name: 'str', *, wait_s: 'float' = 30.0, "
    "call_metadata: 'CallMetadata' = ())",
    "search_knowledge": "(self, query: 'str' = '', *, embedding: 'Sequence[float] | None' = None, "
    "folder: 'str' = '', filter: 'memory_pb2.MemoryFilter | None' = None, "
    "top_k: 'int' = 0, min_score: 'float | None' = None, "
    "timeout: 'float | None' = None, call_metadata: 'CallMetadata' = ())",
    "get_document": "(self, name: 'str', *, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
    "delete_document": "(self, name: 'str', *, timeout: 'float | None' = None, "
    "call_metadata: 'CallMetadata' = ())",
}


def _parameters(fn: object) -> str:
    """The signature without the return annotation (sync and async clients
    differ only there: `Iterator` vs `AsyncIterator`)."""
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return str(sig.replace(return_annotation=inspect.Signature.empty))


def test_all_is_the_pinned_surface() -> None:
    assert sorted(client.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(client, name), name


def test_sync_and_async_clients_have_the_pinned_calls() -> None:
    for cls in (client.MemorydClient, client.AsyncMemorydClient):
        public = sorted(n for n in vars(cls) if not n.startswith("_"))
        assert public == sorted(CALLS), cls.__name__
        for name, expected in CALLS.items():
            assert _parameters(getattr(cls, name)) == expected.split(" -> ")[0], (
                cls.__name__,
                name,
            )


def test_error_type_keeps_its_decoded_fields() -> None:
    params = list(inspect.signature(client.MemorydError.__init__).parameters)
    assert params == [
        "self",
        "code",
        "message",
        "reason",
        "domain",
        "error_metadata",
        "field_violations",
        "quota_violations",
        "retry_delay",
        "request_id",
        "trailers",
        "status",
    ]
