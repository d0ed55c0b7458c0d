"""The synchronous Qdrant Edge engine behind `EdgeVectorStore`: one shard in
one directory, and the plain values its calls take and answer.

`EdgeEngine` does all of the engine's work and nothing else; it runs either
on a worker thread of the server (thread mode) or alone in a child process
that owns the shard (process mode, `memoryd.storage.vectors.edge_child`). Whatever
crosses to it is plain, picklable and cheap: filters are `Cond` trees of
tuples (built by `PlainConditions`, turned into qdrant_edge objects here),
points are `(id, vector, payload)` and hits `(id, payload, vector, score)`.

Layout of the directory:

    <path>/memoryd.json   the marker: the model id and dimension it was made for
    <path>/memoryd.lock   held (flock) while a process has the store open
    <path>/shard/         the Edge shard
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from memoryd.domain.errors import FailedPrecondition, ResourceExhausted, Unavailable
from memoryd.storage import read_ahead
from memoryd.storage.disk import allocated_bytes, check_free_space
from memoryd.storage.vectors import layout as p
from memoryd.storage.vectors import ranking as rk

log = logging.getLogger("memoryd.storage.edge")

MARKER = "memoryd.json"
LOCK = "memoryd.lock"
SHARD = "shard"
# while the shard is upgraded: the new copy, and the old one being replaced
NEXT_SHARD = "shard.next"
OLD_SHARD = "shard.old"
EDGE_CONFIG = "edge_config.json"
SEGMENT_DIR = "segments"  # the shard's segments, one directory each
LOCK_WAIT_S = 1.0
# Segments: the optimizer merges the smallest segments while there are more
# than SEGMENTS, and only segments under MAX_SEGMENT_KB of vectors, so a
# close or a vacuum never rewrites a large sealed segment to merge it.
SEGMENTS = 8
MAX_SEGMENT_KB = 200_000
# No HNSW graph, ever (m=0): a search stays an exact scan of the points its
# filter selects, in sealed segments too.
_NO_GRAPH = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)

# A condition or filter as plain tuples:
#   ("match", key, value)            ("any", key, [values])
#   ("range", key, gt, gte, lt, lte) ("ids", [point ids])
#   ("filter", (must...), (should...), (must_not...))
Cond = tuple[Any, ...]
# A point read back: id, payload, vector (or None), score (0.0 outside a search).
HitTuple = tuple[str, dict[str, Any], list[float] | None, float]
# A point to write: id, vector, payload, keyword vector (indices, values) or None.
PointTuple = tuple[
    str, list[float], dict[str, Any], tuple[tuple[int, ...], tuple[float, ...]] | None
]


class PlainConditions:
    """`conditions.Conditions` building `Cond` trees (for either mode)."""

    def match(self, key: str, value: str | int) -> Cond:
        return ("match", key, value)

    def match_any(self, key: str, values: list[str]) -> Cond:
        return ("any", key, list(values))

    def range(
        self,
        key: str,
        *,
        gt: float | None = None,
        gte: float | None = None,
        lt: float | None = None,
        lte: float | None = None,
    ) -> Cond:
        return ("range", key, gt, gte, lt, lte)

    def has_id(self, ids: Sequence[str]) -> Cond:
        return ("ids", list(ids))

    def filter(
        self, must: Sequence[Cond] = (), should: Sequence[Cond] = (), must_not: Sequence[Cond] = ()
    ) -> Cond:
        return ("filter", tuple(must), tuple(should), tuple(must_not))

    def nest(self, flt: Cond) -> Cond:
        return flt


def to_filter(flt: Cond) -> qe.Filter:
    """The qdrant_edge Filter of a plain ("filter", ...) tree."""
    built = _to_qe(flt)
    if not isinstance(built, qe.Filter):
        raise ValueError(f"not a filter: {flt[0]!r}")
    return built


def _to_qe(c: Cond) -> qe.FieldCondition | qe.HasIdCondition | qe.Filter:
    kind = c[0]
    if kind == "match":
        return qe.FieldCondition(c[1], match=qe.MatchValue(c[2]))
    if kind == "any":
        return qe.FieldCondition(c[1], match=qe.MatchAny(c[2]))
    if kind == "range":
        _, key, gt, gte, lt, lte = c
        return qe.FieldCondition(key, range=qe.RangeFloat(gte=gte, gt=gt, lte=lte, lt=lt))
    if kind == "ids":
        return qe.HasIdCondition(set(c[1]))
    if kind == "filter":
        must, should, must_not = (_to_qe_list(part) for part in c[1:4])
        return qe.Filter(must=must, should=should, must_not=must_not)
    raise ValueError(f"unknown condition {kind!r}")


def _to_qe_list(conds: Sequence[Cond]) -> list[Any] | None:
    # (list is invariant: the engine's list type names condition kinds unused here)
    return [_to_qe(x) for x in conds] or None


class EdgeEngine:
    """One Edge shard in `path`, used from one thread at a time.

    Every method is synchronous and may block on the disk. `min_free_bytes`:
    writes (and `open`) are refused with ResourceExhausted (DISK_FULL) while
    less is free; see `memoryd.storage.disk`. `sealing`: open the shard for
    `compact` (its optimizer then seals the appendable segment); a server's
    engine never seals, since sealing blocks the engine for minutes at 1M.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync_writes: bool = False,
        optimize_on_close: bool = True,
        search_threads: int | None = None,
        min_free_bytes: int = 0,
        sealing: bool = False,
    ) -> None:
        self._path = Path(path)
        self._sealing = sealing
        self._sync_writes = sync_writes
        self._optimize_on_close = optimize_on_close
        self._search_threads = search_threads
        self._min_free_bytes = min_free_bytes
        self._shard: qe.EdgeShard | None = None
        self._lock_file: IO[str] | None = None
        self.read_ahead: read_ahead.ReadAhead | None = None

    # --- lifecycle ----------------------------------------------------------

    def open(self, model_id: str, dimension: int) -> None:
        """Creates or loads the shard for `model_id`/`dimension` and holds
        the directory's lock. Raises FailedPrecondition (another process has
        it, or it was made for another model) or ResourceExhausted."""
        if self._shard is not None:
            return
        self._path.mkdir(parents=True, exist_ok=True)
        # Loading replays the WAL and creating makes the sparse files: both
        # touch mapped pages, so not on a full disk.
        check_free_space(self._path, self._min_free_bytes, what="start-up and writes")
        lock_file = open(self._path / LOCK, "a+")  # noqa: SIM115 - held until close
        try:
            if not _lock(lock_file):
                raise FailedPrecondition(
                    f"the vector store at {self._path} is open in another process; "
                    "stop it, or give this server its own data directory",
                    reason="VECTOR_STORE_LOCKED",
                )
            shard_dir = self._path / SHARD
            self._check_marker(model_id, dimension, shard_dir)
            _recover_swap(self._path)
            config = self._config(dimension)
            if (shard_dir / EDGE_CONFIG).exists():
                if not _has_keywords(shard_dir):
                    self._add_keywords(dimension)
                shard = qe.EdgeShard.load(str(shard_dir), config)
                try:
                    _ensure_indexes(shard)
                except BaseException:
                    shard.close()
                    raise
            else:
                shard = _created(shard_dir, config)
        except BaseException:
            lock_file.close()
            raise
        self._shard = shard
        self._lock_file = lock_file
        if not self._sealing:
            # the segments' files (a sealed segment maps its indexes and
            # payloads), toward the page cache while the server finishes
            # starting (storage/read_ahead.py)
            self.read_ahead = read_ahead.start(shard_dir / SEGMENT_DIR)

    def _config(self, dimension: int, *, keywords: bool = True) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
            sparse_vectors={rk.KEYWORDS: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
            if keywords
            else None,
            hnsw_config=_NO_GRAPH,
            optimizers=qe.EdgeOptimizersConfig(
                # in KB of vectors: 0 never seals; 1 seals any segment that
                # holds a point
                indexing_threshold=1 if self._sealing else 0,
                default_segment_number=SEGMENTS,
                max_segment_size=MAX_SEGMENT_KB,
            ),
            max_search_threads=self._search_threads,
        )

    def _add_keywords(self, dimension: int) -> None:
        """Brings a shard made before keyword search (no keyword vectors) to
        this layout: copies every point, with its keyword vector, into a new
        shard beside it, then swaps the two directories.

        The engine cannot add a vector to an existing shard, hence the copy;
        it needs room for a second copy of the shard. Safe to stop at any
        point: a copy left half done is thrown away and made again by the
        next open, and a swap cut short is finished by `_recover_swap`.
        """
        old_dir, new_dir = self._path / SHARD, self._path / NEXT_SHARD
        check_free_space(
            self._path, self._min_free_bytes + allocated_bytes(old_dir), what="the upgrade"
        )
        if new_dir.exists():
            shutil.rmtree(new_dir)
        old = qe.EdgeShard.load(str(old_dir), self._config(dimension, keywords=False))
        try:
            total = int(old.count(qe.CountRequest(exact=True)))
            log.warning(
                "upgrading the vector store at %s for keyword search: copying %d points",
                self._path,
                total,
            )
            new = _created(new_dir, self._config(dimension))
            try:
                copied, offset, last_said = 0, None, time.monotonic()
                while True:
                    records, offset = old.scroll(
                        qe.ScrollRequest(
                            offset=offset, limit=256, with_payload=True, with_vector=True
                        )
                    )
                    if records:
                        points = [_keyworded(r) for r in records]
                        new.update(qe.UpdateOperation.upsert_points(points))
                        copied += len(points)
                    if time.monotonic() - last_said > 5:
                        log.warning("upgrade: %d of %d points copied", copied, total)
                        last_said = time.monotonic()
                    if offset is None:
                        break
                new.flush()
            finally:
                new.close()
        finally:
            old.close()
        # old -> shard.old, new -> shard, then drop the old one
        os.replace(old_dir, self._path / OLD_SHARD)
        _fsync_dir(self._path)
        os.replace(new_dir, old_dir)
        _fsync_dir(self._path)
        shutil.rmtree(self._path / OLD_SHARD)
        log.warning("upgraded the vector store at %s: %d points copied", self._path, copied)

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
        _fsync_dir(self._path)

    def close(self, optimize: bool = True) -> None:
        """Optimizes (when so configured, `optimize` and there is room),
        flushes and closes the shard, and releases the lock. Idempotent."""
        shard, self._shard = self._shard, None
        try:
            if shard is not None:
                try:
                    if self._optimize_on_close and optimize:
                        try:
                            self._optimize(shard)
                        except ResourceExhausted as err:
                            log.warning("not optimizing the vector store on close: %s", err)
                    shard.flush()
                finally:
                    shard.close()
        finally:
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None

    # --- calls ----------------------------------------------------------------

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise closed()
        return self._shard

    def optimize(self) -> bool:
        """Vacuums and merges segments when there is room for a rewritten
        copy of the shard above the floor; raises ResourceExhausted otherwise."""
        return self._optimize(self.shard)

    def _optimize(self, shard: qe.EdgeShard) -> bool:
        check_free_space(
            self._path, self._min_free_bytes + allocated_bytes(self._path), what="optimizations"
        )
        return shard.optimize()

    def compact(self, say: Callable[[str], None]) -> Compacted:
        """Seals the shard's appendable segment into an immutable one whose
        payload indexes live in files that are mapped, not rebuilt, when the
        shard opens (see `compact_store`). Needs an engine opened with
        `sealing`; blocks it for as long as it runs (~200 µs a point)."""
        if not self._sealing:
            raise RuntimeError("compact needs an engine opened with sealing=True")
        shard = self.shard
        started = time.monotonic()
        before = shard.info().segments_count
        stale = _stale_indexes(shard)
        for n, key in enumerate(stale, 1):
            say(f"rebuilding the payload index {key!r} in files ({n} of {len(stale)})")
            self._write(
                shard,
                qe.UpdateOperation.create_field_index(key, _index_params(p.INDEXES[key])),
            )
        say("sealing the appendable segment")
        self._optimize(shard)
        shard.flush()
        info = shard.info()
        return Compacted(
            points=int(info.points_count),
            segments_before=int(before),
            segments_after=int(info.segments_count),
            indexes_rebuilt=len(stale),
            seconds=time.monotonic() - started,
        )

    def upsert(self, points: list[PointTuple], guard: Cond) -> None:
        self.write(upsert_operation(points, guard))

    def write(self, op: qe.UpdateOperation) -> None:
        """Applies an operation built beforehand (`upsert_operation`)."""
        self._write(self.shard, op)

    def delete(self, flt: Cond) -> None:
        shard = self.shard
        self._write(shard, qe.UpdateOperation.delete_points_by_filter(to_filter(flt)))

    def set_payloads(self, changes: list[tuple[Cond, dict[str, Any]]]) -> None:
        """For each (filter, fields): sets those payload fields on the points
        matching the filter."""
        shard = self.shard
        self._write(
            shard,
            *(
                qe.UpdateOperation.set_payload_by_filter(to_filter(flt), fields)
                for flt, fields in changes
            ),
        )

    def _write(self, shard: qe.EdgeShard, *ops: qe.UpdateOperation) -> None:
        # Checked right before the write, on the one thread that writes: no
        # other write can slip in between.
        check_free_space(self._path, self._min_free_bytes)
        for op in ops:
            shard.update(op)
        if self._sync_writes:
            shard.flush()

    def owners(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        return p.owners(self.shard.retrieve(list(ids), [p.TENANT, p.END_USER_ID], False))

    def scroll(
        self,
        flt: Cond,
        limit: int,
        newest_first: bool,
        offset: str | None,
        with_payload: bool,
        with_vectors: bool,
    ) -> tuple[list[HitTuple], str | None]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=to_filter(flt),
            with_payload=with_payload,
            with_vector=with_vectors,
            order_by=qe.OrderBy(p.CREATE_TIME, direction=qe.Direction.Desc)
            if newest_first
            else None,
        )
        records, next_offset = self.shard.scroll(request)
        hits = [(str(r.id), r.payload or {}, p.dense_vector(r.vector), 0.0) for r in records]
        return hits, None if next_offset is None else str(next_offset)

    def query(self, flt: Cond, plan: rk.Plan[Cond]) -> list[HitTuple]:
        request = _request(to_filter(flt), plan)
        return [(str(r.id), r.payload or {}, None, r.score) for r in self.shard.query(request)]

    def count(self, flt: Cond) -> int:
        return int(self.shard.count(qe.CountRequest(exact=True, filter=to_filter(flt))))


