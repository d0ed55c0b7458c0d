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

from memoryd.crypto.sealer import Sealer
from memoryd.domain.errors import FailedPrecondition, Unavailable
from memoryd.storage.vectors import layout as p
from memoryd.storage.vectors import ranking as rk
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
        sparse_vectors_config: dict[str, models.SparseVectorParams],
        hnsw_config: models.HnswConfigDiff,
        metadata: dict[str, Any],
    ) -> bool: ...

    async def delete_collection(self, collection_name: str) -> bool: ...

    async def update_collection(
        self, collection_name: str, *, metadata: dict[str, Any]
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
        query: Any,
        using: str | None,
        prefetch: list[models.Prefetch] | None,
        query_filter: models.Filter,
        search_params: models.SearchParams | None,
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
        tuning: rk.Tuning | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        super().__init__(tuning, sealer)
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
                    await _create(self._api, name, dimension, {MARKER_KEY: marker})
                except (UnexpectedResponse, ValueError):
                    # Another replica created it first; its marker is checked below.
                    if not await self._api.collection_exists(name):
                        raise
            info = await self._api.get_collection(name)
            _check_marker(name, info, model_id, dimension)
            _check_keywords(name, info)
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
        await _ensure_indexes(self._api, name, info)

    # --- engine primitives --------------------------------------------------

    @property
    def _c(self) -> _Conditions:
        return _CONDITIONS

    async def _upsert(self, points: list[Point], guard: models.Filter) -> None:
        structs = [_struct(pt.id, pt.vector, pt.payload, pt.keywords) for pt in points]
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

    async def _query(self, flt: models.Filter, plan: rk.Plan[models.Filter]) -> list[Hit]:
        query, using, prefetch, params, threshold = _stage(flt, plan)
        with _unavailable():
            response = await self._api.query_points(
                self.collection,
                query=query,
                using=using,
                prefetch=prefetch,
                query_filter=flt,
                search_params=params,
                limit=plan.limit,
                score_threshold=threshold,
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


def _stage(
    flt: models.Filter, plan: rk.Plan[models.Filter]
) -> tuple[Any, str | None, list[models.Prefetch] | None, models.SearchParams | None, float | None]:
    """(query, using, prefetches, search params, score threshold) of one
    stage of `plan`, every stage confined to `flt`."""
    match plan:
        case rk.Nearest(vector=vector, threshold=threshold, pool=pool):
            pooled = [_prefetch(flt, stage) for stage in pool] or None
            return list(vector), None, pooled, None, threshold
        case rk.Keyword(words=words, corpus=corpus):
            sparse = models.SparseVector(indices=list(words.indices), values=list(words.values))
            params = models.SearchParams(idf=models.IdfCorpusParams(corpus=corpus))
            return sparse, rk.KEYWORDS, None, params, None
        case rk.Fuse(legs=legs, fusion="sum", weights=weights, saturation=saturation):
            saturated = models.DivExpression(
                div=models.DivParams(
                    left="$score[1]",
                    right=models.SumExpression(sum=["$score[1]", saturation]),
                    by_zero_default=0.0,
                )
            )
            summed = models.FormulaQuery(
                formula=models.SumExpression(
                    sum=[
                        models.MultExpression(mult=[weights[0], "$score[0]"]),
                        models.MultExpression(mult=[weights[1], saturated]),
                    ]
                ),
                defaults={"$score[0]": 0.0, "$score[1]": 0.0},
            )
            return summed, None, [_prefetch(flt, leg) for leg in legs], None, None
        case rk.Fuse(legs=legs, fusion=fusion, rrf_k=k, weights=weights):
            fused: Any = (
                models.RrfQuery(rrf=models.Rrf(k=k, weights=list(weights)))
                if fusion == "rrf"
                else models.FusionQuery(fusion=models.Fusion.DBSF)
            )
            return fused, None, [_prefetch(flt, leg) for leg in legs], None, None
        case rk.Decay(inner=inner, now_us=now_us, half_life_us=half_life_us, field=field):
            decay = models.ExpDecayExpression(
                exp_decay=models.DecayParamsExpression(
                    x=field, target=float(now_us), scale=half_life_us, midpoint=0.5
                )
            )
            formula = models.FormulaQuery(formula=models.MultExpression(mult=["$score", decay]))
            return formula, None, [_prefetch(flt, inner)], None, None
        case rk.Diverse(inner=inner, vector=vector, diversity=diversity, candidates=candidates):
            mmr = models.NearestQuery(
                nearest=list(vector),
                mmr=models.Mmr(diversity=diversity, candidates_limit=candidates),
            )
            return mmr, None, [_prefetch(flt, inner)], None, None
    raise ValueError(f"unknown plan stage {plan!r}")


def _prefetch(flt: models.Filter, plan: rk.Plan[models.Filter]) -> models.Prefetch:
    query, using, prefetch, params, threshold = _stage(flt, plan)
    return models.Prefetch(
        query=query,
        using=using,
        prefetch=prefetch,
        filter=flt,
        params=params,
        score_threshold=threshold,
        limit=plan.limit,
    )


def _struct(
    pid: str,
    vector: list[float],
    payload: dict[str, Any],
    keywords: tuple[Sequence[int], Sequence[float]] | None,
) -> models.PointStruct:
    vectors: dict[str, Any] = {"": vector}
    if keywords is not None:
        vectors[rk.KEYWORDS] = models.SparseVector(
            indices=list(keywords[0]), values=list(keywords[1])
        )
    return models.PointStruct(id=pid, vector=vectors, payload=payload)


async def _create(api: _Api, name: str, dimension: int, metadata: dict[str, Any]) -> None:
    await api.create_collection(
        name,
        vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
        sparse_vectors_config={
            rk.KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)
        },
        hnsw_config=models.HnswConfigDiff(m=0, payload_m=16),
        metadata=metadata,
    )


async def _ensure_indexes(api: _Api, name: str, info: models.CollectionInfo) -> None:
    """Creates the payload indexes of `layout.INDEXES` the collection lacks."""
    have = set(info.payload_schema or {})
    for key, kind in p.INDEXES.items():
        if key not in have:
            await api.create_payload_index(
                name, field_name=key, field_schema=_index_params(kind), wait=True
            )


def _has_keywords(info: models.CollectionInfo) -> bool:
    return rk.KEYWORDS in (info.config.params.sparse_vectors or {})


def _check_keywords(name: str, info: models.CollectionInfo) -> None:
    if not _has_keywords(info):
        raise FailedPrecondition(
            f"the Qdrant collection '{name}' was made before keyword search and cannot gain "
            "keyword vectors in place: stop every memoryd replica using it and run "
            "`memoryd upgrade-vectors` once, then start them again",
            reason="VECTOR_STORE_UPGRADE_NEEDED",
        )


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


# --- upgrading a collection made before keyword search ----------------------------------


async def upgrade_collection(
    client: AsyncQdrantClient | QdrantClient,
    name: str,
    progress: Callable[[str], None] = lambda _: None,
) -> int:
    """Brings collection `name`, made before keyword search, to this layout;
    answers how many points it copied (0: it needed nothing). Every replica
    using it must be stopped.

    A Qdrant collection cannot gain a vector, so the points are copied twice:
    into `<name>__upgrade` (with their keyword vectors), which is marked
    complete, then, after the old collection is dropped, into a new `<name>`.
    Run again after an interruption, it carries on: an unfinished staging copy
    is made again; once the staging copy is complete, the old collection is
    only dropped and the copy back resumed.
    """
    api: _Api = cast(_Api, _InThread(client)) if isinstance(client, QdrantClient) else client
    staging = f"{name}__upgrade"
    try:
        with _unavailable():
            return await _upgrade(api, name, staging, progress)
    finally:
        if isinstance(api, _InThread):
            await api.shutdown()


async def _upgrade(api: _Api, name: str, staging: str, progress: Callable[[str], None]) -> int:
    have_staging = await api.collection_exists(staging)
    staged = have_staging and _upgrade_state(await api.get_collection(staging)) == "complete"
    if await api.collection_exists(name):
        info = await api.get_collection(name)
        if _has_keywords(info) and not have_staging:
            progress(f"the collection '{name}' has keyword vectors already: nothing to do")
            return 0
        if not _has_keywords(info):
            marker = (info.config.metadata or {}).get(MARKER_KEY)
            if not isinstance(marker, dict):
                raise FailedPrecondition(
                    f"the Qdrant collection '{name}' was not created by memoryd",
                    reason="EMBEDDING_MODEL_UNKNOWN",
                )
            if have_staging and not staged:
                await api.delete_collection(staging)
            if not staged:
                await _create(api, staging, int(marker["dimension"]), {MARKER_KEY: marker})
                await _ensure_indexes(api, staging, await api.get_collection(staging))
                n = await _copy(api, name, staging, progress)
                await api.update_collection(staging, metadata={"upgrade": "complete"})
                progress(f"copied {n} points into '{staging}'")
                staged = True
            await api.delete_collection(name)
    if not staged:
        raise FailedPrecondition(
            f"'{staging}' is not a complete copy and '{name}' is not one to upgrade: "
            "restore the collection from a snapshot",
            reason="VECTOR_STORE_UPGRADE_LOST",
        )
    source = await api.get_collection(staging)
    marker = (source.config.metadata or {})[MARKER_KEY]
    if not await api.collection_exists(name):
        await _create(api, name, int(marker["dimension"]), {MARKER_KEY: marker})
    await _ensure_indexes(api, name, await api.get_collection(name))
    n = await _copy(api, staging, name, progress)
    await api.delete_collection(staging)
    progress(f"upgraded '{name}': {n} points with keyword vectors")
    return n


def _upgrade_state(info: models.CollectionInfo) -> str:
    return str((info.config.metadata or {}).get("upgrade", ""))


async def _copy(api: _Api, source: str, target: str, progress: Callable[[str], None]) -> int:
    """Copies every point of `source` into `target`, each with the keyword
    vector of its content (writes are idempotent: a copy run again is the same)."""
    copied = 0
    offset: Any = None
    while True:
        records, offset = await api.scroll(
            source,
            scroll_filter=models.Filter(),
            limit=256,
            order_by=None,
            offset=offset,
            with_payload=True,
            with_vectors=True,
        )
        structs = []
        for r in records:
            payload = r.payload or {}
            vector = p.dense_vector(r.vector)
            if vector is None:
                continue
            words = rk.document_keywords(str(payload.get(p.CONTENT, "")))
            keywords = None if words is None else (words.indices, words.values)
            structs.append(_struct(str(r.id), vector, payload, keywords))
        if structs:
            await api.upsert(target, points=structs, update_filter=models.Filter(), wait=True)
            copied += len(structs)
            progress(f"'{source}' -> '{target}': {copied} points")
        if offset is None:
            return copied
