"""`MemorydClient`: the blocking (sync) client; same methods as the asyncio one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.longrunning import operations_grpc_pb2, operations_pb2

from memoryd.client import _requests as req
from memoryd.client.channel import RetryPolicy, TlsConfig, channel_options, secure_or_plain_sync
from memoryd.client.errors import MemorydError
from memoryd.v1 import (
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

T = TypeVar("T")
CallMetadata = tuple[tuple[str, str], ...]


class MemorydClient:
    """memoryd over one blocking gRPC channel, for one API key (and
    optionally one end user). Thread-safe, like the channel under it.

    Convenience methods cover the common calls and raise `MemorydError`
    with the decoded `google.rpc` details; `memory`, `keys`, `admin` and `webhooks` are
    the generated stubs for everything else (their errors are plain
    `grpc.RpcError`: `MemorydError.from_rpc_error(e)` decodes them).

        with MemorydClient("localhost:50051", api_key) as client:
            client.create_memory("Ana prefers green tea", tags=["drinks"])
            hits = client.search_memories("what does Ana drink")

    `timeout` is the default deadline of every call in seconds (None: no
    deadline); `retry` the retry policy (None: no retries); `tls` enables
    TLS/mTLS (the key then travels as call credentials); `options` are extra
    gRPC channel arguments.
    """

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        end_user_id: str = "",
        tls: TlsConfig | None = None,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 (immutable)
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._timeout = timeout
        self.channel: grpc.Channel = secure_or_plain_sync(
            target, api_key, end_user_id, tls, channel_options(retry, tls, options)
        )
        self.memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)
        self.knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(self.channel)
        self.operations = operations_grpc_pb2.OperationsStub(self.channel)

    def __enter__(self) -> MemorydClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    @staticmethod
    def _call(call: Callable[[], T]) -> T:
        try:
            return call()
        except grpc.RpcError as err:
            raise MemorydError.from_rpc_error(err) from err

    # --- keys --------------------------------------------------------------------

    def whoami(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> keys_pb2.WhoAmIResponse:
        """The calling key's organization, project, environment and scopes."""
        return self._call(
            lambda: self.keys.WhoAmI(
                keys_pb2.WhoAmIRequest(), timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def create_api_key(
        self,
        name: str,
        *,
        project_id: str = "",
        environment_id: str = "",
        scopes: Iterable[str] = (),
        expire_time: dt.datetime | None = None,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> keys_pb2.CreateApiKeyResponse:
        """A data key (with project and environment) or an org key (without);
        the response's `secret` is the plaintext key, shown only here."""
        request = req.create_api_key(
            name,
            project_id=project_id,
            environment_id=environment_id,
            scopes=scopes,
            expire_time=expire_time,
        )
        return self._call(
            lambda: self.keys.CreateApiKey(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def revoke_api_key(
        self, key_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> keys_pb2.ApiKey:
        """Revokes a key on every replica at once."""
        return self._call(
            lambda: self.keys.RevokeApiKey(
                keys_pb2.RevokeApiKeyRequest(id=key_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    # --- memories --------------------------------------------------------------

    def create_memory(
        self,
        content: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        agent_id: str = "",
        thread_id: str = "",
        source: str = "",
        ttl: float | dt.timedelta | None = None,
        embedding: Sequence[float] | None = None,
        dedupe: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> memory_pb2.CreateMemoryResponse:
        """Stores one memory (`ttl` in seconds or a timedelta). With `dedupe`
        an existing near-duplicate may be returned (`deduplicated` is then
        true)."""
        request = req.create_memory(
            content,
            metadata=metadata,
            tags=tags,
            agent_id=agent_id,
            thread_id=thread_id,
            source=source,
            ttl=ttl,
            embedding=embedding,
            dedupe=dedupe,
        )
        return self._call(
            lambda: self.memory.CreateMemory(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def search_memories(
        self,
        query: str = "",
        *,
        embedding: Sequence[float] | None = None,
        filter: memory_pb2.MemoryFilter | None = None,
        top_k: int = 0,
        min_score: float = 0.0,
        mode: str = "",
        recency_half_life: dt.timedelta | None = None,
        diversity: float = 0.0,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> list[memory_pb2.SearchResult]:
        """Results by descending score (`top_k` 0: the server's default, 10).
        `mode`: "semantic", "keyword", "hybrid", or "" for the server's
        default (hybrid with a query text, semantic for an embedding alone);
        a query and an embedding together search hybrid with the embedding
        as the semantic side. `recency_half_life` favours recent memories,
        `diversity` (0..1) results unlike each other."""
        request = req.search_memories(
            query,
            embedding=embedding,
            filter=filter,
            top_k=top_k,
            min_score=min_score,
            mode=mode,
            recency_half_life=recency_half_life,
            diversity=diversity,
        )
        response = self._call(
            lambda: self.memory.SearchMemories(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )
        return list(response.results)

    def get_memory(
        self,
        memory_id: str,
        *,
        include_embedding: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> memory_pb2.Memory:
        """One memory; NOT_FOUND also for another tenant's."""
        return self._call(
            lambda: self.memory.GetMemory(
                memory_pb2.GetMemoryRequest(id=memory_id, include_embedding=include_embedding),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def list_memories(
        self,
        filter: memory_pb2.MemoryFilter | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> memory_pb2.ListMemoriesResponse:
        """One page, newest first; pass `next_page_token` back for the next."""
        return self._call(
            lambda: self.memory.ListMemories(
                req.list_memories(filter, page_size, page_token),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def iter_memories(
        self,
        filter: memory_pb2.MemoryFilter | None = None,
        *,
        page_size: int = 100,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> Iterator[memory_pb2.Memory]:
        """Every memory matching `filter`, newest first, page by page
        (`timeout` applies to each page)."""
        token = ""
        while True:
            page = self.list_memories(
                filter,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
                call_metadata=call_metadata,
            )
            yield from page.memories
            token = page.next_page_token
            if not token:
                return

    def update_memory(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        agent_id: str | None = None,
        thread_id: str | None = None,
        source: str | None = None,
        expire_time: dt.datetime | None = None,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> memory_pb2.Memory:
        """Changes the fields given (the update mask is built from them); the
        previous state is kept as a revision."""
        request = req.update_memory(
            memory_id,
            {
                "content": content,
                "metadata": metadata,
                "tags": tags,
                "agent_id": agent_id,
                "thread_id": thread_id,
                "source": source,
                "expire_time": expire_time,
            },
        )
        return self._call(
            lambda: self.memory.UpdateMemory(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def delete_memory(
        self, memory_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> None:
        """Deletes one memory and its revisions."""
        self._call(
            lambda: self.memory.DeleteMemory(
                memory_pb2.DeleteMemoryRequest(id=memory_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def purge_memories(
        self,
        filter: memory_pb2.MemoryFilter | None = None,
        *,
        everything: bool = False,
        dry_run: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> int:
        """Deletes every memory matching `filter` (or, with `everything`, all
        of the tenant or end user) and answers how many; `dry_run` only counts."""
        response = self._call(
            lambda: self.memory.PurgeMemories(
                req.purge_memories(filter, everything, dry_run),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )
        return response.purged_count

    # --- webhooks --------------------------------------------------------------

    def create_webhook(
        self,
        url: str,
        *,
        event_types: Iterable[str] = (),
        filter: memory_pb2.MemoryFilter | None = None,
        description: str = "",
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.CreateWebhookResponse:
        """A webhook of the key's environment (event types by name, e.g.
        "CREATED" or "QUOTA_REACHED"; none: every memory event); the
        response's `secret` signs its deliveries and is shown only here."""
        request = req.create_webhook(
            url, event_types=event_types, filter=filter, description=description
        )
        return self._call(
            lambda: self.webhooks.CreateWebhook(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def list_webhooks(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.ListWebhooksResponse:
        """One page of webhooks, newest first (never their secrets)."""
        return self._call(
            lambda: self.webhooks.ListWebhooks(
                webhooks_pb2.ListWebhooksRequest(page_size=page_size, page_token=page_token),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def get_webhook(
        self, webhook_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> webhooks_pb2.Webhook:
        """One webhook with its state; NOT_FOUND also for another tenant's."""
        return self._call(
            lambda: self.webhooks.GetWebhook(
                webhooks_pb2.GetWebhookRequest(id=webhook_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def update_webhook(
        self,
        webhook_id: str,
        *,
        url: str | None = None,
        event_types: Iterable[str] | None = None,
        filter: memory_pb2.MemoryFilter | None = None,
        description: str | None = None,
        enabled: bool | None = None,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.Webhook:
        """Changes the fields given (the update mask is built from them);
        `enabled=True` also resumes a webhook the server disabled."""
        request = req.update_webhook(
            webhook_id,
            {
                "url": url,
                "event_types": event_types,
                "filter": filter,
                "description": description,
                "enabled": enabled,
            },
        )
        return self._call(
            lambda: self.webhooks.UpdateWebhook(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def delete_webhook(
        self, webhook_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> None:
        """Deletes a webhook and its delivery history."""
        self._call(
            lambda: self.webhooks.DeleteWebhook(
                webhooks_pb2.DeleteWebhookRequest(id=webhook_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def rotate_webhook_secret(
        self,
        webhook_id: str,
        *,
        grace_period: float | dt.timedelta | None = None,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.RotateWebhookSecretResponse:
        """A new signing secret (in the response only); the old one also
        signs for `grace_period` (seconds or a timedelta; None: the
        server's default, 24 hours)."""
        return self._call(
            lambda: self.webhooks.RotateWebhookSecret(
                req.rotate_webhook_secret(webhook_id, grace_period),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def list_webhook_deliveries(
        self,
        webhook_id: str,
        *,
        state: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        """One page of a webhook's deliveries with their attempts, newest
        first; `state` "pending", "succeeded" or "failed" narrows them."""
        return self._call(
            lambda: self.webhooks.ListWebhookDeliveries(
                req.list_webhook_deliveries(webhook_id, state, page_size, page_token),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def redeliver_webhook_delivery(
        self,
        webhook_id: str,
        delivery_id: str,
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.WebhookDelivery:
        """Sends a delivery again, with the same `webhook-id`."""
        return self._call(
            lambda: self.webhooks.RedeliverWebhookDelivery(
                webhooks_pb2.RedeliverWebhookDeliveryRequest(
                    webhook_id=webhook_id, delivery_id=delivery_id
                ),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    # --- knowledge -----------------------------------------------------------------

    def create_document(
        self,
        text: str = "",
        *,
        source_uri: str = "",
        display_name: str = "",
        folder: str = "",
        mime_type: str = "",
        metadata: Mapping[str, Any] | None = None,
        replace: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> operations_pb2.Operation:
        """Ingests a document from `text` or `source_uri`: its operation
        (`wait_operation` for the `Document`)."""
        request = req.create_document(
            text,
            source_uri=source_uri,
            display_name=display_name,
            folder=folder,
            mime_type=mime_type,
            metadata=metadata,
            replace=replace,
        )
        return self._call(
            lambda: self.knowledge.CreateDocument(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def upload_document(
        self,
        data: bytes | Iterable[bytes],
        *,
        display_name: str = "",
        folder: str = "",
        mime_type: str = "",
        metadata: Mapping[str, Any] | None = None,
        replace: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> operations_pb2.Operation:
        """Uploads a file (its bytes, or an iterable of byte chunks), streamed
        in 64 KiB messages: its ingest operation."""
        messages = req.upload_messages(
            data,
            display_name=display_name,
            folder=folder,
            mime_type=mime_type,
            metadata=metadata,
            replace=replace,
        )
        return self._call(
            lambda: self.knowledge.UploadDocument(
                messages, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    def wait_operation(
        self, name: str, *, wait_s: float = 30.0, call_metadata: CallMetadata = ()
    ) -> operations_pb2.Operation:
        """The operation once done, or as it is after `wait_s` (at most 60)."""
        return self._call(
            lambda: self.operations.WaitOperation(
                req.wait_operation(name, wait_s),
                timeout=self._deadline(wait_s + 10),
                metadata=call_metadata,
            )
        )

    def search_knowledge(
        self,
        query: str = "",
        *,
        embedding: Sequence[float] | None = None,
        folder: str = "",
        filter: memory_pb2.MemoryFilter | None = None,
        top_k: int = 0,
        min_score: float | None = None,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> list[knowledge_pb2.KnowledgeChunk]:
        """The best chunks of the environment's documents for `query`."""
        request = req.search_knowledge(
            query,
            embedding=embedding,
            folder=folder,
            filter=filter,
            top_k=top_k,
            min_score=min_score,
        )
        response = self._call(
            lambda: self.knowledge.SearchKnowledge(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )
        return list(response.results)

    def get_document(
        self, name: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> knowledge_pb2.Document:
        """One document (`documents/{id}` or the id)."""
        return self._call(
            lambda: self.knowledge.GetDocument(
                knowledge_pb2.GetDocumentRequest(name=name),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    def delete_document(
        self, name: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> None:
        """Deletes a document and its chunks."""
        self._call(
            lambda: self.knowledge.DeleteDocument(
                knowledge_pb2.DeleteDocumentRequest(name=name),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )
