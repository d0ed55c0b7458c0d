"""The domain's own rules, without a server: the filter rule (item 15) applied
by MemoryService itself, the metadata key rule (S11), and what a Tenant
reaches (S12)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.control import Project, ProjectSettings, Quotas, RateLimits
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.memories import (
    MAX_FILTER_CONDITIONS,
    MAX_FILTER_DEPTH,
    MemoryService,
    NewMemory,
    validate_filter,
)
from memoryd.domain.memory import Filter, Match, MatchAny, NumberRange, TimeRange
from memoryd.domain.tenancy import (
    Caller,
    EndUsers,
    EnvironmentKind,
    KeyKind,
    Principal,
    Scope,
    Tenant,
    scope_grants,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def deep(levels: int) -> Filter:
    flt = Filter(must=(Match("source", "chat"),))
    for _ in range(levels - 1):
        flt = Filter(must=(flt,))
    return flt


def fields(err: InvalidArgument) -> set[str]:
    return {v.field for v in err.violations}


# --- validate_filter ---------------------------------------------------------------------------


def test_the_filter_depth_limit_is_four_levels() -> None:
    assert MAX_FILTER_DEPTH == 4
    validate_filter(deep(4))
    with pytest.raises(InvalidArgument) as info:
        validate_filter(deep(5))
    assert fields(info.value) == {"filter" + ".must[0].filter" * 4}
    assert info.value.reason == "FILTER_INVALID"


def test_at_most_the_condition_limit() -> None:
    validate_filter(Filter(must=tuple(Match("tags", str(i)) for i in range(MAX_FILTER_CONDITIONS))))
    with pytest.raises(InvalidArgument) as info:
        validate_filter(
            Filter(must=tuple(Match("tags", str(i)) for i in range(MAX_FILTER_CONDITIONS + 1)))
        )
    assert "filter" in fields(info.value)


@pytest.mark.parametrize(
    "condition",
    [
        Match("org_id", "o"),
        Match("tenant", "o/p/e"),
        Match("project_id", "p"),
        Match("environment_id", "e"),
        Match("metadata.", "x"),
        Match("metadata.a..b", "x"),
        Match("metadata.ends\\", "x"),
        Match("metadata.a\\.b", "x"),
        Match("metadata.a\\b", "x"),
        Match('metadata.a"b', "x"),
        MatchAny("metadata.x\\", ("v",)),
        NumberRange("metadata.n\\", gt=1),
        Match("agent_id", 3),
        TimeRange("metadata.when", T0),
    ],
    ids=repr,
)
def test_the_filter_rule_refuses(condition: Any) -> None:
    for flt in (Filter(must=(condition,)), Filter(should=(Filter(must_not=(condition,)),))):
        with pytest.raises(InvalidArgument) as info:
            validate_filter(flt)
        assert info.value.reason == "FILTER_INVALID"


@pytest.mark.parametrize("key", ["a b", "c[0]", "$", "it's", "日本", "a.b", "x-y_z"])
def test_the_filter_rule_accepts_metadata_keys_a_path_can_name(key: str) -> None:
    validate_filter(Filter(must=(Match(f"metadata.{key}", "v"),)))


# --- MemoryService applies it itself -----------------------------------------------------------


class UntouchableStore:
    """A VectorStore no call may reach: the rule must refuse first."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was reached ({name}) with an invalid filter")


class OneProject:
    def __init__(self) -> None:
        self.project = Project(
            id="prj",
            org_id="org",
            name="app",
            display_name="",
            settings=ProjectSettings(),
            rate_limits=RateLimits(),
            quotas=Quotas(),
            create_time=T0,
            update_time=T0,
        )

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        return self.project

    async def list_environments_of_kind(self, org_id: str, kind: Any) -> list[Any]:
        return []


class Embedder:
    model_id = "test"
    dimension = 4

    async def embed(self, texts: Any) -> list[list[float]]:
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]

    async def close(self) -> None:
        return None


def service() -> MemoryService:
    return MemoryService(UntouchableStore(), Embedder(), OneProject(), ManualClock())  # type: ignore[arg-type]


def caller(end_user: str = "") -> Caller:
    return Caller(
        Principal(
            key_id="k",
            kind=KeyKind.DATA,
            org_id="org",
            scopes=frozenset({Scope.MEMORY_ALL}),
            project_id="prj",
            environment_id="env",
            environment_kind=EnvironmentKind.LIVE,
            end_user_id=end_user,
        )
    )


async def _export(m: MemoryService, flt: Filter) -> None:
    stream: AsyncIterator[Any] = m.export(caller(), flt, False)
    async for _ in stream:
        pass


METHODS: dict[str, Callable[[MemoryService, Filter], Awaitable[Any]]] = {
    "list_memories": lambda m, f: m.list_memories(caller(), f, 10, ""),
    "search": lambda m, f: m.search(
        caller(), query="q", vector=(), flt=f, top_k=5, min_score=0.0, cross_project=False
    ),
    "purge": lambda m, f: m.purge(caller(), f, dry_run=True, everything=False),
    "export": _export,
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(
    "flt",
    [deep(5), Filter(must=(Match("org_id", "other"),)), Filter(must=(Match("metadata.k\\", "v"),))],
    ids=["too-deep", "tenant-field", "backslash-key"],
)
async def test_every_method_taking_a_filter_refuses_a_bad_one_before_the_store(
    method: str, flt: Filter
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await METHODS[method](service(), flt)
    assert info.value.reason == "FILTER_INVALID"


# --- the metadata key rule on write ------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"ends\\": 1}, "memory.metadata.ends\\"),
        ({'a"b': 1}, 'memory.metadata.a"b'),
        ({"outer": {"in\\ner": 1}}, "memory.metadata.outer.in\\ner"),
        ({"list": [{"x": {'q"': 1}}]}, 'memory.metadata.list[0].x.q"'),
    ],
)
async def test_create_refuses_metadata_keys_a_filter_cannot_name(
    metadata: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await service().create(caller(), NewMemory(content="x", metadata=metadata))
    assert field in fields(info.value)


# --- what a tenant reaches ---------------------------------------------------------------------


def test_a_tenant_reaches_one_end_user_none_or_explicitly_all() -> None:
    one = Tenant("o", "p", "e", "carol")
    none = Tenant("o", "p", "e")
    every = Tenant("o", "p", "e", all_end_users=True)
    assert (one.end_users, none.end_users, every.end_users) == (
        EndUsers.ONE,
        EndUsers.NONE,
        EndUsers.ALL,
    )
    assert none.across_end_users() == every
    for tenant, sees in ((one, {"carol"}), (none, {""}), (every, {"carol", "dave", ""})):
        for user in ("carol", "dave", ""):
            assert tenant.sees("o/p/e", user) is (user in sees)
        assert not tenant.sees("o/p/other", "")
    with pytest.raises(ValueError):
        Tenant("o", "p", "e", "carol", all_end_users=True)


def test_memory_all_end_users_is_a_memory_scope_of_memory_star() -> None:
    assert scope_grants(frozenset({Scope.MEMORY_ALL}), "memory:all_end_users")
    assert scope_grants(frozenset({Scope.ALL}), "memory:all_end_users")
    assert not scope_grants(
        frozenset({"memory:read", "memory:add", "memory:update", "memory:delete"}),
        "memory:all_end_users",
    )