def upsert_operation(
    points: list[PointTuple], guard: Cond, between: Callable[[], None] | None = None
) -> qe.UpdateOperation:
    """The operation that writes `points` unless `guard` excludes them, built
    apart from the write: the binding turns a payload into the engine's at
    ~4.5 µs a key (~90 µs a point of ours, about half of a 100-point
    upsert), and none of that touches the shard. `between`, when given, is
    called between slices of UPSERT_SLICE points (the child answers the
    reads that arrived meanwhile)."""
    built: list[qe.Point] = []
    for start in range(0, len(points), UPSERT_SLICE):
        if start and between is not None:
            between()
        built.extend(
            qe.Point(pid, _vectors(vector, words), payload)
            for pid, vector, payload, words in points[start : start + UPSERT_SLICE]
        )
    return qe.UpdateOperation.upsert_points(built, condition=to_filter(guard))


# Points built per slice of `upsert_operation` (~1.5 ms of a busy core).
UPSERT_SLICE = 16

# The calls a client of the engine may make by name (the child's protocol).
CALLS = frozenset(
    {
        "open",
        "close",
        "optimize",
        "upsert",
        "delete",
        "set_payloads",
        "owners",
        "scroll",
        "query",
        "count",
    }
)
# Those of them that only read the shard.
READS = frozenset({"owners", "scroll", "query", "count"})


