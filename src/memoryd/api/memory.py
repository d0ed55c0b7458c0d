"""MemoryService servicer, and the memory protobuf ⇄ domain conversions."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format

from memoryd.api import convert
from memoryd.api.call import current_call, current_caller
from memoryd.api.conversations import add_messages
from memoryd.api.erasure import describe_erasure
from memoryd.api.errors import MAX_STOPPED_IMPORT_ERRORS, status_proto
from memoryd.api.idempotent import Idempotent
from memoryd.api.operations import Describe, operation_pb
from memoryd.api.steps import OFFLOAD_DECODE_BYTES
from memoryd.domain.changes import DOCUMENT_EVENTS, EventType
from memoryd.domain.conversations.service import ConversationService
from memoryd.domain.erasure import ErasureService
from memoryd.domain.errors import DomainError, InvalidArgument, Unimplemented, Violations
from memoryd.domain.idempotency import Idempotency, IdempotencyKey
from memoryd.domain.memories import (
    MAX_FILTER_DEPTH,
    MemoryService,
    MemoryUpdate,
    NewMemory,
    raise_filter_violations,
)
from memoryd.domain.memory import (
    Condition,
    Filter,
    Match,
    MatchAny,
    MemoryRecord,
    NumberRange,
    Origin,
    Revision,
    SearchMode,
    TimeRange,
    Validity,
)
from memoryd.domain.watch import Delivered, WatchRequest, WatchService
from memoryd.v1 import memory_pb2, memory_pb2_grpc

if TYPE_CHECKING:
    from memoryd.api.exports import ExportEndpoints


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(
        self,
        memories: MemoryService,
        idempotency: Idempotency,
        conversations: ConversationService | None = None,
        describe: Describe | None = None,
        watch: WatchService | None = None,
        exports: ExportEndpoints | None = None,
        erasure: ErasureService | None = None,
    ) -> None:
        """`conversations` and `describe` serve AddMessages, `watch`
        WatchMemories, `exports` the export jobs, `erasure` EraseEndUser
        (UNIMPLEMENTED without them)."""
        self._m = memories
        self._once = Idempotent(idempotency)
        self._conversations = conversations
        self._describe = describe
        self._watch = watch
        self._exports = exports
        self._erasure = erasure
        self._events = _EventCache()

    async def AddMessages(
        self, request: memory_pb2.AddMessagesRequest, context: Any
    ) -> operations_pb2.Operation:
        if self._conversations is None or self._describe is None:
            return await super().AddMessages(request, context)
        op = await self._conversations.add_messages(current_caller(), add_messages(request))
        return await operation_pb(op, self._describe)

    async def CreateExport(
        self, request: memory_pb2.CreateExportRequest, context: Any
    ) -> operations_pb2.Operation:
        return await self._export_jobs().create(request)

    async def ListExports(
        self, request: memory_pb2.ListExportsRequest, context: Any
    ) -> memory_pb2.ListExportsResponse:
        return await self._export_jobs().list(request)

    async def ReadExport(
        self, request: memory_pb2.ReadExportRequest, context: Any
    ) -> AsyncIterator[memory_pb2.ReadExportResponse]:
        async for piece in self._export_jobs().read(request):
            yield piece

    def _export_jobs(self) -> ExportEndpoints:
        if self._exports is None:
            raise Unimplemented("export jobs are not served by this server")
        return self._exports

    async def EraseEndUser(
        self, request: memory_pb2.EraseEndUserRequest, context: Any
    ) -> operations_pb2.Operation:
        if self._erasure is None:
            return await super().EraseEndUser(request, context)
        op = await self._erasure.erase(
            current_caller(),
            request.end_user_id,
            request.project_id,
            request.environment_id,
            request.request_id,
        )
        return await operation_pb(op, describe_erasure)

    async def CreateMemory(
        self, request: memory_pb2.CreateMemoryRequest, context: Any
    ) -> memory_pb2.CreateMemoryResponse:
        item = new_memory(request, "")

        async def create(key: IdempotencyKey | None) -> memory_pb2.CreateMemoryResponse:
            # with a request id, the memory's id comes from it: a re-run after
            # a crash overwrites instead of duplicating
            one = replace(item, id=key.memory_id(0)) if key else item
            created = await self._m.create(current_caller(), one)
            return memory_pb2.CreateMemoryResponse(
                memory=memory(created.record), deduplicated=created.deduplicated
            )

        return await self._once.run(request, context, memory_pb2.CreateMemoryResponse, create)

    async def BatchCreateMemories(
        self, request: memory_pb2.BatchCreateMemoriesRequest, context: Any
    ) -> memory_pb2.BatchCreateMemoriesResponse:
        if current_call().request_bytes > OFFLOAD_DECODE_BYTES:
            # converting megabytes of metadata is slow Python: not on the loop
            items, failures = await asyncio.to_thread(_batch_items, request)
        else:
            items, failures = _batch_items(request)
        # The batch's request_id counts; an item's own `requests[i].request_id`
        # is ignored (beyond being part of the request's fingerprint).
        return await self._once.run(
            request,
            context,
            memory_pb2.BatchCreateMemoriesResponse,
            lambda key: self._batch_create(_with_ids(items, key), failures),
        )

    async def _batch_create(
        self, items: list[NewMemory], failures: dict[int, DomainError]
    ) -> memory_pb2.BatchCreateMemoriesResponse:
        """One result per item; a batch with failed items is still a
        successful response (and stored as one under its request_id)."""
        results = await self._m.batch_create(current_caller(), items)
        out = memory_pb2.BatchCreateMemoriesResponse()
        for i, result in enumerate(results):
            entry = out.results.add(index=i)
            outcome = failures.get(i, result)
            if isinstance(outcome, DomainError):
                entry.error.CopyFrom(status_proto(outcome))
                out.failed_count += 1
            else:
                entry.memory.CopyFrom(memory(outcome.record))
                entry.deduplicated = outcome.deduplicated
                out.succeeded_count += 1
        return out

    async def GetMemory(
        self, request: memory_pb2.GetMemoryRequest, context: Any
    ) -> memory_pb2.Memory:
        record = await self._m.get(current_caller(), request.id, request.include_embedding)
        return memory(record, with_vector=request.include_embedding)

    async def UpdateMemory(
        self, request: memory_pb2.UpdateMemoryRequest, context: Any
    ) -> memory_pb2.Memory:
        updated = await self._m.update(current_caller(), request.memory.id, memory_update(request))
        return memory(updated)

    async def DeleteMemory(
        self, request: memory_pb2.DeleteMemoryRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._m.delete(current_caller(), request.id)
        return empty_pb2.Empty()

    async def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: Any
    ) -> memory_pb2.ListMemoriesResponse:
        page = await self._m.list_memories(
            current_caller(),
            to_filter(request.filter),
            request.page_size,
            request.page_token,
            validity=validity(request),
        )
        return memory_pb2.ListMemoriesResponse(
            memories=[memory(r) for r in page.records], next_page_token=page.next_page_token
        )

    async def SearchMemories(
        self, request: memory_pb2.SearchMemoriesRequest, context: Any
    ) -> memory_pb2.SearchMemoriesResponse:
        call = current_call()
        hits = await self._m.search(
            call.caller(),
            query=request.query,
            vector=list(request.query_embedding),
            flt=to_filter(request.filter),
            top_k=request.top_k,
            min_score=request.min_score,
            cross_project=call.allow_cross_project,
            validity=validity(request),
            mode=search_mode(request.mode),
            recency_half_life=convert.from_duration(request.recency_half_life, "recency_half_life")
            if request.HasField("recency_half_life")
            else None,
            diversity=request.diversity,
        )
        # Results added in place: a list of SearchResults given to the
        # constructor is copied once more (5 results: ~100 → ~80 µs of CPU).
        response = memory_pb2.SearchMemoriesResponse()
        for h in hits:
            response.results.add(
                memory=memory(h.record), score=h.score, project_id=h.record.tenant.project_id
            )
        return response

    async def PurgeMemories(
        self, request: memory_pb2.PurgeMemoriesRequest, context: Any
    ) -> memory_pb2.PurgeMemoriesResponse:
        count = await self._m.purge(
            current_caller(),
            to_filter(request.filter),
            dry_run=request.dry_run,
            everything=request.all,
        )
        return memory_pb2.PurgeMemoriesResponse(purged_count=count, dry_run=request.dry_run)

    async def ListMemoryRevisions(
        self, request: memory_pb2.ListMemoryRevisionsRequest, context: Any
    ) -> memory_pb2.ListMemoryRevisionsResponse:
        revisions, token = await self._m.revisions(
            current_caller(), request.id, request.page_size, request.page_token
        )
        return memory_pb2.ListMemoryRevisionsResponse(
            revisions=[revision(request.id, r) for r in revisions], next_page_token=token
        )

    async def ExportMemories(
        self, request: memory_pb2.ExportMemoriesRequest, context: Any
    ) -> AsyncIterator[memory_pb2.Memory]:
        async for record in self._m.export(
            current_caller(), to_filter(request.filter), request.include_embeddings
        ):
            yield memory(record, with_vector=request.include_embeddings)

    async def WatchMemories(
        self, request: memory_pb2.WatchMemoriesRequest, context: Any
    ) -> AsyncIterator[memory_pb2.MemoryEvent]:
        if self._watch is None:
            raise Unimplemented("WatchMemories is not served by this server")
        async for delivered in self._watch.watch(current_caller(), watch_request(request)):
            yield self._events.of(delivered)

    async def ImportMemories(
        self, request_iterator: AsyncIterator[memory_pb2.ImportMemoriesRequest], context: Any
    ) -> memory_pb2.ImportMemoriesResponse:
        # The pipeline's reader raises a DomainError to stop the stream (a
        # refused charge, a bad or oversize message, an idle stream): what
        # was read before it is still stored, and the call then fails with
        # that error and the summary of what was stored in its details.
        stopped: list[DomainError] = []

        async def items() -> AsyncIterator[NewMemory | DomainError]:
            messages = aiter(request_iterator)
            while True:
                try:
                    req = await anext(messages)
                except StopAsyncIteration:
                    return
                except DomainError as err:
                    stopped.append(err)
                    return
                try:
                    yield new_memory(memory_pb2.CreateMemoryRequest(memory=req.memory), "")
                except DomainError as err:
                    yield err

        summary = await self._m.import_stream(current_caller(), items())
        response = memory_pb2.ImportMemoriesResponse(
            imported_count=summary.imported,
            failed_count=summary.failed,
            errors=[
                memory_pb2.ImportError(index=i, error=status_proto(err))
                for i, err in summary.errors
            ],
        )
        if stopped:
            raise _stopped_import(stopped[0], response)
        return response


class _EventCache:
    """The newest MemoryEvent messages by resume token, which names one
    event for one environment: each is built once for every watcher of
    that environment (they are never changed once built)."""

    SIZE = 4096

    def __init__(self) -> None:
        self._built: OrderedDict[str, memory_pb2.MemoryEvent] = OrderedDict()

    def of(self, delivered: Delivered) -> memory_pb2.MemoryEvent:
        message = self._built.get(delivered.resume_token)
        if message is None:
            message = memory_event(delivered)
            self._built[delivered.resume_token] = message
            if len(self._built) > self.SIZE:
                self._built.popitem(last=False)
        return message


def _stopped_import(err: DomainError, summary: memory_pb2.ImportMemoriesResponse) -> DomainError:
    """`err`, saying where the import stopped, with a compact summary (counts,
    and the first failures by code and reason only, to fit in trailers) as a
    status detail of the call."""
    read = summary.imported_count + summary.failed_count
    err.message = (
        f"{err.message} (the import stopped at item {read}: {summary.imported_count} "
        f"imported and {summary.failed_count} failed before it; resume from item {read})"
    )
    compact = memory_pb2.ImportMemoriesResponse(
        imported_count=summary.imported_count, failed_count=summary.failed_count
    )
    for failure in summary.errors[:MAX_STOPPED_IMPORT_ERRORS]:
        entry = compact.errors.add(index=failure.index)
        entry.error.code = failure.error.code
        entry.error.details.extend(failure.error.details[:1])  # the ErrorInfo: its reason
    current_call().error_details.append(compact)
    return err


def _with_ids(items: list[NewMemory], key: IdempotencyKey | None) -> list[NewMemory]:
    """The items of a batch with a request id get ids derived from it (see
    `IdempotencyKey.memory_id`)."""
    if key is None:
        return items
    return [replace(item, id=key.memory_id(i)) for i, item in enumerate(items)]


def _batch_items(
    request: memory_pb2.BatchCreateMemoriesRequest,
) -> tuple[list[NewMemory], dict[int, DomainError]]:
    """The batch's items, and the conversion error of each item that has one.
    A request item that does not even convert stays in place (so indexes
    line up) as a blank item, and its conversion error is reported."""
    items: list[NewMemory] = []
    failures: dict[int, DomainError] = {}
    for i, item in enumerate(request.requests):
        try:
            items.append(new_memory(item, f"requests[{i}]."))
        except DomainError as err:
            failures[i] = err
            items.append(NewMemory(content=""))
    return items, failures


# --- conversions ------------------------------------------------------------------------


def _normalize(value: Any) -> Any:
    """Struct numbers are doubles: integral ones become ints, so that
    `equals: 3` matches a stored 3."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _metadata(m: memory_pb2.Memory, prefix: str) -> dict[str, Any]:
    """The memory's metadata as JSON values; InvalidArgument for a number
    JSON cannot hold."""
    v = Violations()
    metadata: dict[str, Any] = {}
    if m.HasField("metadata"):
        try:
            metadata = _normalize(json_format.MessageToDict(m.metadata))
        except ValueError:  # NaN or infinity: JSON has no such numbers
            v.add(f"{prefix}memory.metadata", "numbers must be finite (no NaN or infinity)")
    v.raise_if_any()
    return metadata


