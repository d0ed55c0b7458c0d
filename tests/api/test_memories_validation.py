"""Bad input to MemoryService: INVALID_ARGUMENT with a `google.rpc.BadRequest`
field violation naming the bad field, and nothing written. Never INTERNAL.

One server for the module: no case here may change anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.rpc import code_pb2
from grpc import aio
from helpers.errors import status_of, violations
from helpers.servers import Client, fast_hasher

from memoryd.app import build_app
from memoryd.config import Settings
from memoryd.v1 import admin_pb2, memory_pb2
from memoryd.v1.memory_pb2 import HYBRID, KEYWORD

pytestmark = pytest.mark.asyncio(loop_scope="module")

DIM = 64
NAN, INF = float("nan"), float("inf")


@dataclass
class Target:
    client: Client
    memory_id: str
    count: int


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path_factory.mktemp("validation")),
        embedding_provider="hashing",
        embedding_dimension=DIM,
        grace_period_s=0.5,
        log_level="WARNING",
        key_requests_per_second=1e6,
        key_burst=1_000_000,
        project_requests_per_second=1e6,
        project_burst=1_000_000,
    )
    app = await build_app(settings, hasher=fast_hasher())
    await app.start()
    assert app.bootstrapped is not None
    channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
    owner = Client(channel, app.bootstrapped.plaintext)
    project = await owner.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="validation")),
        metadata=owner.md(),
    )
    from memoryd.v1 import keys_pb2

    key = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            name="all memory",
            project_id=project.id,
            environment_id=project.environments[0].id,
            scopes=["memory:*"],
        ),
        metadata=owner.md(),
    )
    client = owner.with_key(key.secret)
    made = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(content="the one memory", tags=["t"])
        ),
        metadata=client.md(),
    )
    yield Target(client, made.memory.id, 1)
    await channel.close()
    await app.stop(0)


# --- request builders -------------------------------------------------------------------------


def vec(n: int = DIM, **at: float) -> list[float]:
    out = [0.1] * n
    for i, v in at.items():
        out[int(i[1:])] = v
    return out


def meta(d: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(d)
    return out


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def eq(field: str, x: Any) -> memory_pb2.Condition:
    return memory_pb2.Condition(field=field, equals=json_format.ParseDict(x, struct_pb2.Value()))


def where(*must: memory_pb2.Condition, **groups: Any) -> memory_pb2.MemoryFilter:
    return memory_pb2.MemoryFilter(must=list(must), **groups)


def nested(depth: int) -> memory_pb2.MemoryFilter:
    flt = where(eq("tags", "t"))
    for _ in range(depth):
        flt = where(memory_pb2.Condition(filter=flt))
    return flt


Call = Callable[[Client, str], Any]


def create(**fields: Any) -> Call:
    request = fields.pop("request", {})
    return lambda c, mid: c.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(**fields), **request),
        metadata=c.md(),
    )


def update(paths: list[str], **fields: Any) -> Call:
    def call(c: Client, mid: str) -> Any:
        fields.setdefault("id", mid)
        req = memory_pb2.UpdateMemoryRequest(memory=memory_pb2.Memory(**fields))
        req.update_mask.paths.extend(paths)
        return c.memory.UpdateMemory(req, metadata=c.md())

    return call


def list_(**request: Any) -> Call:
    return lambda c, mid: c.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(**request), metadata=c.md()
    )


def search(**request: Any) -> Call:
    return lambda c, mid: c.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(**request), metadata=c.md()
    )


def purge(**request: Any) -> Call:
    return lambda c, mid: c.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(**request), metadata=c.md()
    )


def batch(n: int) -> Call:
    return lambda c, mid: c.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="x"))] * n
        ),
        metadata=c.md(),
    )


def export(**request: Any) -> Call:
    async def call(c: Client, mid: str) -> Any:
        stream = c.memory.ExportMemories(
            memory_pb2.ExportMemoriesRequest(**request), metadata=c.md()
        )
        return [m async for m in stream]

    return call


def by_id(method: str, **request: Any) -> Call:
    requests = {
        "GetMemory": memory_pb2.GetMemoryRequest,
        "ListMemoryRevisions": memory_pb2.ListMemoryRevisionsRequest,
        "DeleteMemory": memory_pb2.DeleteMemoryRequest,
    }

    def call(c: Client, mid: str) -> Any:
        request.setdefault("id", mid)
        return getattr(c.memory, method)(requests[method](**request), metadata=c.md())

    return call


BAD_FIELDS = ["org_id", "tenant", "project_id", "environment_id", "id", "content", "metadata", ""]

CASES: list[tuple[str, Call, str]] = [
    # CreateMemory
    ("create-empty-content", create(content=""), "memory.content"),
    ("create-blank-content", create(content=" \n\t "), "memory.content"),
    ("create-embedding-dimension", create(content="x", embedding=vec(3)), "memory.embedding"),
    ("create-embedding-too-long", create(content="x", embedding=vec(DIM + 1)), "memory.embedding"),
    ("create-embedding-nan", create(content="x", embedding=vec(i5=NAN)), "memory.embedding"),
    ("create-embedding-inf", create(content="x", embedding=vec(i0=INF)), "memory.embedding"),
    ("create-embedding-minus-inf", create(content="x", embedding=vec(i9=-INF)), "memory.embedding"),
    ("create-embedding-zeros", create(content="x", embedding=[0.0] * DIM), "memory.embedding"),
    ("create-metadata-nan", create(content="x", metadata=meta({"a": NAN})), "memory.metadata"),
    (
        "create-metadata-nested-inf",
        create(content="x", metadata=meta({"a": {"b": [1, INF]}})),
        "memory.metadata",
    ),
    (
        "create-metadata-dotted-key",
        create(content="x", metadata=meta({"a.b": 1})),
        "memory.metadata.a.b",
    ),
    ("create-metadata-empty-key", create(content="x", metadata=meta({"": 1})), "memory.metadata."),
    ("create-empty-tag", create(content="x", tags=["ok", ""]), "memory.tags[1]"),
    ("create-long-tag", create(content="x", tags=["t" * 129]), "memory.tags[0]"),
    ("create-too-many-tags", create(content="x", tags=[f"t{i}" for i in range(65)]), "memory.tags"),
    ("create-long-agent-id", create(content="x", agent_id="a" * 257), "memory.agent_id"),
    ("create-long-thread-id", create(content="x", thread_id="a" * 257), "memory.thread_id"),
    ("create-long-source", create(content="x", source="a" * 257), "memory.source"),
    (
        "create-negative-ttl",
        create(content="x", request={"ttl": duration_pb2.Duration(seconds=-5)}),
        "ttl",
    ),
    ("create-zero-ttl", create(content="x", request={"ttl": duration_pb2.Duration()}), "ttl"),
    (
        "create-ttl-and-expire-time",
        create(
            content="x",
            expire_time=ts(4_000_000_000),
            request={"ttl": duration_pb2.Duration(seconds=5)},
        ),
        "ttl",
    ),
    ("create-expire-time-past", create(content="x", expire_time=ts(1_000)), "memory.expire_time"),
    # 2300-01-01: beyond what the store can keep (it would come back as "never")
    (
        "create-expire-time-too-far",
        create(content="x", expire_time=ts(10_413_792_000)),
        "memory.expire_time",
    ),
    (
        "create-expire-time-bad-nanos",
        create(content="x", expire_time=ts(4_000_000_000, -1)),
        "memory.expire_time",
    ),
    (
        "create-dedupe-threshold-high",
        create(content="x", request={"dedupe": True, "dedupe_threshold": 1.5}),
        "dedupe_threshold",
    ),
    (
        "create-dedupe-threshold-negative",
        create(content="x", request={"dedupe": True, "dedupe_threshold": -0.1}),
        "dedupe_threshold",
    ),
    # BatchCreateMemories
    ("batch-empty", batch(0), "requests"),
    ("batch-1001", batch(1001), "requests"),
    # by id
    ("get-empty-id", by_id("GetMemory", id=""), "id"),
    ("delete-empty-id", by_id("DeleteMemory", id=""), "id"),
    ("revisions-empty-id", by_id("ListMemoryRevisions", id=""), "id"),
    ("revisions-negative-page-size", by_id("ListMemoryRevisions", page_size=-1), "page_size"),
    ("revisions-bad-token", by_id("ListMemoryRevisions", page_token="garbage!"), "page_token"),
    # UpdateMemory
    ("update-unknown-path", update(["bogus"], content="x"), "update_mask.paths[0]"),
    ("update-id-path", update(["content", "id"], content="x"), "update_mask.paths[1]"),
    ("update-no-mask", update([], content="x"), "update_mask"),
    ("update-blank-content", update(["content"], content="  "), "memory.content"),
    ("update-embedding-dimension", update(["embedding"], embedding=vec(3)), "memory.embedding"),
    ("update-embedding-nan", update(["embedding"], embedding=vec(i1=NAN)), "memory.embedding"),
    ("update-embedding-empty", update(["embedding"]), "memory.embedding"),
    (
        "update-expire-time-past",
        update(["expire_time"], expire_time=ts(1_000)),
        "memory.expire_time",
    ),
    (
        "update-expire-time-too-far",
        update(["expire_time"], expire_time=ts(10_413_792_000)),
        "memory.expire_time",
    ),
    ("update-metadata-nan", update(["metadata"], metadata=meta({"x": NAN})), "memory.metadata"),
    ("update-empty-tag", update(["tags"], tags=[""]), "memory.tags[0]"),
    ("update-empty-id", update(["content"], id="", content="x"), "id"),
    # ListMemories and filters
    ("list-negative-page-size", list_(page_size=-1), "page_size"),
    ("list-bad-token", list_(page_token="not-a-token"), "page_token"),
    *[
        (f"filter-field-{f or 'empty'}", list_(filter=where(eq(f, "x"))), "filter.must[0].field")
        for f in BAD_FIELDS
    ],
    (
        "filter-field-metadata-prefix-only",
        list_(filter=where(eq("metadata.", "x"))),
        "filter.must[0].field",
    ),
    (
        "filter-range-on-keyword",
        list_(
            filter=where(memory_pb2.Condition(field="agent_id", range=memory_pb2.NumberRange(gt=1)))
        ),
        "filter.must[0].range",
    ),
    (
        "filter-range-on-time",
        list_(
            filter=where(
                memory_pb2.Condition(field="create_time", range=memory_pb2.NumberRange(gt=1))
            )
        ),
        "filter.must[0].field",
    ),
    (
        "filter-range-without-bounds",
        list_(
            filter=where(memory_pb2.Condition(field="metadata.n", range=memory_pb2.NumberRange()))
        ),
        "filter.must[0].range",
    ),
    (
        "filter-range-nan",
        list_(
            filter=where(
                memory_pb2.Condition(field="metadata.n", range=memory_pb2.NumberRange(gt=NAN))
            )
        ),
        "filter.must[0].range",
    ),
    (
        "filter-time-range-on-metadata",
        list_(
            filter=where(
                memory_pb2.Condition(field="metadata.t", time_range=memory_pb2.TimeRange())
            )
        ),
        "filter.must[0].time_range",
    ),
    (
        "filter-time-range-reversed",
        list_(
            filter=where(
                memory_pb2.Condition(
                    field="create_time",
                    time_range=memory_pb2.TimeRange(start_time=ts(2000), end_time=ts(1000)),
                )
            )
        ),
        "filter.must[0].time_range",
    ),
    (
        "filter-time-range-bad-timestamp",
        list_(
            filter=where(
                memory_pb2.Condition(
                    field="create_time",
                    time_range=memory_pb2.TimeRange(start_time=ts(1, 2_000_000_000)),
                )
            )
        ),
        "filter.must[0].time_range.start_time",
    ),
    ("filter-equals-on-time", list_(filter=where(eq("create_time", "x"))), "filter.must[0].field"),
    ("filter-equals-list", list_(filter=where(eq("metadata.a", [1, 2]))), "filter.must[0].equals"),
    ("filter-equals-null", list_(filter=where(eq("metadata.a", None))), "filter.must[0].equals"),
    ("filter-equals-number-on-tags", list_(filter=where(eq("tags", 3))), "filter.must[0].equals"),
    (
        "filter-equals-bool-on-agent",
        list_(filter=where(eq("agent_id", True))),
        "filter.must[0].equals",
    ),
    (
        "filter-any-of-empty",
        list_(filter=where(memory_pb2.Condition(field="tags", any_of=struct_pb2.ListValue()))),
        "filter.must[0].any_of",
    ),
    (
        "filter-any-of-fraction",
        list_(
            filter=where(
                memory_pb2.Condition(
                    field="metadata.n",
                    any_of=json_format.ParseDict([1, 2.5], struct_pb2.ListValue()),
                )
            )
        ),
        "filter.must[0].any_of",
    ),
    (
        "filter-condition-without-test",
        list_(filter=where(memory_pb2.Condition(field="tags"))),
        "filter.must[0]",
    ),
    (
        "filter-condition-without-field",
        list_(filter=where(memory_pb2.Condition(equals=struct_pb2.Value(string_value="x")))),
        "filter.must[0].field",
    ),
    (
        "filter-bad-field-deep-inside",
        list_(
            filter=memory_pb2.MemoryFilter(
                must_not=[
                    memory_pb2.Condition(filter=memory_pb2.MemoryFilter(should=[eq("tenant", "x")]))
                ]
            )
        ),
        "filter.must_not[0].filter.should[0].field",
    ),
    (
        "filter-too-deep",
        list_(filter=nested(8)),
        "filter" + ".must[0].filter" * 4,  # the one limit: 4 levels
    ),
    (
        "filter-too-many-conditions",
        list_(filter=where(*[eq("tags", f"t{i}") for i in range(65)])),
        "filter",
    ),
    # SearchMemories
    ("search-top-k-101", search(query="x", top_k=101), "top_k"),
    ("search-top-k-negative", search(query="x", top_k=-1), "top_k"),
    ("search-min-score-2", search(query="x", min_score=2), "min_score"),
    ("search-min-score-below-minus-1", search(query="x", min_score=-1.5), "min_score"),
    ("search-min-score-nan", search(query="x", min_score=NAN), "min_score"),
    ("search-nothing-to-search", search(), "query"),
    ("search-blank-query", search(query="   "), "query"),
    ("search-keyword-without-text", search(query_embedding=vec(), mode=KEYWORD), "query"),
    ("search-hybrid-blank-text", search(query=" ", query_embedding=vec(), mode=HYBRID), "query"),
    ("search-keyword-min-score", search(query="x", mode=KEYWORD, min_score=0.2), "min_score"),
    ("search-unknown-mode", search(query="x", mode=9), "mode"),
    (
        "search-half-life-zero",
        search(query="x", recency_half_life=duration_pb2.Duration()),
        "recency_half_life",
    ),
    (
        "search-half-life-negative",
        search(query="x", recency_half_life=duration_pb2.Duration(seconds=-60)),
        "recency_half_life",
    ),
    (
        "search-half-life-out-of-range",
        search(query="x", recency_half_life=duration_pb2.Duration(seconds=10**12)),
        "recency_half_life",
    ),
    ("search-diversity-above-1", search(query="x", diversity=1.5), "diversity"),
    ("search-diversity-negative", search(query="x", diversity=-0.1), "diversity"),
    ("search-diversity-nan", search(query="x", diversity=NAN), "diversity"),
    ("search-embedding-dimension", search(query_embedding=vec(3)), "query_embedding"),
    ("search-embedding-nan", search(query_embedding=vec(i2=NAN)), "query_embedding"),
    ("search-embedding-inf", search(query_embedding=vec(i2=INF)), "query_embedding"),
    (
        "search-bad-filter-field",
        search(query="x", filter=where(eq("org_id", "o"))),
        "filter.must[0].field",
    ),
    # PurgeMemories
    ("purge-without-filter", purge(), "filter"),
    ("purge-dry-run-without-filter", purge(dry_run=True), "filter"),
    ("purge-filter-and-all", purge(all=True, filter=where(eq("tags", "t"))), "all"),
    ("purge-bad-filter-field", purge(filter=where(eq("project_id", "p"))), "filter.must[0].field"),
    (
        "purge-bad-filter-range",
        purge(filter=where(memory_pb2.Condition(field="tags", range=memory_pb2.NumberRange(lt=1)))),
        "filter.must[0].range",
    ),
    # ExportMemories
    (
        "export-bad-filter-field",
        export(filter=where(eq("environment_id", "e"))),
        "filter.must[0].field",
    ),
]


@pytest.mark.parametrize(("call", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_input_is_invalid_argument_naming_the_field(
    target: Target, call: Call, field: str
) -> None:
    before = await _snapshot(target)
    with pytest.raises(aio.AioRpcError) as info:
        await call(target.client, target.memory_id)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert status_of(err).code == code_pb2.INVALID_ARGUMENT
    fields = violations(err)
    assert field in fields, fields
    assert all(fields.values()), "every violation says what is wrong"
    assert await _snapshot(target) == before, "a refused call changed nothing"


async def _snapshot(target: Target) -> list[tuple[str, str, int]]:
    """Every memory of the tenant; at first the one the fixture made."""
    c = target.client
    page = await c.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=c.md())
    return sorted((m.id, m.content, m.revision) for m in page.memories)


# Odd but well-formed input: answered, or refused as INVALID_ARGUMENT; never INTERNAL.
ODD: list[tuple[str, Call]] = [
    ("get-not-a-uuid", by_id("GetMemory", id="not-a-uuid")),
    ("get-huge-id", by_id("GetMemory", id="x" * 10_000)),
    ("get-uppercase-uuid", by_id("GetMemory", id="6F9619FF-8B86-D011-B42D-00C04FC964FF")),
    ("delete-not-a-uuid", by_id("DeleteMemory", id="../../etc")),
    ("filter-metadata-key-with-space", list_(filter=where(eq("metadata.a b", "x")))),
    ("filter-metadata-key-with-quote", list_(filter=where(eq('metadata.a"b', "x")))),
    ("filter-metadata-key-with-brackets", list_(filter=where(eq("metadata.x[0]", "x")))),
    ("filter-metadata-key-empty-segment", list_(filter=where(eq("metadata.a..b", "x")))),
    ("filter-metadata-unicode-key", list_(filter=where(eq("metadata.日本", "x")))),
    ("filter-end-user-equals", list_(filter=where(eq("end_user_id", "someone")))),
    ("filter-huge-number", list_(filter=where(eq("metadata.n", 1e308)))),
    (
        "filter-huge-int-any-of",
        list_(
            filter=where(
                memory_pb2.Condition(
                    field="metadata.n",
                    any_of=json_format.ParseDict([2**62], struct_pb2.ListValue()),
                )
            )
        ),
    ),
    ("search-unicode-query", search(query="日本語のクエリ 🍵")),
    # a long string echoed in an error must not outgrow the client's 16 KiB of trailers
    ("create-huge-metadata-key", create(content="x", metadata=meta({"k." + "k" * 20_000: 1}))),
    ("create-many-bad-tags", create(content="x", tags=[""] * 2_000)),
    ("update-huge-mask-path", update(["p" * 20_000], content="x")),
    ("filter-huge-field", list_(filter=where(eq("f" * 20_000, "x")))),
    ("filter-many-bad-conditions", list_(filter=where(*[eq("org_id", "x")] * 2_000))),
    ("search-punctuation-query", search(query="!!!")),
    ("list-huge-page-size", list_(page_size=2**31 - 1)),
    ("revisions-huge-page-size", by_id("ListMemoryRevisions", page_size=2**31 - 1)),
]


@pytest.mark.parametrize("call", [c[1] for c in ODD], ids=[c[0] for c in ODD])
async def test_odd_input_is_never_an_internal_error(target: Target, call: Call) -> None:
    before = await _snapshot(target)
    try:
        await call(target.client, target.memory_id)
    except aio.AioRpcError as err:
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
            err.code(),
            err.details(),
        )
    assert await _snapshot(target) == before


async def test_an_import_reports_each_bad_item_by_index(target: Target) -> None:
    items = [
        memory_pb2.Memory(content=""),
        memory_pb2.Memory(content="bad vector", embedding=vec(3)),
        memory_pb2.Memory(content="bad expiry", expire_time=ts(4_000_000_000, -1)),
        memory_pb2.Memory(content="nan metadata", metadata=meta({"x": NAN})),
    ]

    async def stream() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for m in items:
            yield memory_pb2.ImportMemoriesRequest(memory=m)

    c = target.client
    before = await _snapshot(target)
    summary = await c.memory.ImportMemories(stream(), metadata=c.md())
    assert (summary.imported_count, summary.failed_count) == (0, 4)
    assert [e.index for e in summary.errors] == [0, 1, 2, 3]
    expected = ["memory.content", "memory.embedding", "memory.expire_time", "memory.metadata"]
    for error, field in zip(summary.errors, expected, strict=True):
        assert error.error.code == code_pb2.INVALID_ARGUMENT
        assert field in violations(error.error)
    assert await _snapshot(target) == before


async def test_an_import_reports_its_first_100_failures_in_stream_order(target: Target) -> None:
    async def stream() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for _ in range(120):  # refused by the rules
            yield memory_pb2.ImportMemoriesRequest(memory=memory_pb2.Memory(content=""))
        for _ in range(10):  # refused while reading the request
            yield memory_pb2.ImportMemoriesRequest(
                memory=memory_pb2.Memory(content="x", metadata=meta({"x": INF}))
            )

    c = target.client
    before = await _snapshot(target)
    summary = await c.memory.ImportMemories(stream(), metadata=c.md())
    assert (summary.imported_count, summary.failed_count) == (0, 130)
    assert [e.index for e in summary.errors] == list(range(100))
    assert await _snapshot(target) == before