def prepare(
    call: str, args: tuple[Any, ...], between: Callable[[], None] | None = None
) -> Callable[[EdgeEngine], Any]:
    """Engine call `call(*args)` (one of CALLS, else ValueError), as a
    function of the engine, with what does not touch the shard done now: an
    upsert's points are built here (`upsert_operation`, calling `between`
    between slices), so the child can answer reads meanwhile and the shared
    host can build them before it takes its lock."""
    if call not in CALLS:
        raise ValueError(f"no engine call {call!r}")
    if call == "upsert":
        points, guard = args
        op = upsert_operation(points, guard, between)
        return lambda engine: engine.write(op)
    return lambda engine: getattr(engine, call)(*args)


def _vectors(vector: list[float], words: tuple[tuple[int, ...], tuple[float, ...]] | None) -> Any:
    if words is None:
        return {"": vector}
    return {"": vector, rk.KEYWORDS: qe.SparseVector(list(words[0]), list(words[1]))}


def _keyworded(r: qe.Record) -> qe.Point:
    """A point read from a shard without keyword vectors, with its own."""
    payload = r.payload or {}
    words = rk.document_keywords(str(payload.get(p.CONTENT, "")))
    vector = p.dense_vector(r.vector)
    assert vector is not None
    return qe.Point(
        r.id, _vectors(vector, None if words is None else (words.indices, words.values)), payload
    )