def new_memory(req: memory_pb2.CreateMemoryRequest, prefix: str) -> NewMemory:
    m = req.memory
    metadata = _metadata(m, prefix)
    return NewMemory(
        content=m.content,
        metadata=metadata,
        agent_id=m.agent_id,
        thread_id=m.thread_id,
        source=m.source,
        tags=tuple(m.tags),
        embedding=tuple(m.embedding),
        expire_time=convert.opt_ts(m, "expire_time", f"{prefix}memory.expire_time"),
        ttl=convert.from_duration(req.ttl, f"{prefix}ttl") if req.HasField("ttl") else None,
        dedupe=req.dedupe,
        dedupe_threshold=req.dedupe_threshold,
        valid_time=convert.opt_ts(m, "valid_time", f"{prefix}memory.valid_time"),
        invalid_time=convert.opt_ts(m, "invalid_time", f"{prefix}memory.invalid_time"),
    )


def memory_update(req: memory_pb2.UpdateMemoryRequest) -> MemoryUpdate:
    """The fields of the request's mask with the request's values (the
    domain refuses paths it cannot update)."""
    m = req.memory
    return MemoryUpdate(
        paths=tuple(req.update_mask.paths),
        content=m.content,
        metadata=_metadata(m, ""),
        agent_id=m.agent_id,
        thread_id=m.thread_id,
        source=m.source,
        tags=tuple(m.tags),
        embedding=tuple(m.embedding),
        expire_time=convert.opt_ts(m, "expire_time", "memory.expire_time"),
        valid_time=convert.opt_ts(m, "valid_time", "memory.valid_time"),
        invalid_time=convert.opt_ts(m, "invalid_time", "memory.invalid_time"),
    )


