"""The vector store on a Qdrant server or cluster, through qdrant-client.

Layout (Qdrant's multitenancy recipe): one collection per embedding model,
named from the model id (`memoryd_<model>`); every tenant's points in it,
told apart by the `tenant` keyword, indexed with `is_tenant=true`; HNSW with
`m=0, payload_m=16`, so graphs are built per tenant and never across them.
The collection's metadata records the model id and dimension it was made
for, and `open` refuses to serve another model from it.

The adapter talks to an `AsyncQdrantClient` (production). A synchronous
`QdrantClient` is accepted too and driven from one worker thread, which is
how the tests run it in local mode (whose async client would block the event
loop); nothing here relies on what only local mode does.

Consistency with concurrent writers (other replicas): the cross-tenant id
check of `upsert` is repeated inside the write as its `update_filter`, so a
point of another tenant is never overwritten; `delete_matching` and
`sweep_expired` delete exactly the points they read (re-checked by filter),
and count a point that another replica deleted in between as theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

import grpc
import grpc.aio
import httpx
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from memoryd.domain.errors import FailedPrecondition, Unavailable
from memoryd.storage.vectors import layout as p
from memoryd.storage.vectors.layout import Hit, Point
from memoryd.storage.vectors.point_store import PointStore

T = TypeVar("T")

QdrantCondition = models.FieldCondition | models.HasIdCondition | models.Filter

MARKER_KEY = "memoryd"


def collection_name(model_id: str, prefix: str = "memoryd") -> str:
    """The collection of a model: `<prefix>_<model id, lower-case, [a-z0-9_] only>`.

    Model ids that differ only in punctuation share a name; the marker check
    of `open` then refuses the second one rather than mixing vectors.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_") or "model"
    return f"{prefix}_{slug}"[:255]


class _Conditions:
    """`conditions.Conditions` for qdrant-client models."""

    def match(self, key: str, value: str | int) -> QdrantCondition:
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))

    def match_any(self, key: str, values: list[str]) -> QdrantCondition:
        return models.FieldCondition(key=key, match=models.MatchAny(any=values))

    def range(
        self,
        key: str,
        *,
        gt: float | None = None,
        gte: float | None = None,
        lt: float | None = None,
        lte: float | None = None,
    ) -> QdrantCondition:
        return models.FieldCondition(key=key, range=models.Range(gt=gt, gte=gte, lt=lt, lte=lte))

    def has_id(self, ids: Sequence[str]) -> QdrantCondition:
        return models.HasIdCondition(has_id=list(ids))

    def filter(
        self,
        must: Sequence[QdrantCondition] = (),
        should: Sequence[QdrantCondition] = (),
        must_not: Sequence[QdrantCondition] = (),
    ) -> models.Filter:
        return models.Filter(
            must=list(must) or None, should=list(should) or None, must_not=list(must_not) or None
        )

    def nest(self, flt: models.Filter) -> QdrantCondition:
        return flt


_CONDITIONS = _Conditions()


class _Api(Protocol):
    """The part of `AsyncQdrantClient` this adapter uses (keyword arguments
    only, as qdrant-client names them). `AsyncQdrantClient` is one as it is;
    `_InThread` makes a synchronous `QdrantClient` one."""

    async def collection_exists(self, collection_name: str) -> bool: ...

    async def create_collection(
        self,
        collection_name: str,
        *,
        vectors_config: models.VectorParams,
        hnsw_config: models.HnswConfigDiff,
        metadata: dict[str, Any],
    ) -> bool: ...

    async def get_collection(self, collection_name: str) -> models.CollectionInfo: ...

    async def create_payload_index(
        self,
        collection_name: str,
        *,
        field_name: str,
        field_schema: models.KeywordIndexParams | models.IntegerIndexParams,
        wait: bool,
    ) -> models.UpdateResult: ...

    async def upsert(
        self,
        collection_name: str,
        *,
        points: list[models.PointStruct],
        update_filter: models.Filter,
        wait: bool,
    ) -> models.UpdateResult: ...

    async def retrieve(
        self,
        collection_name: str,
        *,
        ids: list[str],
        with_payload: list[str],
        with_vectors: bool,
    ) -> list[models.Record]: ...

    async def scroll(
        self,
        collection_name: str,
        *,
        scroll_filter: models.Filter,
        limit: int,
        order_by: models.OrderBy | None,
        offset: str | None,
        with_payload: bool,
        with_vectors: bool,
    ) -> tuple[list[models.Record], Any]: ...

    async def query_points(
        self,
        collection_name: str,
        *,
        query: list[float],
        query_filter: models.Filter,
        limit: int,
        score_threshold: float | None,
        with_payload: bool,
        with_vectors: bool,
    ) -> models.QueryResponse: ...

    async def count(
        self, collection_name: str, *, count_filter: models.Filter, exact: bool
    ) -> models.CountResult: ...

    async def delete(
        self, collection_name: str, *, points_selector: models.FilterSelector, wait: bool
    ) -> models.UpdateResult: ...

    async def batch_update_points(
        self,
        collection_name: str,
        *,
        update_operations: list[models.SetPayloadOperation],
        wait: bool,
    ) -> list[models.UpdateResult]: ...