def _request(flt: qe.Filter, plan: rk.Plan[Cond]) -> qe.QueryRequest:
    """The engine's query for `plan`, every stage confined to `flt`."""
    query, prefetches, params, threshold = _stage(flt, plan)
    return qe.QueryRequest(
        limit=plan.limit,
        query=query,
        prefetches=prefetches,
        filter=flt,
        params=params,
        score_threshold=threshold,
        with_payload=_HIT_PAYLOAD,
        with_vector=False,
    )


# A query's hits become records without their revision history (a search
# never shows it) nor the filter-only copy of the metadata's booleans: the
# engine leaves both out, so they are neither converted to Python nor
# pickled back to the server (a memory updated many times carries a long
# history).
_HIT_PAYLOAD = qe.PayloadSelector.Exclude([p.REVISIONS, p.METADATA_BOOLS])


def _prefetch(flt: qe.Filter, plan: rk.Plan[Cond]) -> qe.Prefetch:
    query, prefetches, params, threshold = _stage(flt, plan)
    return qe.Prefetch(
        limit=plan.limit,
        query=query,
        prefetches=prefetches,
        params=params,
        filter=flt,
        score_threshold=threshold,
    )


def _stage(
    flt: qe.Filter, plan: rk.Plan[Cond]
) -> tuple[Any, list[qe.Prefetch] | None, qe.SearchParams | None, float | None]:
    """(query, prefetches, params, score threshold) of one stage."""
    match plan:
        case rk.Nearest(vector=vector, threshold=threshold, pool=pool):
            pooled = [_prefetch(flt, stage) for stage in pool] or None
            return qe.Query.Nearest(list(vector)), pooled, None, threshold
        case rk.Keyword(words=words, corpus=corpus):
            sparse = qe.SparseVector(list(words.indices), list(words.values))
            params = qe.SearchParams(idf=qe.IdfParams(corpus=to_filter(corpus)))
            return qe.Query.Nearest(sparse, using=rk.KEYWORDS), None, params, None
        case rk.Fuse(legs=legs, fusion="sum", weights=weights, saturation=saturation):
            return _summed(weights, saturation), [_prefetch(flt, leg) for leg in legs], None, None
        case rk.Fuse(legs=legs, fusion=fusion, rrf_k=k, weights=weights):
            fused = (
                qe.Fusion.Rrf(k=k, weights=list(weights)) if fusion == "rrf" else qe.Fusion.Dbsf()
            )
            return fused, [_prefetch(flt, leg) for leg in legs], None, None
        case rk.Decay(inner=inner, now_us=now_us, half_life_us=half_life_us, field=field):
            x = qe.Expression
            decay = x.Decay(
                qe.DecayKind.Exp,
                x.Variable(field),
                target=x.Constant(float(now_us)),
                scale=half_life_us,
                midpoint=0.5,
            )
            formula = qe.Formula(x.Mult([x.Variable("$score"), decay]))
            return formula, [_prefetch(flt, inner)], None, None
        case rk.Diverse(inner=inner, vector=vector, diversity=diversity, candidates=candidates):
            # the engine's lambda weighs relevance: 1 - diversity
            mmr = qe.Mmr(list(vector), 1.0 - diversity, candidates)
            return mmr, [_prefetch(flt, inner)], None, None
    raise ValueError(f"unknown plan stage {plan!r}")