_MODES: dict[int, SearchMode | None] = {
    memory_pb2.SEARCH_MODE_UNSPECIFIED: None,
    memory_pb2.SEMANTIC: SearchMode.SEMANTIC,
    memory_pb2.KEYWORD: SearchMode.KEYWORD,
    memory_pb2.HYBRID: SearchMode.HYBRID,
}


def search_mode(value: int) -> SearchMode | None:
    """The mode of a request (None: the default); InvalidArgument for a
    value this server does not know."""
    if value not in _MODES:
        raise InvalidArgument.field("mode", f"unknown search mode {value}")
    return _MODES[value]


def validity(
    req: memory_pb2.ListMemoriesRequest | memory_pb2.SearchMemoriesRequest,
) -> Validity:
    """Which memories a List or Search sees by their time of truth."""
    return Validity(
        include_invalidated=req.include_invalidated,
        as_of=convert.opt_ts(req, "as_of", "as_of"),
    )


_EVENT_TYPES = {
    memory_pb2.MemoryEvent.CREATED: EventType.CREATED,
    memory_pb2.MemoryEvent.UPDATED: EventType.UPDATED,
    memory_pb2.MemoryEvent.SUPERSEDED: EventType.SUPERSEDED,
    memory_pb2.MemoryEvent.DELETED: EventType.DELETED,
    memory_pb2.MemoryEvent.EXPIRED: EventType.EXPIRED,
    memory_pb2.MemoryEvent.PURGED: EventType.PURGED,
    memory_pb2.MemoryEvent.DOCUMENT_READY: EventType.DOCUMENT_READY,
    memory_pb2.MemoryEvent.DOCUMENT_FAILED: EventType.DOCUMENT_FAILED,
    memory_pb2.MemoryEvent.DOCUMENT_DELETED: EventType.DOCUMENT_DELETED,
}
_EVENT_TYPES_PB = {v: k for k, v in _EVENT_TYPES.items()}


