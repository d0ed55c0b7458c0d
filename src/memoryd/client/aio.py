"""`AsyncMemorydClient`: the asyncio client."""

# `timeout` is the gRPC deadline of a call: it travels to the server, which
# stops the call's work when it passes; asyncio.timeout() would not.
# ruff: noqa: ASYNC109

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.longrunning import operations_grpc_pb2, operations_pb2
from grpc import aio

from memoryd.client import _requests as req
from memoryd.client.channel import RetryPolicy, TlsConfig, channel_options, secure_or_plain_async
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


class AsyncMemorydClient:
    """memoryd over one asyncio gRPC channel, for one API key (and
    optionally one end user).

    Convenience methods cover the common calls and raise `MemorydError`
    with the decoded `google.rpc` details; `memory`, `keys`, `admin` and `webhooks` are
    the generated stubs for everything else (their errors are plain
    `grpc.aio.AioRpcError`: `MemorydError.from_rpc_error(e)` decodes them).

        async with AsyncMemorydClient("localhost:50051", api_key) as client:
            await client.create_memory("Ana prefers green tea", tags=["drinks"])
            hits = await client.search_memories("what does Ana drink")

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
        self.channel: aio.Channel = secure_or_plain_async(
            target, api_key, end_user_id, tls, channel_options(retry, tls, options)
        )
        self.memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)
        self.knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(self.channel)
        self.operations = operations_grpc_pb2.OperationsStub(self.channel)

    async def __aenter__(self) -> AsyncMemorydClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(grace=None)

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    @staticmethod
    async def _call(call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.RpcError as err:
            raise MemorydError.from_rpc_error(err) from err

    # --- keys --------------------------------------------------------------------

    async def whoami(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> keys_pb2.WhoAmIResponse:
        """The calling key's organization, project, environment and scopes."""
        return await self._call(
            self.keys.WhoAmI(
                keys_pb2.WhoAmIRequest(), timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    async def create_api_key(
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
        return await self._call(
            self.keys.CreateApiKey(request, timeout=self._deadline(timeout), metadata=call_metadata)
        )

    async def revoke_api_key(
        self, key_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> keys_pb2.ApiKey:
        """Revokes a key on every replica at once."""
        return await self._call(
            self.keys.RevokeApiKey(
                keys_pb2.RevokeApiKeyRequest(id=key_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    # --- memories --------------------------------------------------------------

    async def create_memory(
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
        return await self._call(
            self.memory.CreateMemory(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    async def search_memories(
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
        response = await self._call(
            self.memory.SearchMemories(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )
        return list(response.results)

    async def get_memory(
        self,
        memory_id: str,
        *,
        include_embedding: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> memory_pb2.Memory:
        """One memory; NOT_FOUND also for another tenant's."""
        return await self._call(
            self.memory.GetMemory(
                memory_pb2.GetMemoryRequest(id=memory_id, include_embedding=include_embedding),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def list_memories(
        self,
        filter: memory_pb2.MemoryFilter | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> memory_pb2.ListMemoriesResponse:
        """One page, newest first; pass `next_page_token` back for the next."""
        return await self._call(
            self.memory.ListMemories(
                req.list_memories(filter, page_size, page_token),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def iter_memories(
        self,
        filter: memory_pb2.MemoryFilter | None = None,
        *,
        page_size: int = 100,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> AsyncIterator[memory_pb2.Memory]:
        """Every memory matching `filter`, newest first, page by page
        (`timeout` applies to each page)."""
        token = ""
        while True:
            page = await self.list_memories(
                filter,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
                call_metadata=call_metadata,
            )
            for memory in page.memories:
                yield memory
            token = page.next_page_token
            if not token:
                return

    async def update_memory(
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
        return await self._call(
            self.memory.UpdateMemory(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    async def delete_memory(
        self, memory_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> None:
        """Deletes one memory and its revisions."""
        await self._call(
            self.memory.DeleteMemory(
                memory_pb2.DeleteMemoryRequest(id=memory_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def purge_memories(
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
        response = await self._call(
            self.memory.PurgeMemories(
                req.purge_memories(filter, everything, dry_run),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )
        return response.purged_count

    # --- webhooks --------------------------------------------------------------

    async def create_webhook(
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
        return await self._call(
            self.webhooks.CreateWebhook(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    async def list_webhooks(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.ListWebhooksResponse:
        """One page of webhooks, newest first (never their secrets)."""
        return await self._call(
            self.webhooks.ListWebhooks(
                webhooks_pb2.ListWebhooksRequest(page_size=page_size, page_token=page_token),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def get_webhook(
        self, webhook_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> webhooks_pb2.Webhook:
        """One webhook with its state; NOT_FOUND also for another tenant's."""
        return await self._call(
            self.webhooks.GetWebhook(
                webhooks_pb2.GetWebhookRequest(id=webhook_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def update_webhook(
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
        return await self._call(
            self.webhooks.UpdateWebhook(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    async def delete_webhook(
        self, webhook_id: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> None:
        """Deletes a webhook and its delivery history."""
        await self._call(
            self.webhooks.DeleteWebhook(
                webhooks_pb2.DeleteWebhookRequest(id=webhook_id),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def rotate_webhook_secret(
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
        return await self._call(
            self.webhooks.RotateWebhookSecret(
                req.rotate_webhook_secret(webhook_id, grace_period),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def list_webhook_deliveries(
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
        return await self._call(
            self.webhooks.ListWebhookDeliveries(
                req.list_webhook_deliveries(webhook_id, state, page_size, page_token),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def redeliver_webhook_delivery(
        self,
        webhook_id: str,
        delivery_id: str,
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = (),
    ) -> webhooks_pb2.WebhookDelivery:
        """Sends a delivery again, with the same `webhook-id`."""
        return await self._call(
            self.webhooks.RedeliverWebhookDelivery(
                webhooks_pb2.RedeliverWebhookDeliveryRequest(
                    webhook_id=webhook_id, delivery_id=delivery_id
                ),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    # --- knowledge -----------------------------------------------------------------

    async def create_document(
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
        return await self._call(
            self.knowledge.CreateDocument(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    async def upload_document(
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
        return await self._call(
            self.knowledge.UploadDocument(
                messages, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )

    async def wait_operation(
        self, name: str, *, wait_s: float = 30.0, call_metadata: CallMetadata = ()
    ) -> operations_pb2.Operation:
        """The operation once done, or as it is after `wait_s` (at most 60)."""
        return await self._call(
            self.operations.WaitOperation(
                req.wait_operation(name, wait_s),
                timeout=self._deadline(wait_s + 10),
                metadata=call_metadata,
            )
        )

    async def search_knowledge(
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
        response = await self._call(
            self.knowledge.SearchKnowledge(
                request, timeout=self._deadline(timeout), metadata=call_metadata
            )
        )
        return list(response.results)

    async def get_document(
        self, name: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> knowledge_pb2.Document:
        """One document (`documents/{id}` or the id)."""
        return await self._call(
            self.knowledge.GetDocument(
                knowledge_pb2.GetDocumentRequest(name=name),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )

    async def delete_document(
        self, name: str, *, timeout: float | None = None, call_metadata: CallMetadata = ()
    ) -> None:
        """Deletes a document and its chunks."""
        await self._call(
            self.knowledge.DeleteDocument(
                knowledge_pb2.DeleteDocumentRequest(name=name),
                timeout=self._deadline(timeout),
                metadata=call_metadata,
            )
        )