def _summed(weights: tuple[float, ...], saturation: float) -> qe.Formula:
    """w0 * (semantic score) + w1 * bm25 / (bm25 + saturation), a point
    missing from a leg scoring 0 there."""
    x = qe.Expression
    semantic, words = x.Variable("$score[0]"), x.Variable("$score[1]")
    saturated = x.Div(words, x.Sum([words, x.Constant(saturation)]), 0.0)
    return qe.Formula(
        x.Sum(
            [
                x.Mult([x.Constant(weights[0]), semantic]),
                x.Mult([x.Constant(weights[1]), saturated]),
            ]
        ),
        defaults={"$score[0]": 0.0, "$score[1]": 0.0},
    )


def _created(shard_dir: Path, config: qe.EdgeConfig) -> qe.EdgeShard:
    """A new shard in `shard_dir` with the payload indexes."""
    shard = qe.EdgeShard.create(str(shard_dir), config)
    try:
        _ensure_indexes(shard)
    except BaseException:
        shard.close()
        raise
    return shard


def _has_keywords(shard_dir: Path) -> bool:
    """Whether the shard in `shard_dir` was made with keyword vectors."""
    config = json.loads((shard_dir / EDGE_CONFIG).read_text())
    return rk.KEYWORDS in (config.get("sparse_vectors") or {})