class _InThread:
    """A synchronous `QdrantClient` as an `_Api`: every call on one worker
    thread, in order (local mode is not thread-safe)."""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._executor: ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-client")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def shutdown(self) -> None:
        """Stops the worker thread (a later call starts another)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        """Each `_Api` method: the client's method of that name, run on the
        worker thread with the same arguments."""
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._run(lambda: method(*args, **kwargs))

        return call


class QdrantVectorStore(PointStore[QdrantCondition, models.Filter]):
    """A `VectorStore` on a Qdrant server, one collection per model.

    `client` is an `AsyncQdrantClient` (e.g. `AsyncQdrantClient(url=...,
    api_key=..., https=...)`), or a synchronous `QdrantClient`, then called
    from a worker thread. `collection` fixes the collection's name instead of
    deriving it from the model id with `collection_prefix`. The client is the
    caller's: `close` does not close it.
    """

    _recheck_owners = True

    def __init__(
        self,
        client: AsyncQdrantClient | QdrantClient,
        *,
        collection: str | None = None,
        collection_prefix: str = "memoryd",
    ) -> None:
        super().__init__()
        self._api: _Api = (
            cast(_Api, _InThread(client)) if isinstance(client, QdrantClient) else client
        )
        self._fixed_collection = collection
        self._prefix = collection_prefix
        self._collection: str | None = None

    @property
    def collection(self) -> str:
        """The collection in use (known once open)."""
        if self._collection is None:
            raise Unavailable("the vector store is not open", reason="VECTOR_STORE_CLOSED")
        return self._collection

    # --- lifecycle ----------------------------------------------------------

    async def open(self, model_id: str, dimension: int) -> None:
        """Creates the model's collection, or checks that the existing one was
        made for `model_id` and `dimension`, creates missing indexes, and
        upgrades points of an older payload layout in place.

        Raises FailedPrecondition on a mismatch, Unavailable when the server
        cannot be reached.
        """
        name = self._fixed_collection or collection_name(model_id, self._prefix)
        marker = {"model_id": model_id, "dimension": dimension, "layout": p.LAYOUT}
        with _unavailable():
            if not await self._api.collection_exists(name):
                try:
                    await self._api.create_collection(
                        name,
                        vectors_config=models.VectorParams(
                            size=dimension, distance=models.Distance.COSINE
                        ),
                        hnsw_config=models.HnswConfigDiff(m=0, payload_m=16),
                        metadata={MARKER_KEY: marker},
                    )
                except (UnexpectedResponse, ValueError):
                    # Another replica created it first; its marker is checked below.
                    if not await self._api.collection_exists(name):
                        raise
            info = await self._api.get_collection(name)
            _check_marker(name, info, model_id, dimension)
            await self._ensure_indexes(name, info)
        self._collection = name
        self._dimension = dimension
        try:
            await self._upgrade_points()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stops using the collection. The client stays open (it is the caller's)."""
        self._collection = None
        self._dimension = None
        if isinstance(self._api, _InThread):
            await self._api.shutdown()

    async def _ensure_indexes(self, name: str, info: models.CollectionInfo) -> None:
        """Creates the payload indexes of `layout.INDEXES` the collection lacks."""
        have = set(info.payload_schema or {})
        for key, kind in p.INDEXES.items():
            if key not in have:
                await self._api.create_payload_index(
                    name, field_name=key, field_schema=_index_params(kind), wait=True
                )

    # --- engine primitives --------------------------------------------------

    @property
    def _c(self) -> _Conditions:
        return _CONDITIONS

    async def _upsert(self, points: list[Point], guard: models.Filter) -> None:
        structs = [
            models.PointStruct(id=pt.id, vector=pt.vector, payload=pt.payload) for pt in points
        ]
        with _unavailable():
            await self._api.upsert(self.collection, points=structs, update_filter=guard, wait=True)

    async def _owners(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        with _unavailable():
            found = await self._api.retrieve(
                self.collection,
                ids=ids,
                with_payload=[p.TENANT, p.END_USER_ID],
                with_vectors=False,
            )
        return p.owners(found)

    async def _scroll(
        self,
        flt: models.Filter,
        limit: int,
        *,
        newest_first: bool = False,
        offset: str | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> tuple[list[Hit], str | None]:
        order_by = (
            models.OrderBy(key=p.CREATE_TIME, direction=models.Direction.DESC)
            if newest_first
            else None
        )
        with _unavailable():
            records, next_offset = await self._api.scroll(
                self.collection,
                scroll_filter=flt,
                limit=limit,
                order_by=order_by,
                offset=offset,
                with_payload=with_payload,
                with_vectors=with_vectors,
            )
        hits = [Hit(str(r.id), r.payload or {}, p.dense_vector(r.vector)) for r in records]
        return hits, None if next_offset is None else str(next_offset)

    async def _query(
        self, flt: models.Filter, vector: list[float], limit: int, min_score: float | None
    ) -> list[Hit]:
        with _unavailable():
            response = await self._api.query_points(
                self.collection,
                query=vector,
                query_filter=flt,
                limit=limit,
                score_threshold=min_score,
                with_payload=True,
                with_vectors=False,
            )
        return [Hit(str(r.id), r.payload or {}, None, r.score) for r in response.points]

    async def _count(self, flt: models.Filter) -> int:
        with _unavailable():
            result = await self._api.count(self.collection, count_filter=flt, exact=True)
        return result.count

    async def _delete(self, flt: models.Filter) -> None:
        with _unavailable():
            await self._api.delete(
                self.collection, points_selector=models.FilterSelector(filter=flt), wait=True
            )

    async def _set_payloads(self, changes: list[tuple[models.Filter, dict[str, Any]]]) -> None:
        operations = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=fields, filter=flt))
            for flt, fields in changes
        ]
        with _unavailable():
            await self._api.batch_update_points(
                self.collection, update_operations=operations, wait=True
            )

    async def _purge(self, flt: models.Filter) -> None:
        # The server deletes by filter on its side, however many points match.
        await self._delete(flt)


