"""The embedded vector store: Qdrant Edge, the Qdrant engine in-process.

One directory holds one store:

    <path>/memoryd.json   the marker: the model id and dimension it was made for
    <path>/memoryd.lock   held (flock) while a process has the store open
    <path>/shard/         the Edge shard

How the engine is used, and why:

- Every engine call runs on one dedicated worker thread. The engine holds
  the GIL for the length of a call, so calls are kept small (a few hundred
  points at most; deletes and sweeps go in batches) and nothing runs on the
  event loop; the single thread also serializes them, as the shard expects.
- No HNSW graph is ever built (`indexing_threshold=0`): building one blocks
  the process for minutes at 100k points. A search is an exact scan of the
  points its filter selects, which the `tenant` keyword index (is_tenant)
  narrows to one tenant first: well under a millisecond for a few hundred
  points per tenant.
- Durability: an upsert or delete is in the shard's write-ahead log, a
  memory-mapped file, when the call returns, so it survives the process
  being killed (kill -9) without any flush; `tests/integration` proves it.
  Without a flush the data is in the page cache only: a power loss or kernel
  crash can lose the last seconds of writes. `sync_writes=True` flushes the
  whole shard (msync + fsync of every segment file) after each write call,
  which survives those too but costs ~20 ms per call (measured: 2.5k
  single-record upserts/s without, 40/s with), hence off by default.
- Segments are optimized (deleted points vacuumed, small segments merged)
  only when asked (`optimize`) and on `close`, never behind a call.
- Full disk: the engine's files are sparse and memory-mapped, so a write
  into a full file system kills the process with SIGBUS instead of failing.
  Every write (and `open`, which may replay the WAL) first checks that at
  least `min_free_bytes` are free (`memoryd.storage.disk`) and is refused
  with ResourceExhausted (DISK_FULL) otherwise; an optimization, which
  rewrites segments, runs only with room for a copy of the shard.
- Hung disk: an engine call blocked on I/O is waited for `timeout_s` at
  most; the caller then gets Unavailable (STORAGE_TIMEOUT), and while that
  engine call is still running every further call is refused at once
  (STORAGE_STUCK) instead of queueing behind it, so health reports
  NOT_SERVING. `on_change` is called when a call gets stuck and when it
  comes back. This keeps the server answering only while the event loop
  can run: the engine holds the GIL for the whole of a call (measured:
  `flush` let another thread run once in 180 ms), so a call blocked inside
  the engine stops every Python thread; see the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import qdrant_edge as qe

from memoryd.domain.errors import FailedPrecondition, ResourceExhausted, Unavailable
from memoryd.storage import _payload as p
from memoryd.storage._base import PointStore
from memoryd.storage._payload import Hit, Point
from memoryd.storage.disk import check_free_space

log = logging.getLogger("memoryd.storage.edge")

T = TypeVar("T")

EdgeCondition = qe.FieldCondition | qe.HasIdCondition | qe.Filter

MARKER = "memoryd.json"
LOCK = "memoryd.lock"
SHARD = "shard"


class _Conditions:
    """`_payload.Conditions` for qdrant_edge."""

    def match(self, key: str, value: str | int) -> EdgeCondition:
        return qe.FieldCondition(key, match=qe.MatchValue(value))

    def match_any(self, key: str, values: list[str]) -> EdgeCondition:
        return qe.FieldCondition(key, match=qe.MatchAny(values))

    def range(
        self,
        key: str,
        *,
        gt: float | None = None,
        gte: float | None = None,
        lt: float | None = None,
        lte: float | None = None,
    ) -> EdgeCondition:
        return qe.FieldCondition(key, range=qe.RangeFloat(gte=gte, gt=gt, lte=lte, lt=lt))

    def has_id(self, ids: Sequence[str]) -> EdgeCondition:
        return qe.HasIdCondition(set(ids))

    def filter(
        self,
        must: Sequence[EdgeCondition] = (),
        should: Sequence[EdgeCondition] = (),
        must_not: Sequence[EdgeCondition] = (),
    ) -> qe.Filter:
        return qe.Filter(
            must=list(must) or None, should=list(should) or None, must_not=list(must_not) or None
        )

    def nest(self, flt: qe.Filter) -> EdgeCondition:
        return flt


_CONDITIONS = _Conditions()


class EdgeVectorStore(PointStore[EdgeCondition, qe.Filter]):
    """A `VectorStore` in a local directory, on Qdrant Edge.

    `path` is the store's directory (created when missing). Only one process
    may have it open: a second `open` raises FailedPrecondition.
    `sync_writes` flushes the shard after every write (see the module
    docstring); `optimize_on_close` vacuums and merges segments on `close`.
    `search_threads` sizes the engine's search pool (None: from the CPUs).
    `min_free_bytes`: writes are refused (ResourceExhausted, DISK_FULL) while
    less is free on the store's file system (0: no floor). `timeout_s`
    bounds the wait for one engine call and `on_change` is told when a call
    gets stuck or comes back (see the module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync_writes: bool = False,
        optimize_on_close: bool = True,
        search_threads: int | None = None,
        min_free_bytes: int = 0,
        timeout_s: float | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._path = Path(path)
        self._min_free_bytes = min_free_bytes
        self._timeout_s = timeout_s
        self._on_change = on_change
        # monotonic start of the engine call that overran timeout_s, if it still runs
        self._stuck_since: float | None = None
        self._sync_writes = sync_writes
        self._optimize_on_close = optimize_on_close
        self._search_threads = search_threads
        self._executor: ThreadPoolExecutor | None = None
        self._shard: qe.EdgeShard | None = None
        self._lock_file: IO[str] | None = None
        self._writes = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._path

    # --- lifecycle ----------------------------------------------------------

    async def open(self, model_id: str, dimension: int) -> None:
        """Creates the store for `model_id` (`dimension`-d vectors) or opens
        it, checking that it was made for them.

        Raises FailedPrecondition when the store was made for another model
        or dimension, or another process has it open.
        """
        if self._shard is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._open_sync, model_id, dimension
            )
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._dimension = dimension

    async def close(self) -> None:
        """Optimizes (if so configured), flushes and closes the shard. Idempotent."""
        executor = self._executor
        if executor is None:
            return
        if self._stuck_since is not None:
            # Waiting would hang shutdown for as long as the disk does; the
            # WAL holds every acknowledged write, and the flock goes with
            # the process.
            log.error("closing the vector store at %s without a flush: it is stuck", self._path)
            executor.shutdown(wait=False)
            self._executor = None
            self._dimension = None
            return
        async with self._writes:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        executor.shutdown(wait=True)
        self._executor = None
        self._dimension = None

    async def optimize(self) -> bool:
        """Vacuums deleted points and merges small segments now. Blocks the
        engine (and, holding the GIL, the process) while it runs: call it at
        quiet times. Answers whether anything was optimized."""
        async with self._writes:
            return await self._call(self._optimize_sync)

    def _optimize_sync(self, shard: qe.EdgeShard) -> bool:
        """Optimizes when there is room for a rewritten copy of the shard
        above the floor; raises ResourceExhausted (DISK_FULL) otherwise."""
        check_free_space(
            self._path, self._min_free_bytes + _allocated_bytes(self._path), what="optimizations"
        )
        return shard.optimize()

    def _open_sync(self, model_id: str, dimension: int) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        # Loading replays the WAL and creating makes the sparse files: both
        # touch mapped pages, so not on a full disk.
        check_free_space(self._path, self._min_free_bytes, what="start-up and writes")
        lock_file = open(self._path / LOCK, "a+")  # noqa: SIM115 - held until close
        try:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FailedPrecondition(
                    f"the vector store at {self._path} is open in another process; "
                    "stop it, or give this server its own data directory",
                    reason="VECTOR_STORE_LOCKED",
                ) from None
            shard_dir = self._path / SHARD
            self._check_marker(model_id, dimension, shard_dir)
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
                optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
                max_search_threads=self._search_threads,
            )
            if (shard_dir / "edge_config.json").exists():
                shard = qe.EdgeShard.load(str(shard_dir), config)
            else:
                shard = qe.EdgeShard.create(str(shard_dir), config)
            try:
                _ensure_indexes(shard)
            except BaseException:
                shard.close()
                raise
        except BaseException:
            lock_file.close()
            raise
        self._shard = shard
        self._lock_file = lock_file

    def _check_marker(self, model_id: str, dimension: int, shard_dir: Path) -> None:
        marker = self._path / MARKER
        wanted = {"layout": p.LAYOUT, "model_id": model_id, "dimension": dimension}
        if marker.exists():
            made = json.loads(marker.read_text())
            if (made.get("model_id"), made.get("dimension")) != (model_id, dimension):
                raise FailedPrecondition(
                    f"the vector store at {self._path} was created for model "
                    f"{made.get('model_id')} ({made.get('dimension')}-d); this server is "
                    f"configured for {model_id} ({dimension}-d). Configure the model the "
                    "store was made with, or use another data directory and re-add the memories",
                    reason="EMBEDDING_MODEL_MISMATCH",
                )
            return
        if shard_dir.exists() and any(shard_dir.iterdir()):
            raise FailedPrecondition(
                f"{shard_dir} holds a shard without a {MARKER} beside it, so its model is "
                "unknown; move it away or restore the marker",
                reason="EMBEDDING_MODEL_UNKNOWN",
            )
        # The marker is written (durably) before the shard exists, so a shard
        # is never without one.
        tmp = marker.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(wanted, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)
        dir_fd = os.open(self._path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _close_sync(self) -> None:
        shard, self._shard = self._shard, None
        try:
            if shard is not None:
                try:
                    if self._optimize_on_close:
                        try:
                            self._optimize_sync(shard)
                        except ResourceExhausted as err:
                            log.warning("not optimizing the vector store on close: %s", err)
                    shard.flush()
                finally:
                    shard.close()
        finally:
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None

    # --- engine primitives --------------------------------------------------

    @property
    def _c(self) -> _Conditions:
        return _CONDITIONS

    def _write_lock(self) -> contextlib.AbstractAsyncContextManager[Any]:
        # One process owns the shard, so a lock makes check-then-write atomic.
        return self._writes

    async def _call(self, fn: Callable[[qe.EdgeShard], T]) -> T:
        """Runs `fn(shard)` on the engine thread, waiting `timeout_s` at most.

        Raises Unavailable: STORAGE_STUCK at once while an earlier call
        overran its timeout and still runs, STORAGE_TIMEOUT when this one
        overruns (it goes on running on the engine thread; a write may
        still land)."""
        executor = self._executor
        if executor is None:
            raise _closed()
        if self._stuck_since is not None:
            raise _stuck(time.monotonic() - self._stuck_since)

        def run() -> T:
            shard = self._shard
            if shard is None:
                raise _closed()
            return fn(shard)

        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(executor, run)
        if self._timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            self._got_stuck(future, started)
            raise Unavailable(
                f"the vector store did not answer within {self._timeout_s:g} s "
                f"(the disk of {self._path} may be hung); retry later",
                reason="STORAGE_TIMEOUT",
            ) from None

    def _got_stuck(self, future: asyncio.Future[Any], started: float) -> None:
        # The engine thread runs calls one at a time, so the stuck call is
        # the one running or one queued behind it: either way, nothing
        # answers until `future` is done.
        if self._stuck_since is not None:
            return
        self._stuck_since = started
        log.error(
            "the vector store at %s has not answered for %.0f s: refusing its calls until it does",
            self._path,
            time.monotonic() - started,
        )
        future.add_done_callback(self._unstuck)
        if self._on_change is not None:
            self._on_change()

    def _unstuck(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: its caller has gone
        since, self._stuck_since = self._stuck_since, None
        log.warning(
            "the vector store at %s answers again (after %.0f s)",
            self._path,
            time.monotonic() - (since or time.monotonic()),
        )
        if self._on_change is not None:
            self._on_change()

    def _write(self, shard: qe.EdgeShard, op: qe.UpdateOperation) -> None:
        # Checked on the engine thread right before the write: writes are
        # serialized there, so no other write can slip in between.
        check_free_space(self._path, self._min_free_bytes)
        shard.update(op)
        if self._sync_writes:
            shard.flush()

    async def _upsert(self, points: list[Point], guard: qe.Filter) -> None:
        op = qe.UpdateOperation.upsert_points(
            [qe.Point(pt.id, pt.vector, pt.payload) for pt in points], condition=guard
        )
        await self._call(lambda s: self._write(s, op))

    async def _owners(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        found = await self._call(lambda s: s.retrieve(list(ids), [p.TENANT, p.END_USER_ID], False))
        return p.owners(found)

    async def _scroll(
        self,
        flt: qe.Filter,
        limit: int,
        *,
        newest_first: bool = False,
        offset: str | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> tuple[list[Hit], str | None]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=flt,
            with_payload=with_payload,
            with_vector=with_vectors,
            order_by=qe.OrderBy(p.CREATE_TIME, direction=qe.Direction.Desc)
            if newest_first
            else None,
        )
        records, next_offset = await self._call(lambda s: s.scroll(request))
        hits = [Hit(str(r.id), r.payload or {}, _vector(r.vector)) for r in records]
        return hits, None if next_offset is None else str(next_offset)

    async def _query(
        self, flt: qe.Filter, vector: list[float], limit: int, min_score: float | None
    ) -> list[Hit]:
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector),
            filter=flt,
            with_payload=True,
            with_vector=False,
            score_threshold=min_score,
        )
        found = await self._call(lambda s: s.query(request))
        return [Hit(str(r.id), r.payload or {}, None, r.score) for r in found]

    async def _count(self, flt: qe.Filter) -> int:
        request = qe.CountRequest(exact=True, filter=flt)
        return await self._call(lambda s: s.count(request))

    async def _delete(self, flt: qe.Filter) -> None:
        op = qe.UpdateOperation.delete_points_by_filter(flt)
        await self._call(lambda s: self._write(s, op))


def _ensure_indexes(shard: qe.EdgeShard) -> None:
    """Creates the payload indexes the shard lacks."""
    have = shard.info().payload_schema
    wanted: dict[str, qe.PayloadSchemaParams] = {p.TENANT: qe.KeywordIndexParams(is_tenant=True)}
    for key in p.KEYWORD_INDEXES:
        wanted[key] = qe.KeywordIndexParams(enable_hnsw=False)
    for key in p.TIME_INDEXES:
        wanted[key] = qe.IntegerIndexParams(lookup=False, range=True, enable_hnsw=False)
    for key, params in wanted.items():
        if key not in have:
            shard.update(qe.UpdateOperation.create_field_index(key, params))


def _allocated_bytes(path: Path) -> int:
    """Bytes the files under `path` occupy on disk (not their sparse length)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _vector(v: qe.Vector | None) -> list[float] | None:
    """The default (unnamed) dense vector of a read point."""
    if v is None:
        return None
    if isinstance(v, dict):
        v = v.get("")  # type: ignore[assignment]
        if v is None:
            return None
    return [float(x) for x in v]  # type: ignore[arg-type]


def _stuck(seconds: float) -> Unavailable:
    return Unavailable(
        f"a vector store call has been running for {seconds:.0f} s (the disk may be hung); "
        "calls are refused until it answers; retry later",
        reason="STORAGE_STUCK",
    )


def _closed() -> Unavailable:
    return Unavailable(
        "the vector store is not open (the server is starting or shutting down); retry",
        reason="VECTOR_STORE_CLOSED",
    )