def _recover_swap(path: Path) -> None:
    """Finishes or undoes an upgrade's directory swap cut short: a stray
    new copy is dropped (the next upgrade makes it again); an old shard
    left beside the new one is dropped; one left alone is put back."""
    old, current, new = path / OLD_SHARD, path / SHARD, path / NEXT_SHARD
    if old.exists():
        if current.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, current)
            _fsync_dir(path)
    if new.exists() and current.exists():
        shutil.rmtree(new)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(lock_file: IO[str]) -> bool:
    """Takes the directory's lock; False when another process holds it.

    Waits LOCK_WAIT_S for it first: the engine process of a server killed
    with SIGKILL is killed by the kernel right after, and lets go of the
    lock only once it has died, maybe after its successor started."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _ensure_indexes(shard: qe.EdgeShard) -> None:
    """Creates the payload indexes of `layout.INDEXES` the shard lacks."""
    have = shard.info().payload_schema
    for key, kind in p.INDEXES.items():
        if key not in have:
            shard.update(qe.UpdateOperation.create_field_index(key, _index_params(kind)))


def _stale_indexes(shard: qe.EdgeShard) -> list[str]:
    """The payload indexes made before they were kept in files (`Cold`):
    a sealed segment would hold them in memory, rebuilt at every open.
    Recreating one rebuilds it over every point (~14 s at 1M)."""
    have = shard.info().payload_schema
    return [
        key
        for key in p.INDEXES
        if key in have and getattr(have[key].params, "memory", None) != qe.Memory.Cold
    ]


def _index_params(kind: p.IndexKind) -> qe.PayloadSchemaParams:
    # Cold: in a sealed segment the index is a mapped file, opened in no
    # time; the appendable segment keeps its indexes in memory either way.
    cold = qe.Memory.Cold
    match kind:
        case p.IndexKind.TENANT:
            return qe.KeywordIndexParams(is_tenant=True, memory=cold)
        case p.IndexKind.KEYWORD:
            return qe.KeywordIndexParams(enable_hnsw=False, memory=cold)
        case p.IndexKind.INTEGER:
            return qe.IntegerIndexParams(lookup=False, range=True, enable_hnsw=False, memory=cold)


def closed() -> Unavailable:
    return Unavailable(
        "the vector store is not open (the server is starting or shutting down); retry",
        reason="VECTOR_STORE_CLOSED",
    )


@dataclass(frozen=True)
class Compacted:
    """What `compact_store` did."""

    points: int
    segments_before: int
    segments_after: int
    indexes_rebuilt: int
    seconds: float


def marked_model(path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """The (model id, dimension) the store in `path` was made for; None
    when there is no store there."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    made = json.loads(marker.read_text())
    return str(made["model_id"]), int(made["dimension"])


def compact_store(
    path: str | os.PathLike[str], *, min_free_bytes: int = 0, say: Callable[[str], None]
) -> Compacted | None:
    """Compacts the store in `path` while no server has it open: seals its
    appendable segment (every point written since the last compaction) into
    an immutable segment whose payload indexes are mapped files, so the
    next open maps them instead of rebuilding them (1M memories on a 2-core
    machine: the shard opens in ~1.5 s instead of ~9 s) and holds about
    half the memory. Costs ~200 µs a point sealed and room for a copy of
    the shard. None when there is no store in `path`.

    Safe to stop at any point: the engine writes a sealed segment beside
    the one it replaces and swaps them at the end, so a compaction cut
    short leaves the shard as it was (and the next one starts over).
    Raises FailedPrecondition while a server has the store open."""
    identity = marked_model(path)
    if identity is None:
        return None
    engine = EdgeEngine(path, sealing=True, optimize_on_close=False, min_free_bytes=min_free_bytes)
    engine.open(*identity)
    try:
        return engine.compact(say)
    finally:
        engine.close(optimize=False)