def _check_marker(name: str, info: models.CollectionInfo, model_id: str, dimension: int) -> None:
    made = (info.config.metadata or {}).get(MARKER_KEY)
    if not isinstance(made, dict):
        raise FailedPrecondition(
            f"the Qdrant collection '{name}' was not created by memoryd (it has no "
            f"'{MARKER_KEY}' metadata); use another collection name",
            reason="EMBEDDING_MODEL_UNKNOWN",
        )
    vectors = info.config.params.vectors
    size = vectors.size if isinstance(vectors, models.VectorParams) else None
    if (made.get("model_id"), made.get("dimension"), size) != (model_id, dimension, dimension):
        raise FailedPrecondition(
            f"the Qdrant collection '{name}' was created for model {made.get('model_id')} "
            f"({made.get('dimension')}-d); this server is configured for {model_id} "
            f"({dimension}-d). Configure the model the collection was made with, or "
            "another collection, and re-add the memories",
            reason="EMBEDDING_MODEL_MISMATCH",
        )


def _index_params(kind: p.IndexKind) -> models.KeywordIndexParams | models.IntegerIndexParams:
    match kind:
        case p.IndexKind.TENANT:
            return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
        case p.IndexKind.KEYWORD:
            return models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, enable_hnsw=False
            )
        case p.IndexKind.INTEGER:
            return models.IntegerIndexParams(
                type=models.IntegerIndexType.INTEGER, lookup=False, range=True, enable_hnsw=False
            )


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Turns "the server cannot be reached or is overloaded" into Unavailable;
    any other error (a bad request is a bug here) passes through."""
    try:
        yield
    except ResponseHandlingException as e:
        raise _down(e) from e
    except UnexpectedResponse as e:
        if e.status_code is not None and (e.status_code == 429 or e.status_code >= 500):
            raise _down(e) from e
        raise
    except (httpx.TransportError, ConnectionError, TimeoutError) as e:
        raise _down(e) from e
    except grpc.aio.AioRpcError as e:  # AsyncQdrantClient(prefer_grpc=True)
        if e.code() in _GRPC_DOWN:
            raise _down(e) from e
        raise


_GRPC_DOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def _down(e: Exception) -> Unavailable:
    return Unavailable(
        f"the Qdrant server is unavailable ({type(e).__name__}); retry later",
        reason="BACKEND_UNAVAILABLE",
    )