def watch_request(req: memory_pb2.WatchMemoriesRequest) -> WatchRequest:
    v = Violations()
    types: set[EventType] = set()
    for i, value in enumerate(req.event_types):
        kind = _EVENT_TYPES.get(value)
        if kind is None:
            v.add(
                f"event_types[{i}]",
                "must be CREATED, UPDATED, SUPERSEDED, DELETED, EXPIRED, PURGED, "
                "DOCUMENT_READY, DOCUMENT_FAILED or DOCUMENT_DELETED",
            )
        else:
            types.add(kind)
    v.raise_if_any()
    return WatchRequest(
        filter=to_filter(req.filter),
        types=frozenset(types),
        resume_token=req.resume_token,
        start_time=convert.opt_ts(req, "start_time", "start_time"),
    )


def memory_event(d: Delivered) -> memory_pb2.MemoryEvent:
    e = d.event
    if e.type in DOCUMENT_EVENTS:
        x = e.details
        return memory_pb2.MemoryEvent(
            type=_EVENT_TYPES_PB[e.type],
            time=convert.ts(e.time),
            operation_id=f"operations/{e.operation_id}" if e.operation_id else "",
            request_id=e.request_id,
            resume_token=d.resume_token,
            document=memory_pb2.DocumentChange(
                document=str(x.get("document", "")),
                document_id=str(x.get("document_id", "")),
                display_name=str(x.get("display_name", "")),
                folder=str(x.get("folder", "")),
                state=str(x.get("state", "")),
                chunk_count=int(x.get("chunk_count", 0)),
                error=str(x.get("error", "")),
            ),
        )
    return memory_pb2.MemoryEvent(
        type=_EVENT_TYPES_PB[e.type],
        memory=memory(d.memory) if d.memory is not None else None,
        memory_id=e.memory_id,
        time=convert.ts(e.time),
        operation_id=f"operations/{e.operation_id}" if e.operation_id else "",
        request_id=e.request_id,
        resume_token=d.resume_token,
    )


