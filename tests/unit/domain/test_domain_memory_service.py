"""MemoryService's rules, on fakes of its ports (no server, no engine):
write validation, quotas, dedupe, expiry, which end users a call reaches,
cross-project search, filters, updates and purges."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from helpers.fakes import Domain

from memoryd.domain.control import Project, ProjectSettings, Quotas
from memoryd.domain.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from memoryd.domain.memories import Defaults, MemoryService, MemoryUpdate, NewMemory
from memoryd.domain.memory import Filter, Match, MemoryRecord, SearchMode
from memoryd.domain.tenancy import Caller, EnvironmentKind, KeyKind, Principal, Scope

ALL = (Scope.MEMORY_ALL,)
ALL_BUT_END_USERS = (Scope.MEMORY_READ, Scope.MEMORY_ADD, Scope.MEMORY_UPDATE, Scope.MEMORY_DELETE)


def fields(err: InvalidArgument) -> set[str]:
    return {v.field for v in err.violations}


async def setup(
    defaults: Defaults | None = None, **project: Any
) -> tuple[Domain, MemoryService, Project]:
    d = Domain()
    return d, d.memory_service(defaults), await d.project(**project)


async def contents(m: MemoryService, caller: Caller) -> set[str]:
    page = await m.list_memories(caller, Filter(), 100, "")
    return {r.content for r in page.records}


# --- who may call -------------------------------------------------------------------------------


async def test_memory_calls_need_a_data_key() -> None:
    _, m, _ = await setup()
    org_caller = Caller(Principal("k", KeyKind.ORG, "org_1", frozenset({Scope.ALL})))
    with pytest.raises(PermissionDenied) as info:
        await m.create(org_caller, NewMemory("x"))
    assert info.value.reason == "DATA_KEY_REQUIRED"


async def test_a_call_needs_the_scope_of_its_method() -> None:
    d, m, prj = await setup()
    with pytest.raises(PermissionDenied) as info:
        await m.create(d.data_caller(prj, [Scope.MEMORY_READ]), NewMemory("x"))
    assert info.value.reason == "SCOPE_MISSING"
    assert d.vectors.upserts == 0


async def test_a_deleted_project_answers_not_found() -> None:
    d, m, prj = await setup()
    await d.control.delete_project(prj.org_id, prj.id)
    with pytest.raises(NotFound) as info:
        await m.create(d.data_caller(prj), NewMemory("x"))
    assert info.value.reason == "NOT_FOUND"


# --- what a memory may hold ---------------------------------------------------------------------


async def test_content_must_not_be_blank() -> None:
    d, m, prj = await setup()
    with pytest.raises(InvalidArgument) as info:
        await m.create(d.data_caller(prj), NewMemory("  \n"))
    assert info.value.reason == "INVALID_ARGUMENT"
    assert fields(info.value) == {"memory.content"}


@pytest.mark.parametrize(
    ("key", "field"),
    [("", "memory.metadata."), ("a.b", "memory.metadata.a.b"), ("k" * 129, None)],
    ids=["empty", "dot", "too-long"],
)
async def test_metadata_keys_are_1_to_128_characters_without_a_dot(
    key: str, field: str | None
) -> None:
    d, m, prj = await setup()
    with pytest.raises(InvalidArgument) as info:
        await m.create(d.data_caller(prj), NewMemory("x", metadata={key: 1}))
    assert len(info.value.violations) == 1
    assert field is None or fields(info.value) == {field}


async def test_at_most_64_tags_of_1_to_128_characters() -> None:
    d, m, prj = await setup()
    tags = ("", "t" * 129, *(f"t{i}" for i in range(63)))
    with pytest.raises(InvalidArgument) as info:
        await m.create(d.data_caller(prj), NewMemory("x", tags=tags))
    assert {"memory.tags", "memory.tags[0]", "memory.tags[1]"} <= fields(info.value)


async def test_content_over_the_server_limit_is_refused() -> None:
    d, m, prj = await setup(Defaults(max_content_bytes=10))
    with pytest.raises(ResourceExhausted) as info:
        await m.create(d.data_caller(prj), NewMemory("é" * 6))  # 12 bytes, 6 characters
    assert info.value.reason == "CONTENT_TOO_LARGE"
    assert info.value.violations[0].description == "max_content_bytes=10"


async def test_a_project_override_lowers_the_content_limit() -> None:
    d, m, prj = await setup(Defaults(max_content_bytes=10), quotas=Quotas(max_content_bytes=5))
    with pytest.raises(ResourceExhausted) as info:
        await m.create(d.data_caller(prj), NewMemory("abcdef"))
    assert info.value.violations[0].description == "max_content_bytes=5"


async def test_a_project_override_cannot_raise_the_content_limit_past_the_server_one() -> None:
    d, m, prj = await setup(Defaults(max_content_bytes=10), quotas=Quotas(max_content_bytes=999))
    with pytest.raises(ResourceExhausted) as info:
        await m.create(d.data_caller(prj), NewMemory("x" * 11))
    assert info.value.violations[0].description == "max_content_bytes=10"


async def test_metadata_over_its_limit_as_compact_json_is_refused() -> None:
    d, m, prj = await setup(Defaults(max_metadata_bytes=13))
    await m.create(
        d.data_caller(prj), NewMemory("x", metadata={"k": "12345"})
    )  # {"k":"12345"}: 13 bytes
    with pytest.raises(ResourceExhausted) as info:
        await m.create(d.data_caller(prj), NewMemory("x", metadata={"k": "123456"}))
    assert info.value.reason == "METADATA_TOO_LARGE"


# --- the memory quota ---------------------------------------------------------------------------


async def test_the_memory_quota_counts_every_end_user_of_the_environment() -> None:
    d, m, prj = await setup(Defaults(max_memories_per_environment=2))
    await m.create(d.data_caller(prj, end_user="u1"), NewMemory("one"))
    await m.create(d.data_caller(prj, end_user="u2"), NewMemory("two"))
    with pytest.raises(ResourceExhausted) as info:
        await m.create(d.data_caller(prj), NewMemory("three"))
    assert info.value.reason == "MEMORY_QUOTA_EXCEEDED"
    assert len(d.vectors.records) == 2


async def test_a_project_memory_quota_is_capped_by_the_server_ceiling() -> None:
    defaults = Defaults(max_memories_per_environment=1, max_memories_per_environment_override=2)
    d, m, prj = await setup(defaults, quotas=Quotas(max_memories_per_environment=50))
    await m.batch_create(d.data_caller(prj), [NewMemory("one"), NewMemory("two")])
    with pytest.raises(ResourceExhausted) as info:
        await m.create(d.data_caller(prj), NewMemory("three"))
    assert info.value.violations[0].description == "max_memories_per_environment=2"


async def test_a_batch_over_the_quota_writes_none_of_it() -> None:
    d, m, prj = await setup(Defaults(max_memories_per_environment=2))
    with pytest.raises(ResourceExhausted):
        await m.batch_create(d.data_caller(prj), [NewMemory(f"m{i}") for i in range(3)])
    assert d.vectors.records == {}


# --- batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1001])
async def test_a_batch_holds_1_to_1000_items(n: int) -> None:
    d, m, prj = await setup()
    with pytest.raises(InvalidArgument) as info:
        await m.batch_create(d.data_caller(prj), [NewMemory("x")] * n)
    assert fields(info.value) == {"requests"}


async def test_a_bad_item_fails_only_itself_in_a_batch() -> None:
    d, m, prj = await setup()
    results = await m.batch_create(d.data_caller(prj), [NewMemory("ok"), NewMemory(" ")])
    assert not isinstance(results[0], DomainError)
    assert isinstance(results[1], InvalidArgument)
    assert fields(results[1]) == {"requests[1].memory.content"}
    assert len(d.vectors.records) == 1


# --- dedupe -------------------------------------------------------------------------------------


async def test_dedupe_answers_the_stored_near_duplicate_instead_of_writing() -> None:
    d, m, prj = await setup()
    first = await m.create(d.data_caller(prj), NewMemory("the cat sat on the mat"))
    again = await m.create(d.data_caller(prj), NewMemory("The cat sat on the mat!", dedupe=True))
    assert again.deduplicated and again.record.id == first.record.id
    assert len(d.vectors.records) == 1


async def test_without_dedupe_a_duplicate_is_stored() -> None:
    d, m, prj = await setup()
    await m.create(d.data_caller(prj), NewMemory("the cat sat on the mat"))
    again = await m.create(d.data_caller(prj), NewMemory("the cat sat on the mat"))
    assert not again.deduplicated
    assert len(d.vectors.records) == 2


async def test_dedupe_applies_between_items_of_one_batch() -> None:
    d, m, prj = await setup()
    items = [NewMemory("rivers flow to the sea", dedupe=True)] * 2 + [
        NewMemory("quarterly revenue grew", dedupe=True)
    ]
    first, second, third = await m.batch_create(d.data_caller(prj), items)
    assert isinstance(second, type(first)) and not isinstance(first, DomainError)
    assert second.deduplicated and second.record.id == first.record.id  # type: ignore[union-attr]
    assert not third.deduplicated  # type: ignore[union-attr]
    assert len(d.vectors.records) == 2


async def test_dedupe_without_an_end_user_ignores_end_users_memories() -> None:
    d, m, prj = await setup()
    await m.create(d.data_caller(prj, end_user="u1"), NewMemory("the cat sat on the mat"))
    created = await m.create(d.data_caller(prj), NewMemory("the cat sat on the mat", dedupe=True))
    assert not created.deduplicated


# --- expiry -------------------------------------------------------------------------------------


async def test_a_memory_is_gone_once_its_ttl_has_passed() -> None:
    d, m, prj = await setup()
    c = d.data_caller(prj)
    created = await m.create(c, NewMemory("short-lived", ttl=timedelta(hours=1)))
    assert created.record.expire_time == d.clock.now() + timedelta(hours=1)
    d.clock.advance(3599)
    assert (await m.get(c, created.record.id)).content == "short-lived"
    d.clock.advance(1)
    with pytest.raises(NotFound):
        await m.get(c, created.record.id)


async def test_the_project_default_ttl_applies_when_a_memory_names_none() -> None:
    d, m, prj = await setup(settings=ProjectSettings(default_ttl=timedelta(days=2)))
    created = await m.create(d.data_caller(prj), NewMemory("x"))
    assert created.record.expire_time == d.clock.now() + timedelta(days=2)


async def test_ttl_and_expire_time_together_are_refused() -> None:
    d, m, prj = await setup()
    item = NewMemory("x", ttl=timedelta(hours=1), expire_time=d.clock.now() + timedelta(hours=2))
    with pytest.raises(InvalidArgument) as info:
        await m.create(d.data_caller(prj), item)
    assert fields(info.value) == {"ttl"}


@pytest.mark.parametrize("days", [0, 3651])
async def test_expire_time_must_be_in_the_future_and_within_3650_days(days: int) -> None:
    d, m, prj = await setup()
    item = NewMemory("x", expire_time=d.clock.now() + timedelta(days=days))
    with pytest.raises(InvalidArgument) as info:
        await m.create(d.data_caller(prj), item)
    assert fields(info.value) == {"memory.expire_time"}


# --- which end users a call reaches -------------------------------------------------------------


async def three_memories(d: Domain, m: MemoryService, prj: Project) -> None:
    for user in ("", "u1", "u2"):
        await m.create(d.data_caller(prj, ALL, end_user=user), NewMemory(f"of {user or 'project'}"))


async def test_without_the_header_a_call_reaches_only_project_level_memories() -> None:
    d, m, prj = await setup()
    await three_memories(d, m, prj)
    assert await contents(m, d.data_caller(prj, ALL_BUT_END_USERS)) == {"of project"}


async def test_with_the_header_a_call_reaches_only_that_end_users_memories() -> None:
    d, m, prj = await setup()
    await three_memories(d, m, prj)
    assert await contents(m, d.data_caller(prj, ALL, end_user="u1")) == {"of u1"}
    assert d.sink.actions() == []


async def test_memory_all_end_users_reaches_every_memory_and_is_audited_once() -> None:
    d, m, prj = await setup()
    await three_memories(d, m, prj)
    assert await contents(m, d.data_caller(prj, ALL)) == {"of project", "of u1", "of u2"}
    [event] = d.sink.events
    assert (event.action, event.target, event.outcome) == (
        "memory.all_end_users",
        "ListMemories",
        "OK",
    )


async def test_another_end_users_memory_is_not_found_by_id() -> None:
    d, m, prj = await setup()
    created = await m.create(d.data_caller(prj, end_user="u1"), NewMemory("mine"))
    with pytest.raises(NotFound):
        await m.get(d.data_caller(prj, end_user="u2"), created.record.id)
    with pytest.raises(NotFound):
        await m.delete(d.data_caller(prj, ALL_BUT_END_USERS), created.record.id)
    assert created.record.id in d.vectors.records


async def test_a_project_requiring_end_user_id_refuses_calls_without_the_header() -> None:
    d, m, prj = await setup(settings=ProjectSettings(require_end_user_id=True))
    with pytest.raises(InvalidArgument) as info:
        await m.create(d.data_caller(prj), NewMemory("x"))
    assert fields(info.value) == {"x-end-user-id"}
    await m.create(d.data_caller(prj, end_user="u1"), NewMemory("x"))


# --- search -------------------------------------------------------------------------------------


async def search(m: MemoryService, caller: Caller, *, cross: bool = False, **kw: Any) -> list[str]:
    args: dict[str, Any] = dict(query="rivers", vector=(), flt=Filter(), top_k=10, min_score=0.0)
    hits = await m.search(caller, **(args | kw), cross_project=cross)
    return sorted(h.record.tenant.environment_id for h in hits)


async def test_cross_project_search_needs_its_scope() -> None:
    d, m, prj = await setup()
    with pytest.raises(PermissionDenied) as info:
        await search(m, d.data_caller(prj, ALL), cross=True)
    assert info.value.reason == "SCOPE_MISSING"


async def test_cross_project_search_spans_the_environments_of_the_callers_kind() -> None:
    d, m, a = await setup(name="a", kinds=(EnvironmentKind.LIVE, EnvironmentKind.TEST))
    b = await d.project("b")
    for prj, kind in (
        (a, EnvironmentKind.LIVE),
        (a, EnvironmentKind.TEST),
        (b, EnvironmentKind.LIVE),
    ):
        await m.create(d.data_caller(prj, kind=kind), NewMemory("rivers flow"))
    caller = d.data_caller(a, (Scope.MEMORY_READ, Scope.ORG_CROSS_PROJECT_READ))
    assert await search(m, caller) == ["env_a_live"]
    assert await search(m, caller, cross=True) == ["env_a_live", "env_b_live"]


async def test_cross_project_search_without_the_header_skips_projects_requiring_one() -> None:
    d, m, a = await setup(name="a")
    b = await d.project("b")
    for prj in (a, b):
        await m.create(d.data_caller(prj), NewMemory("rivers flow"))
    strict = replace(b.settings, require_end_user_id=True)
    d.control.projects[b.id] = replace(d.control.projects[b.id], settings=strict)
    caller = d.data_caller(a, (Scope.MEMORY_READ, Scope.ORG_CROSS_PROJECT_READ))
    assert await search(m, caller, cross=True) == ["env_a_live"]


async def test_search_takes_a_query_a_vector_or_both() -> None:
    d, m, prj = await setup()
    with pytest.raises(InvalidArgument) as info:
        await search(m, d.data_caller(prj), query=" ")
    assert fields(info.value) == {"query"}
    vector = (1.0,) * d.embedder.dimension
    # a vector alone ranks by meaning; with a text, by the default (semantic)
    # or the mode asked for: in HYBRID the vector is its semantic side and
    # the text its words
    await search(m, d.data_caller(prj), query="", vector=vector)
    await search(m, d.data_caller(prj), query="rivers")
    await search(m, d.data_caller(prj), query="rivers", vector=vector, mode=SearchMode.HYBRID)
    assert [(r.mode, r.text) for r in d.vectors.rankings] == [
        (SearchMode.SEMANTIC, ""),
        (SearchMode.SEMANTIC, "rivers"),
        (SearchMode.HYBRID, "rivers"),
    ]


async def test_a_search_query_over_the_limit_never_reaches_the_model() -> None:
    d = Domain()
    m = MemoryService(d.vectors, d.embedder, d.control, d.clock, max_query_chars=10)
    prj = await d.project()
    with pytest.raises(InvalidArgument) as info:
        await search(m, d.data_caller(prj), query="x" * 11)
    assert info.value.reason == "QUERY_TOO_LONG"


# --- filters ------------------------------------------------------------------------------------


def nested(levels: int) -> Filter:
    flt = Filter(must=(Match("source", "chat"),))
    for _ in range(levels - 1):
        flt = Filter(must=(flt,))
    return flt


async def test_a_filter_nests_at_most_four_levels() -> None:
    d, m, prj = await setup()
    await m.list_memories(d.data_caller(prj), nested(4), 10, "")
    with pytest.raises(InvalidArgument) as info:
        await m.list_memories(d.data_caller(prj), nested(5), 10, "")
    assert info.value.reason == "FILTER_INVALID"


@pytest.mark.parametrize("name", ["org_id", "project_id", "environment_id", "tenant"])
async def test_a_filter_cannot_name_a_tenant_field(name: str) -> None:
    d, m, prj = await setup()
    with pytest.raises(InvalidArgument) as info:
        await m.list_memories(d.data_caller(prj), Filter(must=(Match(name, "x"),)), 10, "")
    assert info.value.reason == "FILTER_INVALID"
    assert fields(info.value) == {"filter.must[0].field"}


async def test_a_filter_selects_on_metadata_and_tags() -> None:
    d, m, prj = await setup()
    c = d.data_caller(prj)
    await m.create(c, NewMemory("a", metadata={"lang": "en"}, tags=("x",)))
    await m.create(c, NewMemory("b", metadata={"lang": "fr"}, tags=("x",)))
    flt = Filter(must=(Match("metadata.lang", "fr"), Match("tags", "x")))
    assert [r.content for r in (await m.list_memories(c, flt, 10, "")).records] == ["b"]


# --- update -------------------------------------------------------------------------------------


async def one_memory(d: Domain, m: MemoryService, prj: Project) -> tuple[Caller, MemoryRecord]:
    c = d.data_caller(prj, ALL_BUT_END_USERS)
    created = await m.create(c, NewMemory("first", tags=("a",), source="chat"))
    return c, created.record


async def test_update_changes_the_masked_fields_only_and_keeps_the_old_state() -> None:
    d, m, prj = await setup()
    c, rec = await one_memory(d, m, prj)
    d.clock.advance(60)
    updated = await m.update(c, rec.id, MemoryUpdate(("content",), content="second", source="x"))
    assert (updated.content, updated.source, updated.tags, updated.revision) == (
        "second",
        "chat",
        ("a",),
        2,
    )
    revisions, _ = await m.revisions(c, rec.id, 10, "")
    assert [(r.revision, r.content, r.replace_time) for r in revisions] == [
        (1, "first", d.clock.now())
    ]


async def test_update_embeds_changed_content_again() -> None:
    d, m, prj = await setup()
    c, rec = await one_memory(d, m, prj)
    await m.update(c, rec.id, MemoryUpdate(("content",), content="rivers flow"))
    assert d.vectors.records[rec.id].vector == tuple(d.embedder.embed_one("rivers flow"))


@pytest.mark.parametrize(
    ("paths", "field"),
    [((), "update_mask"), (("id",), "update_mask.paths[0]"), (("tenant",), "update_mask.paths[0]")],
)
async def test_update_needs_a_mask_of_updatable_fields(paths: tuple[str, ...], field: str) -> None:
    d, m, prj = await setup()
    c, rec = await one_memory(d, m, prj)
    with pytest.raises(InvalidArgument) as info:
        await m.update(c, rec.id, MemoryUpdate(paths))
    assert fields(info.value) == {field}


async def test_update_is_held_to_the_content_limit() -> None:
    d, m, prj = await setup(Defaults(max_content_bytes=8))
    c, rec = await one_memory(d, m, prj)
    with pytest.raises(ResourceExhausted) as info:
        await m.update(c, rec.id, MemoryUpdate(("content",), content="much too long"))
    assert info.value.reason == "CONTENT_TOO_LARGE"
    assert d.vectors.records[rec.id].content == "first"


async def test_update_is_audited_with_field_names_never_values() -> None:
    d, m, prj = await setup()
    c, rec = await one_memory(d, m, prj)
    await m.update(c, rec.id, MemoryUpdate(("tags", "content"), content="secret", tags=("t",)))
    [event] = d.sink.events
    assert (event.action, event.target, event.details) == (
        "memory.update",
        rec.id,
        {"fields": "content,tags"},
    )


# --- purge --------------------------------------------------------------------------------------


async def test_purge_needs_a_filter_or_all_but_not_both() -> None:
    d, m, prj = await setup()
    c = d.data_caller(prj, ALL)
    with pytest.raises(InvalidArgument) as info:
        await m.purge(c, Filter(), dry_run=False, everything=False)
    assert fields(info.value) == {"filter"}
    with pytest.raises(InvalidArgument) as info:
        await m.purge(c, Filter(must=(Match("source", "x"),)), dry_run=False, everything=True)
    assert fields(info.value) == {"all"}
    assert [e.outcome for e in d.sink.events] == ["INVALID_ARGUMENT"] * 2


async def test_purge_dry_run_counts_and_deletes_nothing() -> None:
    d, m, prj = await setup()
    await three_memories(d, m, prj)
    c = d.data_caller(prj, ALL_BUT_END_USERS)
    assert await m.purge(c, Filter(), dry_run=True, everything=True) == 1
    assert len(d.vectors.records) == 3


async def test_purge_all_without_the_header_deletes_only_project_level_memories() -> None:
    d, m, prj = await setup()
    await three_memories(d, m, prj)
    c = d.data_caller(prj, ALL_BUT_END_USERS)
    assert await m.purge(c, Filter(), dry_run=False, everything=True) == 1
    assert sorted(r.content for r in d.vectors.records.values()) == ["of u1", "of u2"]
    assert d.sink.events[-1].details == {"dry_run": "false", "all": "true", "count": "1"}
