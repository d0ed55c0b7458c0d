"""Request builders shared by the sync and the asyncio client."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

from memoryd.v1 import keys_pb2, knowledge_pb2, memory_pb2, webhooks_pb2


def where(conditions: Mapping[str, Any]) -> memory_pb2.MemoryFilter:
    """A filter whose conditions must all hold: field → value to equal, or a
    list of values of which any may match. Fields: `agent_id`, `thread_id`,
    `source`, `tags`, `end_user_id`, `metadata.<key>`.

    >>> where({"tags": "drinks", "metadata.lang": ["en", "fr"]})
    """
    must: list[memory_pb2.Condition] = []
    for name, value in conditions.items():
        if isinstance(value, list | tuple):
            any_of = struct_pb2.ListValue()
            any_of.extend(list(value))
            must.append(memory_pb2.Condition(field=name, any_of=any_of))
        else:
            must.append(memory_pb2.Condition(field=name, equals=_value(value)))
    return memory_pb2.MemoryFilter(must=must)


def _value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.ListValue()
    holder.append(value)
    return holder.values[0]


def _struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(dict(data))
    return out


def _duration(value: float | dt.timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    if isinstance(value, dt.timedelta):
        out.FromTimedelta(value)
    else:
        out.FromNanoseconds(round(value * 1e9))
    return out


def _timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        raise ValueError("use an aware datetime (e.g. datetime.now(UTC))")
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def create_memory(
    content: str,
    *,
    metadata: Mapping[str, Any] | None,
    tags: Sequence[str],
    agent_id: str,
    thread_id: str,
    source: str,
    ttl: float | dt.timedelta | None,
    embedding: Sequence[float] | None,
    dedupe: bool,
) -> memory_pb2.CreateMemoryRequest:
    memory = memory_pb2.Memory(
        content=content,
        tags=list(tags),
        agent_id=agent_id,
        thread_id=thread_id,
        source=source,
        embedding=list(embedding or ()),
    )
    if metadata is not None:
        memory.metadata.CopyFrom(_struct(metadata))
    request = memory_pb2.CreateMemoryRequest(memory=memory, dedupe=dedupe)
    if ttl is not None:
        request.ttl.CopyFrom(_duration(ttl))
    return request


def search_memories(
    query: str,
    *,
    embedding: Sequence[float] | None,
    filter: memory_pb2.MemoryFilter | None,
    top_k: int,
    min_score: float,
    mode: str = "",
    recency_half_life: dt.timedelta | None = None,
    diversity: float = 0.0,
) -> memory_pb2.SearchMemoriesRequest:
    """`mode`: "semantic", "keyword", "hybrid" or "" (the server's default)."""
    request = memory_pb2.SearchMemoriesRequest(
        query=query,
        query_embedding=list(embedding or ()),
        filter=filter,
        top_k=top_k,
        min_score=min_score,
        mode=mode.upper() or None,  # a name the server knows (ValueError otherwise)
        diversity=diversity,
    )
    if recency_half_life is not None:
        request.recency_half_life.FromTimedelta(recency_half_life)
    return request


def list_memories(
    filter: memory_pb2.MemoryFilter | None, page_size: int, page_token: str
) -> memory_pb2.ListMemoriesRequest:
    return memory_pb2.ListMemoriesRequest(filter=filter, page_size=page_size, page_token=page_token)


def update_memory(memory_id: str, changes: Mapping[str, Any]) -> memory_pb2.UpdateMemoryRequest:
    """An UpdateMemory request changing exactly the fields given (not None)."""
    memory = memory_pb2.Memory(id=memory_id)
    paths: list[str] = []
    for name, value in changes.items():
        if value is None:
            continue
        paths.append(name)
        if name == "metadata":
            memory.metadata.CopyFrom(_struct(value))
        elif name == "expire_time":
            memory.expire_time.CopyFrom(_timestamp(value))
        elif name in ("tags", "embedding"):
            getattr(memory, name).extend(value)
        else:
            setattr(memory, name, value)
    if not paths:
        raise ValueError("update_memory needs at least one field to change")
    return memory_pb2.UpdateMemoryRequest(
        memory=memory, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def purge_memories(
    filter: memory_pb2.MemoryFilter | None, everything: bool, dry_run: bool
) -> memory_pb2.PurgeMemoriesRequest:
    return memory_pb2.PurgeMemoriesRequest(filter=filter, all=everything, dry_run=dry_run)


def create_api_key(
    name: str,
    *,
    project_id: str,
    environment_id: str,
    scopes: Iterable[str],
    expire_time: dt.datetime | None,
) -> keys_pb2.CreateApiKeyRequest:
    request = keys_pb2.CreateApiKeyRequest(
        name=name, project_id=project_id, environment_id=environment_id, scopes=list(scopes)
    )
    if expire_time is not None:
        request.expire_time.CopyFrom(_timestamp(expire_time))
    return request


def _event_types(names: Iterable[str]) -> list[Any]:
    """Event type names ("CREATED", "quota_reached", …) as the enum's values
    (ValueError for a name the client does not know)."""
    return [webhooks_pb2.Webhook.EventType.Value(name.upper()) for name in names]


def create_webhook(
    url: str,
    *,
    event_types: Iterable[str],
    filter: memory_pb2.MemoryFilter | None,
    description: str,
) -> webhooks_pb2.CreateWebhookRequest:
    webhook = webhooks_pb2.Webhook(
        url=url, event_types=_event_types(event_types), filter=filter, description=description
    )
    return webhooks_pb2.CreateWebhookRequest(webhook=webhook)


def update_webhook(
    webhook_id: str, changes: Mapping[str, Any]
) -> webhooks_pb2.UpdateWebhookRequest:
    """An UpdateWebhook request changing exactly the fields given (not None)."""
    webhook = webhooks_pb2.Webhook(id=webhook_id)
    paths: list[str] = []
    for name, value in changes.items():
        if value is None:
            continue
        paths.append(name)
        if name == "event_types":
            webhook.event_types.extend(_event_types(value))
        elif name == "filter":
            webhook.filter.CopyFrom(value)
        else:
            setattr(webhook, name, value)
    if not paths:
        raise ValueError("update_webhook needs at least one field to change")
    return webhooks_pb2.UpdateWebhookRequest(
        webhook=webhook, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def rotate_webhook_secret(
    webhook_id: str, grace_period: float | dt.timedelta | None
) -> webhooks_pb2.RotateWebhookSecretRequest:
    """`grace_period` None: the server's default (24 hours)."""
    request = webhooks_pb2.RotateWebhookSecretRequest(id=webhook_id)
    if grace_period is not None:
        request.grace_period.CopyFrom(_duration(grace_period))
    return request


def list_webhook_deliveries(
    webhook_id: str, state: str, page_size: int, page_token: str
) -> webhooks_pb2.ListWebhookDeliveriesRequest:
    """`state`: "pending", "succeeded", "failed" or "" (every delivery)."""
    return webhooks_pb2.ListWebhookDeliveriesRequest(
        webhook_id=webhook_id,
        state=webhooks_pb2.WebhookDelivery.State.Name(
            webhooks_pb2.WebhookDelivery.State.Value(state.upper())
        )
        if state
        else None,
        page_size=page_size,
        page_token=page_token,
    )


def create_document(
    text: str,
    *,
    source_uri: str,
    display_name: str,
    folder: str,
    mime_type: str,
    metadata: Mapping[str, Any] | None,
    replace: bool,
) -> knowledge_pb2.CreateDocumentRequest:
    """A document from `text`, or from `source_uri` when given."""
    request = knowledge_pb2.CreateDocumentRequest(
        display_name=display_name, folder=folder, mime_type=mime_type, replace=replace
    )
    if source_uri:
        request.source_uri = source_uri
    else:
        request.text = text
    if metadata:
        request.metadata.update(dict(metadata))
    return request


def upload_messages(
    data: bytes | Iterable[bytes],
    *,
    display_name: str,
    folder: str,
    mime_type: str,
    metadata: Mapping[str, Any] | None,
    replace: bool,
    piece: int = 64 * 1024,
) -> Iterator[knowledge_pb2.UploadDocumentRequest]:
    """UploadDocument's stream: the header, then the bytes in pieces."""
    header = knowledge_pb2.UploadHeader(
        display_name=display_name, folder=folder, mime_type=mime_type, replace=replace
    )
    if metadata:
        header.metadata.update(dict(metadata))
    yield knowledge_pb2.UploadDocumentRequest(header=header)
    chunks = [data] if isinstance(data, bytes) else data
    for chunk in chunks:
        for i in range(0, len(chunk), piece):
            yield knowledge_pb2.UploadDocumentRequest(data=chunk[i : i + piece])


def search_knowledge(
    query: str,
    *,
    embedding: Sequence[float] | None,
    folder: str,
    filter: memory_pb2.MemoryFilter | None,
    top_k: int,
    min_score: float | None,
) -> knowledge_pb2.SearchKnowledgeRequest:
    request = knowledge_pb2.SearchKnowledgeRequest(
        query=query,
        query_embedding=list(embedding or ()),
        folder=folder,
        filter=filter,
        top_k=top_k,
    )
    if min_score is not None:
        request.min_score = min_score
    return request


def wait_operation(name: str, wait_s: float) -> operations_pb2.WaitOperationRequest:
    request = operations_pb2.WaitOperationRequest(name=name)
    request.timeout.FromTimedelta(dt.timedelta(seconds=wait_s))
    return request