def memory(r: MemoryRecord, *, with_vector: bool = False) -> memory_pb2.Memory:
    out = memory_pb2.Memory(
        id=r.id,
        content=r.content,
        agent_id=r.agent_id,
        thread_id=r.thread_id,
        source=r.source,
        tags=list(r.tags),
        end_user_id=r.tenant.end_user_id,
        project_id=r.tenant.project_id,
        environment_id=r.tenant.environment_id,
        create_time=convert.ts(r.create_time),
        update_time=convert.ts(r.update_time),
        expire_time=convert.ts(r.expire_time),
        revision=r.revision,
        valid_time=convert.ts(r.valid_time or r.create_time),
        invalid_time=convert.ts(r.invalid_time),
        superseded_by=r.superseded_by,
    )
    if r.metadata:
        out.metadata.update(dict(r.metadata))
    if with_vector and r.vector is not None:
        out.embedding.extend(r.vector)
    if r.origin != _NO_ORIGIN:
        out.origin.CopyFrom(origin(r.origin))
    return out


# Compared with, not built, per converted memory (a frozen dataclass costs
# more to build than to compare).
_NO_ORIGIN = Origin()


def origin(o: Origin) -> memory_pb2.MemoryOrigin:
    return memory_pb2.MemoryOrigin(
        operation=f"operations/{o.operation_id}" if o.operation_id else "",
        message_indexes=list(o.message_indexes),
        thread_id=o.thread_id,
        extractor=o.extractor,
        extractor_version=o.extractor_version,
        prompt_versions=list(o.prompt_versions),
        writer_key_id=o.writer_key_id,
    )


def revision(memory_id: str, r: Revision) -> memory_pb2.MemoryRevision:
    out = memory_pb2.MemoryRevision(
        memory_id=memory_id,
        revision=r.revision,
        content=r.content,
        tags=list(r.tags),
        agent_id=r.agent_id,
        thread_id=r.thread_id,
        source=r.source,
        update_time=convert.ts(r.update_time),
        replace_time=convert.ts(r.replace_time),
    )
    if r.metadata:
        out.metadata.update(dict(r.metadata))
    return out


def to_filter(msg: memory_pb2.MemoryFilter, name: str = "filter") -> Filter:
    """Proto filter → domain filter. Refuses (InvalidArgument) only what has
    no domain form (a condition without a test, a value of the wrong kind, a
    bad timestamp); the filter rule itself (fields, depth, counts) is the
    domain's `validate_filter`, which every MemoryService method applies."""
    v = Violations()
    flt = _filter(msg, name, v, 1)
    raise_filter_violations(v)
    return flt


def _filter(msg: memory_pb2.MemoryFilter, name: str, v: Violations, depth: int) -> Filter:
    if depth > MAX_FILTER_DEPTH:
        # Past the domain's limit converting is wasted work: an empty filter
        # at this level is enough for `validate_filter` to refuse the depth.
        return Filter()
    groups: dict[str, tuple[Condition, ...]] = {}
    for group in ("must", "should", "must_not"):
        conds: list[Condition] = []
        for i, c in enumerate(getattr(msg, group)):
            cond = _condition(c, f"{name}.{group}[{i}]", v, depth)
            if cond is not None:
                conds.append(cond)
        groups[group] = tuple(conds)
    return Filter(**groups)


def _condition(c: memory_pb2.Condition, name: str, v: Violations, depth: int) -> Condition | None:
    which = c.WhichOneof("test")
    if which is None:
        v.add(name, "needs a test: equals, any_of, range, time_range or filter")
        return None
    if which == "filter":
        return _filter(c.filter, f"{name}.filter", v, depth + 1)
    if not c.field:
        v.add(f"{name}.field", "is required")
        return None
    if which == "equals":
        kind = c.equals.WhichOneof("kind")
        if kind not in ("string_value", "number_value", "bool_value"):
            v.add(f"{name}.equals", "must be a string, number or bool")
            return None
        value = _normalize(getattr(c.equals, kind))
        return Match(c.field, value)
    if which == "any_of":
        values: list[str | int] = []
        for item in c.any_of.values:
            kind = item.WhichOneof("kind")
            raw = _normalize(getattr(item, kind)) if kind else None
            if isinstance(raw, str) or (isinstance(raw, int) and not isinstance(raw, bool)):
                values.append(raw)
            else:
                v.add(f"{name}.any_of", "values must be strings or whole numbers")
                return None
        return MatchAny(c.field, tuple(values))
    if which == "range":
        r = c.range
        return NumberRange(
            c.field,
            gt=r.gt if r.HasField("gt") else None,
            gte=r.gte if r.HasField("gte") else None,
            lt=r.lt if r.HasField("lt") else None,
            lte=r.lte if r.HasField("lte") else None,
        )
    t = c.time_range
    try:
        return TimeRange(
            c.field,
            start=convert.opt_ts(t, "start_time", f"{name}.time_range.start_time"),
            end=convert.opt_ts(t, "end_time", f"{name}.time_range.end_time"),
        )
    except InvalidArgument as err:
        for violation in err.violations:
            v.add(violation.field, violation.description)
        return None
